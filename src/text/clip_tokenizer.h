// The CLIP BPE tokenizer, byte-exact with Hugging Face CLIPTokenizer as Stable Diffusion uses it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace sdstack::text {

// Text -> token ids as transformers' CLIPTokenizer (with ftfy installed) computes them:
// ftfy-style fixes, whitespace cleanup, lowercasing, the CLIP pre-tokenisation pattern,
// byte-level BPE with "</w>" word ends. Thread-safe once loaded (const methods only).
class CLIPTokenizer {
 public:
  // Loads `vocab.json` and `merges.txt` from `tokenizer_dir`. Errors name the file.
  static base::Result<std::shared_ptr<CLIPTokenizer>> load(const std::string& tokenizer_dir);
  ~CLIPTokenizer();

  // Token ids of `text`, without bos/eos, untruncated.
  std::vector<int32_t> encode(std::string_view text) const;
  // The token strings of `text` (as in vocab.json), without bos/eos.
  std::vector<std::string> tokenize(std::string_view text) const;
  // What the SD pipeline feeds the text encoder: [bos] + the first max_length-2 tokens + [eos],
  // padded with pad to max_length.
  std::vector<int32_t> encode_padded(std::string_view text, size_t max_length = 77) const;

  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t pad_id() const;
  size_t vocab_size() const;

 private:
  struct Impl;
  explicit CLIPTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sdstack::text
