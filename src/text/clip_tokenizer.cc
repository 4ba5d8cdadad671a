// The CLIP BPE tokenizer: vocab.json and merges.txt, then transformers' CLIPTokenizer step by step.
#include "text/clip_tokenizer.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "text/normalize.h"
#include "text/unicode.h"

namespace sdstack::text {
namespace {

constexpr std::string_view kStartOfText = "<|startoftext|>";
constexpr std::string_view kEndOfText = "<|endoftext|>";
constexpr std::string_view kWordEnd = "</w>";
// transformers reads merges.txt lines [1 : 49152 - 256 - 2 + 1]: the version line is skipped and
// only as many merges as fit CLIP's 49408-token vocabulary are used.
constexpr size_t kMaxMerges = 49152 - 256 - 2;
constexpr std::string_view kFolderHint = " (is this a CLIP tokenizer folder?)";
// Words whose BPE result is remembered; beyond this the cache starts over (prompts repeat words).
constexpr size_t kMaxCachedWords = 1 << 16;

// GPT-2's bytes_to_unicode(): every byte as a printable character (UTF-8 encoded), so that
// byte-level BPE symbols are text. Printable Latin-1 bytes stand for themselves; the others are
// numbered from U+0100 in byte order.
std::array<std::string, 256> byte_characters() {
  std::array<std::string, 256> chars;
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    append_utf8(chars[b], printable ? static_cast<char32_t>(b) : next++);
  }
  return chars;
}

// The case-insensitive comparison CLIP's pattern makes (re.IGNORECASE): ASCII letters, plus the
// two non-ASCII characters whose simple case folding is an ASCII letter.
char32_t fold_case(char32_t c) {
  if (c >= U'A' && c <= U'Z') return c + 32;
  if (c == 0x017F) return U's';  // LATIN SMALL LETTER LONG S
  if (c == 0x212A) return U'k';  // KELVIN SIGN
  return c;
}

bool matches_at(std::u32string_view text, size_t pos, std::string_view literal) {
  if (pos + literal.size() > text.size()) return false;
  for (size_t k = 0; k < literal.size(); ++k) {
    if (fold_case(text[pos + k]) != static_cast<char32_t>(literal[k])) return false;
  }
  return true;
}

// re.findall with CLIP's pattern (IGNORECASE):
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// Alternatives are tried in order at each position; whitespace matches none and is skipped.
std::vector<std::u32string_view> clip_pieces(std::u32string_view text) {
  static constexpr std::string_view kLiterals[] = {kStartOfText, kEndOfText, "'s",  "'t", "'re",
                                                   "'ve",        "'m",       "'ll", "'d"};
  std::vector<std::u32string_view> pieces;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = pos;
    for (std::string_view literal : kLiterals) {
      if (matches_at(text, pos, literal)) {
        end = pos + literal.size();
        break;
      }
    }
    char32_t c = text[pos];
    if (end > pos) {
      // a special token or a contraction
    } else if (is_letter(c)) {
      while (end < text.size() && is_letter(text[end])) ++end;
    } else if (is_number(c)) {
      end = pos + 1;
    } else if (!is_space(c)) {
      while (end < text.size() && !is_space(text[end]) && !is_letter(text[end]) && !is_number(text[end])) ++end;
    } else {
      ++pos;
      continue;
    }
    pieces.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return pieces;
}

std::string with_hint(const std::string& message) { return message + std::string(kFolderHint); }

base::Status with_hint(const base::Status& status) { return base::Status(status.code(), with_hint(status.message())); }

// Splits a merges.txt line on whitespace, as Python's str.split() does for these ASCII lines.
std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t pos = 0;
  while (pos < line.size()) {
    while (pos < line.size() && (line[pos] == ' ' || line[pos] == '\t' || line[pos] == '\v' || line[pos] == '\f'))
      ++pos;
    size_t end = pos;
    while (end < line.size() && !(line[end] == ' ' || line[end] == '\t' || line[end] == '\v' || line[end] == '\f'))
      ++end;
    if (end > pos) fields.push_back(line.substr(pos, end - pos));
    pos = end;
  }
  return fields;
}

}  // namespace

struct CLIPTokenizer::Impl {
  struct Merge {
    int32_t rank;
    int32_t merged;  // the symbol the pair becomes
  };

  std::unordered_map<std::string, int32_t> vocab;
  // BPE works on symbol indices: every vocab token and every symbol merges.txt can produce.
  std::vector<std::string> symbols;
  std::unordered_map<std::string, int32_t> symbol_index;
  std::vector<int32_t> symbol_ids;  // symbol -> vocab id (unk for symbols the vocab lacks)
  std::unordered_map<uint64_t, Merge> merges;
  std::array<int32_t, 256> byte_symbol{};       // a byte inside a word
  std::array<int32_t, 256> last_byte_symbol{};  // a byte ending a word: its character + "</w>"
  int32_t start_symbol = 0, end_symbol = 0;
  int32_t bos = 0, eos = 0, pad = 0, unk = 0;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  base::Status load_vocab(const std::string& path);
  base::Status load_merges(const std::string& path);

  int32_t intern(const std::string& symbol) {
    auto [it, inserted] = symbol_index.emplace(symbol, static_cast<int32_t>(symbols.size()));
    if (inserted) symbols.push_back(symbol);
    return it->second;
  }

  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  // transformers' CLIPTokenizer.bpe on the UTF-8 bytes of one pre-tokenised piece: start from one
  // symbol per byte (the last one marked "</w>"), then merge the adjacent pair of lowest rank,
  // everywhere it occurs, until no adjacent pair has a rank.
  std::vector<int32_t> bpe(const std::string& piece) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      auto it = cache.find(piece);
      if (it != cache.end()) return it->second;
    }
    std::vector<int32_t> word;
    word.reserve(piece.size());
    for (size_t i = 0; i < piece.size(); ++i) {
      uint8_t byte = static_cast<uint8_t>(piece[i]);
      word.push_back(i + 1 == piece.size() ? last_byte_symbol[byte] : byte_symbol[byte]);
    }
    std::vector<int32_t> merged;
    while (word.size() > 1) {
      const Merge* best = nullptr;
      uint64_t best_key = 0;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        uint64_t key = pair_key(word[i], word[i + 1]);
        auto it = merges.find(key);
        if (it != merges.end() && (best == nullptr || it->second.rank < best->rank)) {
          best = &it->second;
          best_key = key;
        }
      }
      if (best == nullptr) break;
      merged.clear();
      for (size_t i = 0; i < word.size(); ++i) {
        if (i + 1 < word.size() && pair_key(word[i], word[i + 1]) == best_key) {
          merged.push_back(best->merged);
          ++i;
        } else {
          merged.push_back(word[i]);
        }
      }
      word.swap(merged);
    }
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= kMaxCachedWords) cache.clear();
    cache.emplace(piece, word);
    return word;
  }

  // Text without special tokens -> symbols: ftfy, whitespace cleanup and lowercasing as CLIPTokenizer
  // does them, then the CLIP pattern and BPE.
  void append_plain(std::string_view text, std::vector<int32_t>* out) const {
    std::u32string lowered = to_lower(decode_utf8(whitespace_clean(fix_text(text))));
    for (std::u32string_view piece : clip_pieces(lowered)) {
      std::string bytes = encode_utf8(piece);
      // CLIPTokenizer's BPE cache starts out holding the two special tokens, unsplit.
      if (bytes == kStartOfText) {
        out->push_back(start_symbol);
      } else if (bytes == kEndOfText) {
        out->push_back(end_symbol);
      } else {
        std::vector<int32_t> word = bpe(bytes);
        out->insert(out->end(), word.begin(), word.end());
      }
    }
  }

  // PreTrainedTokenizer.tokenize: the special tokens written in the text are split off first
  // (exactly, case-sensitively, without stripping the spaces around them, as CLIP's AddedTokens
  // say), and each stretch between them is tokenised on its own.
  std::vector<int32_t> symbolize(std::string_view text) const {
    std::vector<int32_t> out;
    size_t pos = 0;
    for (;;) {
      size_t start = text.find(kStartOfText, pos);
      size_t end = text.find(kEndOfText, pos);
      size_t next = std::min(start, end);
      if (next > pos) append_plain(text.substr(pos, next == std::string_view::npos ? next : next - pos), &out);
      if (next == std::string_view::npos) break;
      out.push_back(next == start ? start_symbol : end_symbol);
      pos = next + (next == start ? kStartOfText.size() : kEndOfText.size());
    }
    return out;
  }
};

base::Status CLIPTokenizer::Impl::load_vocab(const std::string& path) {
  base::Result<std::string> text = base::read_file(path);
  if (!text.is_ok()) return with_hint(text.status());
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(*text);
  } catch (const nlohmann::json::parse_error& e) {
    std::string reason = e.what();
    size_t colon = reason.find(": ", reason.find("parse error"));
    if (colon != std::string::npos) reason = reason.substr(colon + 2);
    return base::data_loss(with_hint(path + ": not valid JSON at byte " + std::to_string(e.byte) + ": " + reason));
  }
  if (!json.is_object()) {
    return base::data_loss(
        with_hint(path + ": is a JSON " + std::string(json.type_name()) + ", expected an object of token -> id"));
  }
  vocab.reserve(json.size());
  for (const auto& [token, id] : json.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      return base::data_loss(path + ": token \"" + token + "\" has id " + id.dump() +
                             ", expected a non-negative integer");
    }
    vocab.insert_or_assign(token, static_cast<int32_t>(id.get<int64_t>()));
  }
  for (std::string_view special : {kStartOfText, kEndOfText}) {
    if (vocab.find(std::string(special)) == vocab.end()) {
      return base::data_loss(with_hint(path + ": has no \"" + std::string(special) + "\" token"));
    }
  }
  return base::Status::ok();
}

base::Status CLIPTokenizer::Impl::load_merges(const std::string& path) {
  base::Result<std::string> read = base::read_file(path);
  if (!read.is_ok()) return with_hint(read.status());
  // Python reads the file with universal newlines: CRLF and CR end lines too.
  std::string text;
  text.reserve(read->size());
  for (size_t i = 0; i < read->size(); ++i) {
    char c = (*read)[i];
    if (c == '\r' && i + 1 < read->size() && (*read)[i + 1] == '\n') continue;
    text.push_back(c == '\r' ? '\n' : c);
  }
  size_t first = text.find_first_not_of(" \t\n\v\f");
  size_t last = text.find_last_not_of(" \t\n\v\f");
  std::string_view body =
      first == std::string::npos ? std::string_view() : std::string_view(text).substr(first, last + 1 - first);

  size_t line_start = body.find('\n');  // the first line ("#version: 0.2") is not a merge
  size_t rank = 0;
  for (size_t line_number = 2; line_start != std::string_view::npos && rank < kMaxMerges; ++line_number, ++rank) {
    size_t line_end = body.find('\n', line_start + 1);
    std::string_view line =
        body.substr(line_start + 1, line_end == std::string_view::npos ? line_end : line_end - line_start - 1);
    line_start = line_end;
    std::vector<std::string_view> fields = split_fields(line);
    if (fields.empty()) continue;  // a blank line still takes up a rank, as in transformers
    if (fields.size() != 2) {
      return base::data_loss(path + ":" + std::to_string(line_number) +
                             ": expected two symbols separated by a space, got \"" + std::string(line) + "\"");
    }
    int32_t left = intern(std::string(fields[0]));
    int32_t right = intern(std::string(fields[1]));
    int32_t merged = intern(std::string(fields[0]) + std::string(fields[1]));
    merges.insert_or_assign(pair_key(left, right), Merge{static_cast<int32_t>(rank), merged});
  }
  if (merges.empty()) return base::data_loss(with_hint(path + ": has no merges"));
  return base::Status::ok();
}

base::Result<std::shared_ptr<CLIPTokenizer>> CLIPTokenizer::load(const std::string& tokenizer_dir) {
  auto impl = std::make_unique<Impl>();
  SD_RETURN_IF_ERROR(impl->load_vocab(base::join_path(tokenizer_dir, "vocab.json")));
  impl->symbols.reserve(impl->vocab.size() + 1024);
  impl->symbol_index.reserve(impl->vocab.size() + 1024);
  for (const auto& [token, id] : impl->vocab) impl->intern(token);
  SD_RETURN_IF_ERROR(impl->load_merges(base::join_path(tokenizer_dir, "merges.txt")));

  std::array<std::string, 256> chars = byte_characters();
  for (int b = 0; b < 256; ++b) {
    impl->byte_symbol[b] = impl->intern(chars[b]);
    impl->last_byte_symbol[b] = impl->intern(chars[b] + std::string(kWordEnd));
  }
  impl->start_symbol = impl->intern(std::string(kStartOfText));
  impl->end_symbol = impl->intern(std::string(kEndOfText));
  impl->bos = impl->vocab.at(std::string(kStartOfText));
  impl->eos = impl->vocab.at(std::string(kEndOfText));
  impl->pad = impl->eos;  // pad_token and unk_token are "<|endoftext|>" too
  impl->unk = impl->eos;
  impl->symbol_ids.reserve(impl->symbols.size());
  for (const std::string& symbol : impl->symbols) {
    auto it = impl->vocab.find(symbol);
    impl->symbol_ids.push_back(it == impl->vocab.end() ? impl->unk : it->second);
  }
  return std::shared_ptr<CLIPTokenizer>(new CLIPTokenizer(std::move(impl)));
}

CLIPTokenizer::CLIPTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CLIPTokenizer::~CLIPTokenizer() = default;

std::vector<int32_t> CLIPTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  for (int32_t symbol : impl_->symbolize(text)) ids.push_back(impl_->symbol_ids[symbol]);
  return ids;
}

std::vector<std::string> CLIPTokenizer::tokenize(std::string_view text) const {
  std::vector<std::string> tokens;
  for (int32_t symbol : impl_->symbolize(text)) tokens.push_back(impl_->symbols[symbol]);
  return tokens;
}

std::vector<int32_t> CLIPTokenizer::encode_padded(std::string_view text, size_t max_length) const {
  assert(max_length >= 2);
  std::vector<int32_t> ids = encode(text);
  if (ids.size() > max_length - 2) ids.resize(max_length - 2);
  std::vector<int32_t> padded;
  padded.reserve(max_length);
  padded.push_back(impl_->bos);
  padded.insert(padded.end(), ids.begin(), ids.end());
  padded.push_back(impl_->eos);
  padded.resize(max_length, impl_->pad);
  return padded;
}

int32_t CLIPTokenizer::bos_id() const { return impl_->bos; }
int32_t CLIPTokenizer::eos_id() const { return impl_->eos; }
int32_t CLIPTokenizer::pad_id() const { return impl_->pad; }
size_t CLIPTokenizer::vocab_size() const { return impl_->vocab.size(); }

}  // namespace sdstack::text
