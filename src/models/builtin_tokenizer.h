// A small, self-contained CLIP-format BPE tokenizer for models made without downloads.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"

namespace sdstack::models {

// CLIP's ids of its special tokens; the built-in tokenizer keeps them, so that a text encoder
// with CLIP's 49408-token vocabulary reads its ids as it would read CLIP's.
inline constexpr int32_t kStartOfTextId = 49406;
inline constexpr int32_t kEndOfTextId = 49407;
inline constexpr int64_t kCLIPVocabSize = 49408;

// The files of a tokenizer/ folder, in the format of openai/clip-vit-large-patch14's:
//   vocab.json  the 256 byte-level characters (GPT-2's bytes_to_unicode), the same with "</w>",
//               one token per merge, then "<|startoftext|>" and "<|endoftext|>" at 49406/49407
//               (the ids in between are unused: a CLIP-sized embedding table covers them);
//   merges.txt  "#version: 0.2", then merges learnt by byte-pair encoding a built-in list of
//               common English and prompt words, so that such words are one token each
//               ("cats in hats" -> cats</w> in</w> hats</w>) and other text falls back to pieces;
//   tokenizer_config.json, special_tokens_map.json  as transformers saves a CLIPTokenizer.
// Deterministic: the same files every time.
struct TokenizerFiles {
  std::string vocab_json;
  std::string merges_txt;
  std::string tokenizer_config_json;
  std::string special_tokens_map_json;
  size_t merges = 0;  // how many merges merges.txt lists
};
TokenizerFiles make_builtin_tokenizer();

// Writes make_builtin_tokenizer()'s files into the existing folder `dir`.
base::Status write_builtin_tokenizer(const std::string& dir);

}  // namespace sdstack::models
