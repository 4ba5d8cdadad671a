// Code-point helpers: UTF-8 codecs with Python's error behaviour, Python's isspace/lower, categories.
#include "text/unicode.h"

#include <cstdlib>

#include <utf8proc.h>

namespace sdstack::text {
namespace {

constexpr char32_t kReplacement = 0xFFFD;

bool in(uint8_t byte, uint8_t lo, uint8_t hi) { return byte >= lo && byte <= hi; }

// The valid range of the second byte after a lead byte (Unicode table 3-7); the later continuation
// bytes are always 80..BF. Returns the sequence length, or 0 for a byte that cannot start one.
int sequence_length(uint8_t lead, uint8_t* second_lo, uint8_t* second_hi) {
  *second_lo = 0x80;
  *second_hi = 0xBF;
  if (lead < 0x80) return 1;
  if (in(lead, 0xC2, 0xDF)) return 2;
  if (lead == 0xE0) *second_lo = 0xA0;
  if (lead == 0xED) *second_hi = 0x9F;
  if (in(lead, 0xE0, 0xEF)) return 3;
  if (lead == 0xF0) *second_lo = 0x90;
  if (lead == 0xF4) *second_hi = 0x8F;
  if (in(lead, 0xF0, 0xF4)) return 4;
  return 0;
}

// Decodes one well-formed sequence at `pos`; returns the number of bytes it uses, or the length of
// its maximal well-formed prefix as a negative number (-1 at least) when it is not well-formed.
int decode_one(std::string_view bytes, size_t pos, char32_t* out) {
  uint8_t lead = static_cast<uint8_t>(bytes[pos]);
  uint8_t lo = 0, hi = 0;
  int length = sequence_length(lead, &lo, &hi);
  if (length == 1) {
    *out = lead;
    return 1;
  }
  if (length == 0) return -1;
  char32_t c = lead & (0x7F >> length);
  for (int k = 1; k < length; ++k) {
    if (pos + k >= bytes.size()) return -k;
    uint8_t byte = static_cast<uint8_t>(bytes[pos + k]);
    if (k == 1 ? !in(byte, lo, hi) : !in(byte, 0x80, 0xBF)) return -k;
    c = (c << 6) | (byte & 0x3F);
  }
  *out = c;
  return length;
}

// CESU-8 (a UTF-16 surrogate pair written as two 3-byte sequences) at `pos`, as ftfy's
// utf-8-variants codec decodes it: ED A0-AF 80-BF ED B0-BF 80-BF.
bool decode_cesu8_pair(std::string_view bytes, size_t pos, char32_t* out) {
  if (pos + 6 > bytes.size()) return false;
  auto b = [&](size_t k) { return static_cast<uint8_t>(bytes[pos + k]); };
  if (b(0) != 0xED || !in(b(1), 0xA0, 0xAF) || !in(b(2), 0x80, 0xBF) || b(3) != 0xED || !in(b(4), 0xB0, 0xBF) ||
      !in(b(5), 0x80, 0xBF)) {
    return false;
  }
  char32_t high = 0xD000 | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  char32_t low = 0xD000 | ((b(4) & 0x3F) << 6) | (b(5) & 0x3F);
  *out = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
  return true;
}

utf8proc_category_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

// Unicode's Cased property: Lu/Ll/Lt plus Other_Lowercase/Other_Uppercase (which utf8proc does
// not expose; the ranges below are those of DerivedCoreProperties.txt).
bool is_cased(char32_t c) {
  utf8proc_category_t cat = category(c);
  if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT) return true;
  // clang-format off
  static constexpr char32_t kOtherCased[][2] = {
      {0x00AA, 0x00AA}, {0x00BA, 0x00BA}, {0x02B0, 0x02B8}, {0x02C0, 0x02C1}, {0x02E0, 0x02E4},
      {0x0345, 0x0345}, {0x037A, 0x037A}, {0x1D2C, 0x1D6A}, {0x1D78, 0x1D78}, {0x1D9B, 0x1DBF},
      {0x2071, 0x2071}, {0x207F, 0x207F}, {0x2090, 0x209C}, {0x2160, 0x217F}, {0x24B6, 0x24E9},
      {0x2C7C, 0x2C7D}, {0xA69C, 0xA69D}, {0xA770, 0xA770}, {0xA7F8, 0xA7F9}, {0xAB5C, 0xAB5F},
      {0x1F130, 0x1F149}, {0x1F150, 0x1F169}, {0x1F170, 0x1F189}};
  // clang-format on
  for (const auto& range : kOtherCased) {
    if (c >= range[0] && c <= range[1]) return true;
  }
  return false;
}

// Unicode's Case_Ignorable property: Mn, Me, Cf, Lm, Sk and the word-internal punctuation of
// Word_Break MidLetter / MidNumLet / Single_Quote.
bool is_case_ignorable(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      break;
  }
  // clang-format off
  switch (c) {
    case 0x0027: case 0x002E: case 0x003A: case 0x00B7: case 0x0387: case 0x055F: case 0x05F4:
    case 0x2018: case 0x2019: case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55:
    case 0xFF07: case 0xFF0E: case 0xFF1A:
      return true;
    default:
      return false;
  }
  // clang-format on
}

// Python's handle_capital_sigma: U+03A3 lowercases to final sigma when a cased letter precedes it
// (skipping case-ignorables) and none follows it.
char32_t lower_sigma(std::u32string_view text, size_t i) {
  size_t j = i;
  while (j > 0 && is_case_ignorable(text[j - 1])) --j;
  bool final_sigma = j > 0 && is_cased(text[j - 1]);
  if (final_sigma) {
    size_t k = i + 1;
    while (k < text.size() && is_case_ignorable(text[k])) ++k;
    final_sigma = k == text.size() || !is_cased(text[k]);
  }
  return final_sigma ? 0x03C2 : 0x03C3;
}

std::u32string utf8proc_normalize(std::u32string_view text, int options) {
  std::string utf8 = encode_utf8(text);
  utf8proc_uint8_t* result = nullptr;
  utf8proc_ssize_t length =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(utf8.data()), static_cast<utf8proc_ssize_t>(utf8.size()),
                   &result, static_cast<utf8proc_option_t>(options));
  if (length < 0) return std::u32string(text);  // only for invalid code points, which we never build
  std::u32string normalized = decode_utf8(std::string_view(reinterpret_cast<const char*>(result), length));
  std::free(result);
  return normalized;
}

}  // namespace

std::u32string decode_utf8(std::string_view bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    char32_t c = 0;
    int used = decode_one(bytes, pos, &c);
    if (used > 0) {
      out.push_back(c);
      pos += used;
    } else {
      out.push_back(kReplacement);
      pos += -used;
    }
  }
  return out;
}

std::optional<std::u32string> decode_utf8_strict(std::string_view bytes, bool variants) {
  std::u32string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    char32_t c = 0;
    uint8_t lead = static_cast<uint8_t>(bytes[pos]);
    if (variants && lead == 0xED && decode_cesu8_pair(bytes, pos, &c)) {
      out.push_back(c);
      pos += 6;
      continue;
    }
    if (variants && lead == 0xC0 && pos + 1 < bytes.size() && static_cast<uint8_t>(bytes[pos + 1]) == 0x80) {
      out.push_back(0);
      pos += 2;
      continue;
    }
    int used = decode_one(bytes, pos, &c);
    if (used <= 0) return std::nullopt;
    out.push_back(c);
    pos += used;
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) append_utf8(out, c);
  return out;
}

bool is_space(char32_t c) {
  // Python's Py_UNICODE_ISSPACE: bidirectional class WS, B or S, or category Zs.
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  // clang-format off
  switch (c) {
    case 0x0085: case 0x00A0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
  // clang-format on
}

bool is_letter(char32_t c) {
  utf8proc_category_t cat = category(c);
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}

bool is_number(char32_t c) {
  utf8proc_category_t cat = category(c);
  return cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO;
}

bool is_decimal_digit(char32_t c) { return category(c) == UTF8PROC_CATEGORY_ND; }

bool is_word_char(char32_t c) { return c == U'_' || is_letter(c) || is_number(c); }

std::u32string to_lower(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char32_t c = text[i];
    if (c < 0x80) {
      out.push_back(c >= U'A' && c <= U'Z' ? c + 32 : c);
    } else if (c == 0x0130) {  // the one unconditional multi-character lowercase in SpecialCasing.txt
      out.push_back(U'i');
      out.push_back(0x0307);
    } else if (c == 0x03A3) {
      out.push_back(lower_sigma(text, i));
    } else {
      out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
    }
  }
  return out;
}

std::u32string nfc(std::u32string_view text) {
  // Nothing below U+0300 composes or decomposes under NFC: skip the round trip for such text.
  bool trivial = true;
  for (char32_t c : text) {
    if (c >= 0x300) {
      trivial = false;
      break;
    }
  }
  if (trivial) return std::u32string(text);
  return utf8proc_normalize(text, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
}

std::u32string nfkc(char32_t c) {
  return utf8proc_normalize(std::u32string(1, c), UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
}

}  // namespace sdstack::text
