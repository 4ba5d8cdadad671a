// ftfy 6.1's mojibake repair: the badness heuristic and fix_encoding, with ftfy's regular
// expressions written out as plain matching code.
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "text/charmaps.h"
#include "text/ftfy.h"
#include "text/unicode.h"

namespace sdstack::text::ftfy {
namespace {

// ---- The badness heuristic (ftfy/badness.py) ----

// ftfy.badness.MOJIBAKE_CATEGORIES: the few hundred characters that occur in UTF-8 mojibake.
enum : uint32_t {
  kC1 = 1 << 0,
  kBad = 1 << 1,
  kCurrency = 1 << 2,
  kStartPunct = 1 << 3,
  kEndPunct = 1 << 4,
  kNumeric = 1 << 5,
  kKaomoji = 1 << 6,
  kUpperAccented = 1 << 7,
  kLowerAccented = 1 << 8,
  kUpperCommon = 1 << 9,
  kLowerCommon = 1 << 10,
  kBox = 1 << 11,
  kCommon = 1 << 12,
};

struct ClassRange {
  char32_t first;
  char32_t last;
  uint32_t mask;
};

// Generated from the character names in ftfy 6.1.1's badness.py.
// clang-format off
constexpr ClassRange kClassRanges[] = {
    {0x00A0, 0x00A0, kCommon}, {0x00AD, 0x00AD, kCommon}, {0x00B4, 0x00B4, kCommon}, {0x00B7, 0x00B7, kCommon},
    {0x2013, 0x2015, kCommon}, {0x2019, 0x2019, kCommon}, {0x2026, 0x2026, kCommon},
    {0x0080, 0x009F, kC1},
    {0x00A4, 0x00A4, kBad}, {0x00A6, 0x00A8, kBad}, {0x00AA, 0x00AA, kBad}, {0x00AC, 0x00AC, kBad},
    {0x00AF, 0x00AF, kBad}, {0x00B6, 0x00B6, kBad}, {0x00B8, 0x00B8, kBad}, {0x00BA, 0x00BA, kBad},
    {0x0192, 0x0192, kBad}, {0x02C6, 0x02C7, kBad}, {0x02D8, 0x02D8, kBad}, {0x02DB, 0x02DC, kBad},
    {0x2020, 0x2021, kBad}, {0x2030, 0x2030, kBad}, {0x2310, 0x2310, kBad}, {0x25CA, 0x25CA, kBad},
    {0xFFFD, 0xFFFD, kBad},
    {0x00A2, 0x00A3, kCurrency}, {0x00A5, 0x00A5, kCurrency}, {0x20A7, 0x20A7, kCurrency}, {0x20AC, 0x20AC, kCurrency},
    {0x00A1, 0x00A1, kStartPunct}, {0x00A9, 0x00A9, kStartPunct}, {0x00AB, 0x00AB, kStartPunct},
    {0x00BF, 0x00BF, kStartPunct}, {0x0384, 0x0385, kStartPunct}, {0x2018, 0x2018, kStartPunct},
    {0x201A, 0x201A, kStartPunct}, {0x201C, 0x201C, kStartPunct}, {0x201E, 0x201E, kStartPunct},
    {0x2022, 0x2022, kStartPunct}, {0x2039, 0x2039, kStartPunct}, {0xF8FF, 0xF8FF, kStartPunct},
    {0x00AE, 0x00AE, kEndPunct}, {0x00BB, 0x00BB, kEndPunct}, {0x02DD, 0x02DD, kEndPunct},
    {0x201D, 0x201D, kEndPunct}, {0x203A, 0x203A, kEndPunct}, {0x2122, 0x2122, kEndPunct},
    {0x00B1, 0x00B3, kNumeric}, {0x00B5, 0x00B5, kNumeric}, {0x00B9, 0x00B9, kNumeric}, {0x00BC, 0x00BE, kNumeric},
    {0x00D7, 0x00D7, kNumeric}, {0x00F7, 0x00F7, kNumeric}, {0x2044, 0x2044, kNumeric}, {0x2116, 0x2116, kNumeric},
    {0x2202, 0x2202, kNumeric}, {0x2206, 0x2206, kNumeric}, {0x220F, 0x220F, kNumeric}, {0x2211, 0x2211, kNumeric},
    {0x221A, 0x221A, kNumeric}, {0x221E, 0x221E, kNumeric}, {0x2229, 0x2229, kNumeric}, {0x222B, 0x222B, kNumeric},
    {0x2248, 0x2248, kNumeric}, {0x2260, 0x2261, kNumeric}, {0x2264, 0x2265, kNumeric},
    {0x00B0, 0x00B0, kKaomoji}, {0x00D2, 0x00D6, kKaomoji}, {0x00D9, 0x00DC, kKaomoji}, {0x00F2, 0x00F6, kKaomoji},
    {0x00F8, 0x00FC, kKaomoji}, {0x0150, 0x0150, kKaomoji},
    {0x00C0, 0x00D1, kUpperAccented}, {0x00D8, 0x00D8, kUpperAccented}, {0x00DC, 0x00DD, kUpperAccented},
    {0x0102, 0x0102, kUpperAccented}, {0x0104, 0x0104, kUpperAccented}, {0x0106, 0x0106, kUpperAccented},
    {0x010C, 0x010C, kUpperAccented}, {0x010E, 0x010E, kUpperAccented}, {0x0110, 0x0110, kUpperAccented},
    {0x0118, 0x0118, kUpperAccented}, {0x011A, 0x011A, kUpperAccented}, {0x011E, 0x011E, kUpperAccented},
    {0x0130, 0x0130, kUpperAccented}, {0x0139, 0x0139, kUpperAccented}, {0x013D, 0x013D, kUpperAccented},
    {0x0141, 0x0141, kUpperAccented}, {0x0143, 0x0143, kUpperAccented}, {0x0147, 0x0147, kUpperAccented},
    {0x0152, 0x0152, kUpperAccented}, {0x0158, 0x0158, kUpperAccented}, {0x015A, 0x015A, kUpperAccented},
    {0x015E, 0x015E, kUpperAccented}, {0x0160, 0x0160, kUpperAccented}, {0x0162, 0x0162, kUpperAccented},
    {0x0164, 0x0164, kUpperAccented}, {0x016E, 0x016E, kUpperAccented}, {0x0170, 0x0170, kUpperAccented},
    {0x0178, 0x0179, kUpperAccented}, {0x017B, 0x017B, kUpperAccented}, {0x017D, 0x017D, kUpperAccented},
    {0x0490, 0x0490, kUpperAccented},
    {0x00DF, 0x00F1, kLowerAccented}, {0x00FC, 0x00FC, kLowerAccented}, {0x0103, 0x0103, kLowerAccented},
    {0x0105, 0x0105, kLowerAccented}, {0x0107, 0x0107, kLowerAccented}, {0x010D, 0x010D, kLowerAccented},
    {0x010F, 0x010F, kLowerAccented}, {0x0111, 0x0111, kLowerAccented}, {0x0119, 0x0119, kLowerAccented},
    {0x011B, 0x011B, kLowerAccented}, {0x011F, 0x011F, kLowerAccented}, {0x013A, 0x013A, kLowerAccented},
    {0x013E, 0x013E, kLowerAccented}, {0x0142, 0x0142, kLowerAccented}, {0x0153, 0x0153, kLowerAccented},
    {0x0155, 0x0155, kLowerAccented}, {0x015B, 0x015B, kLowerAccented}, {0x015F, 0x015F, kLowerAccented},
    {0x0161, 0x0161, kLowerAccented}, {0x0165, 0x0165, kLowerAccented}, {0x017A, 0x017A, kLowerAccented},
    {0x017C, 0x017C, kLowerAccented}, {0x017E, 0x017E, kLowerAccented}, {0x0491, 0x0491, kLowerAccented},
    {0xFB01, 0xFB02, kLowerAccented},
    {0x00DE, 0x00DE, kUpperCommon}, {0x0386, 0x0386, kUpperCommon}, {0x0388, 0x038A, kUpperCommon},
    {0x038C, 0x038C, kUpperCommon}, {0x038E, 0x038F, kUpperCommon}, {0x0391, 0x03AB, kUpperCommon},
    {0x0401, 0x042F, kUpperCommon},
    {0x03AC, 0x03C9, kLowerCommon}, {0x0430, 0x045F, kLowerCommon},
    {0x2502, 0x2502, kBox}, {0x250C, 0x250C, kBox}, {0x2510, 0x2510, kBox}, {0x2518, 0x2518, kBox},
    {0x251C, 0x251C, kBox}, {0x2524, 0x2524, kBox}, {0x252C, 0x252C, kBox}, {0x253C, 0x253C, kBox},
    {0x2550, 0x256C, kBox}, {0x2580, 0x2580, kBox}, {0x2584, 0x2584, kBox}, {0x2588, 0x2588, kBox},
    {0x258C, 0x258C, kBox}, {0x2590, 0x2593, kBox},
};
// clang-format on

uint32_t class_mask(char32_t c) {
  if (c < 0x80) return 0;
  static const std::unordered_map<char32_t, uint32_t> masks = [] {
    std::unordered_map<char32_t, uint32_t> built;
    for (const ClassRange& range : kClassRanges) {
      for (char32_t cp = range.first; cp <= range.last; ++cp) built[cp] |= range.mask;
    }
    return built;
  }();
  auto it = masks.find(c);
  return it == masks.end() ? 0 : it->second;
}

bool one_of(char32_t c, std::u32string_view set) { return set.find(c) != std::u32string_view::npos; }
bool ascii_lower(char32_t c) { return c >= U'a' && c <= U'z'; }
bool ascii_letter(char32_t c) { return ascii_lower(c) || (c >= U'A' && c <= U'Z'); }

// Whether one of the alternatives of ftfy 6.1.1's BADNESS_RE matches at position i. The rules are
// in the regex's order; `m` holds the class masks of `t`, and both read as 0 past the end.
bool bad_at(std::u32string_view t, const std::vector<uint32_t>& m, size_t i) {
  const size_t n = t.size();
  auto c = [&](size_t k) -> char32_t { return k < n ? t[k] : 0; };
  auto has = [&](size_t k, uint32_t mask) { return k < n && (m[k] & mask) != 0; };
  constexpr uint32_t kMojibakeish =
      kBad | kLowerAccented | kUpperAccented | kBox | kStartPunct | kEndPunct | kCurrency | kNumeric;
  if (has(i, kC1)) return true;
  if (has(i, kMojibakeish) && has(i + 1, kBad)) return true;
  if (ascii_letter(c(i)) && has(i + 1, kLowerCommon | kUpperCommon) && has(i + 2, kBad)) return true;
  if (has(i, kBad) && has(i + 1, kMojibakeish & ~kBad)) return true;
  if (has(i, kLowerAccented | kLowerCommon | kBox | kEndPunct | kCurrency | kNumeric) && has(i + 1, kUpperAccented))
    return true;
  if (has(i, kBox | kEndPunct | kCurrency | kNumeric) && has(i + 1, kLowerAccented)) return true;
  if (has(i, kLowerAccented | kBox | kEndPunct) && has(i + 1, kCurrency)) return true;
  if (i < n && is_space(t[i]) && has(i + 1, kUpperAccented) && has(i + 2, kCurrency)) return true;
  if (has(i, kUpperAccented | kBox) && has(i + 1, kNumeric)) return true;
  if (has(i, kLowerAccented | kUpperAccented | kBox | kCurrency | kEndPunct) && has(i + 1, kStartPunct) &&
      has(i + 2, kNumeric))
    return true;
  if (has(i, kLowerAccented | kUpperAccented | kCurrency | kNumeric | kBox) && has(i + 1, kEndPunct) &&
      has(i + 2, kStartPunct))
    return true;
  if (has(i, kCurrency | kNumeric | kBox) && has(i + 1, kStartPunct)) return true;
  if (ascii_lower(c(i)) && has(i + 1, kUpperAccented) && has(i + 2, kStartPunct | kCurrency)) return true;
  if (has(i, kBox) && has(i + 1, kKaomoji)) return true;
  if (has(i, kLowerAccented | kUpperAccented | kCurrency | kNumeric | kStartPunct | kEndPunct) && has(i + 1, kBox))
    return true;
  if (has(i, kBox) && has(i + 1, kEndPunct)) return true;
  if (has(i, kLowerAccented | kUpperAccented) && has(i + 1, kEndPunct) && i + 2 < n && is_word_char(t[i + 2]))
    return true;
  // The ligature œ when not followed by an unaccented Latin letter.
  if (one_of(c(i), U"Œœ") && i + 1 < n && !ascii_letter(t[i + 1])) return true;
  // Common Windows-1252 2-character mojibake that isn't covered by the cases above.
  if (one_of(c(i), U"ÂÃÎÐ") &&
      (one_of(c(i + 1), U"€Šš¢£Ÿž\u00a0\u00ad®©°·»–—´") || has(i + 1, kStartPunct | kEndPunct)))
    return true;
  if (c(i) == U'×' && one_of(c(i + 1), U"²³")) return true;
  // Windows-1252 mojibake of Arabic words: four characters, because 'common' ones are involved.
  auto arabic_second = [&](size_t k) {
    return has(k, kCommon | kCurrency | kBad | kNumeric | kStartPunct) || one_of(c(k), U"ŸŠ®°µ»");
  };
  if (one_of(c(i), U"ØÙ") && arabic_second(i + 1) && one_of(c(i + 2), U"ØÙ") && arabic_second(i + 3)) return true;
  // Windows-1252 mojibake that starts 3-character sequences for some South Asian alphabets.
  if (c(i) == U'à' && one_of(c(i + 1), U"²µ¹¼½¾")) return true;
  // MacRoman mojibake that isn't covered by the cases above.
  if (c(i) == U'√' && one_of(c(i + 1), U"±∂†≠®™´≤≥¥µø")) return true;
  if (c(i) == U'≈' && one_of(c(i + 1), U"°¢")) return true;
  if (c(i) == U'‚' && c(i + 1) == U'Ä' && one_of(c(i + 2), U"ìîïòôúùû†°¢π")) return true;
  if (c(i) == U'‚' && one_of(c(i + 1), U"âó") && one_of(c(i + 2), U"àä°ê")) return true;
  // Windows-1251 mojibake of characters in the U+2000 range, of Latin-1 and of Cyrillic.
  if (c(i) == U'в' && c(i + 1) == U'Ђ') return true;
  if (one_of(c(i), U"ВГРС") &&
      (has(i + 1, kC1 | kBad | kStartPunct | kEndPunct | kCurrency) || one_of(c(i + 1), U"°µ")) &&
      one_of(c(i + 2), U"ВГРС"))
    return true;
  if (t.substr(i).starts_with(U"ГўВЂВ") && i + 6 < n && t[i + 5] != U'\n' &&
      (ascii_letter(t[i + 6]) || t[i + 6] == U' '))
    return true;
  // Windows-1252 encodings of 'à' and 'á', as well as \xa0 itself.
  if (c(i) == U'Ã' && one_of(c(i + 1), U"\u00a0¡")) return true;
  if (ascii_lower(c(i))) {
    if (i + 1 < n && is_space(t[i + 1]) && one_of(c(i + 2), U"ÃÂ") && c(i + 3) == U' ') return true;
    if (one_of(c(i + 1), U"ÃÂ") && c(i + 2) == U' ') return true;
  }
  if (i == 0 && one_of(c(0), U"ÃÂ") && c(1) == U' ') return true;
  // Â as an encoding of exactly the character after it.
  if ((one_of(c(i), U"abcdefghijklmnopqrstuvwxyz.,?!") || has(i, kEndPunct)) && c(i + 1) == U'Â' &&
      (c(i + 2) == U' ' || has(i + 2, kStartPunct | kEndPunct)))
    return true;
  // Windows-1253 mojibake of characters in the U+2000 range, of Latin-1 and of Greek.
  if (c(i) == U'β' && c(i + 1) == U'€' && one_of(c(i + 2), U"™\u00a0Ά\u00ad®°")) return true;
  if (one_of(c(i), U"ΒΓΞΟ") && (has(i + 1, kC1 | kBad | kStartPunct | kEndPunct | kCurrency) || c(i + 1) == U'°') &&
      one_of(c(i + 2), U"ΒΓΞΟ"))
    return true;
  return false;
}

// ---- Byte-level fixes applied inside fix_encoding (ftfy/fixes.py, ftfy/chardata.py) ----

bool byte_in(uint8_t b, uint8_t lo, uint8_t hi) { return b >= lo && b <= hi; }
bool continuation(uint8_t b) { return byte_in(b, 0x80, 0xBF); }
// [\x80-\x84\x86-\x9f\xa1-\xbf]: a continuation byte that is not 85 (…) or A0 (the byte lost).
bool likely_continuation(uint8_t b) { return continuation(b) && b != 0x85 && b != 0xA0; }

// Length of the ALTERED_UTF8_RE match at `pos` (UTF-8 whose A0 byte became a space), or 0.
size_t altered_utf8_at(std::string_view s, size_t pos) {
  auto at = [&](size_t k) -> uint8_t { return pos + k < s.size() ? static_cast<uint8_t>(s[pos + k]) : 0; };
  auto space = [&](size_t k) { return pos + k < s.size() && s[pos + k] == ' '; };
  uint8_t lead = at(0);
  if ((lead == 0xC2 || lead == 0xC3 || lead == 0xC5 || lead == 0xCE || lead == 0xD0 || lead == 0xD9) && space(1))
    return 2;
  if ((lead == 0xE2 || lead == 0xE3) && space(1) && likely_continuation(at(2))) return 3;
  if (byte_in(lead, 0xE0, 0xE3) && likely_continuation(at(1)) && space(2)) return 3;
  if (lead == 0xF0) {
    if (space(1) && continuation(at(2)) && continuation(at(3))) return 4;
    if (continuation(at(1)) && space(2) && continuation(at(3))) return 4;
    if (continuation(at(1)) && continuation(at(2)) && space(3)) return 4;
  }
  return 0;
}

bool has_altered_utf8(std::string_view s) {
  for (size_t pos = 0; pos < s.size(); ++pos) {
    if (altered_utf8_at(s, pos) > 0) return true;
  }
  return false;
}

// fixes.restore_byte_a0: puts back the A0 bytes that became spaces. "Ã " alone as a word is
// usually "à" followed by a space, so C3 + space gains an A0 and keeps its space (A_GRAVE_WORD_RE),
// except before the Portuguese "às", "àquele", "àquela", "àquilo".
std::string restore_byte_a0(std::string_view bytes) {
  std::string with_a_grave;
  for (size_t pos = 0; pos < bytes.size(); ++pos) {
    if (static_cast<uint8_t>(bytes[pos]) == 0xC3 && pos + 1 < bytes.size() && bytes[pos + 1] == ' ') {
      std::string_view rest = bytes.substr(pos + 2);
      if (!rest.starts_with(" ") && !rest.starts_with("quele") && !rest.starts_with("quela") &&
          !rest.starts_with("quilo") && !rest.starts_with("s ")) {
        with_a_grave += "\xC3\xA0 ";
        ++pos;
        continue;
      }
    }
    with_a_grave.push_back(bytes[pos]);
  }
  std::string restored;
  for (size_t pos = 0; pos < with_a_grave.size();) {
    size_t length = altered_utf8_at(with_a_grave, pos);
    if (length == 0) {
      restored.push_back(with_a_grave[pos++]);
      continue;
    }
    for (size_t k = 0; k < length; ++k)
      restored.push_back(with_a_grave[pos + k] == ' ' ? '\xA0' : with_a_grave[pos + k]);
    pos += length;
  }
  return restored;
}

// Length of the LOSSY_UTF8_RE match at `pos`: a UTF-8 (or CESU-8) sequence some of whose bytes
// were lost, shown as 1A (our sloppy codecs' U+FFFD) or, once per sequence, as '?'.
size_t lossy_utf8_at(std::string_view s, size_t pos) {
  auto at = [&](size_t k) -> int { return pos + k < s.size() ? static_cast<uint8_t>(s[pos + k]) : -1; };
  auto lost = [&](size_t k) { return at(k) == 0x1A; };                       // [\x1a]
  auto lost_or_q = [&](size_t k) { return at(k) == 0x1A || at(k) == '?'; };  // [\x1a?]
  auto lost_or_cont = [&](size_t k) { return lost(k) || (at(k) >= 0x80 && at(k) <= 0xBF); };
  auto any_of3 = [&](size_t k) { return lost_or_q(k) || (at(k) >= 0x80 && at(k) <= 0xBF); };
  int lead = at(0);
  if (lead >= 0xC2 && lead <= 0xDF && lost(1)) return 2;
  if ((lead == 0xC2 || lead == 0xC3) && at(1) == '?') return 2;
  if (lead == 0xED && at(1) >= 0xA0 && at(1) <= 0xAF && at(3) == 0xED && at(4) >= 0xB0 && at(4) <= 0xBF) {
    if (lost_or_q(2) && any_of3(5)) return 6;
    if (any_of3(2) && lost_or_q(5)) return 6;
  }
  if (lead >= 0xE0 && lead <= 0xEF) {
    if (lost_or_q(1) && lost_or_cont(2)) return 3;
    if (lost_or_cont(1) && lost_or_q(2)) return 3;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    if (lost_or_q(1) && lost_or_cont(2) && lost_or_cont(3)) return 4;
    if (lost_or_cont(1) && lost_or_q(2) && lost_or_cont(3)) return 4;
    if (lost_or_cont(1) && lost_or_cont(2) && lost_or_q(3)) return 4;
  }
  if (lead == 0x1A) return 1;
  return 0;
}

// fixes.replace_lossy_sequences: such sequences become the UTF-8 of U+FFFD.
std::string replace_lossy_sequences(std::string_view bytes) {
  std::string out;
  for (size_t pos = 0; pos < bytes.size();) {
    size_t length = lossy_utf8_at(bytes, pos);
    if (length == 0) {
      out.push_back(bytes[pos++]);
    } else {
      out += "\xEF\xBF\xBD";
      pos += length;
    }
  }
  return out;
}

// ---- decode_inconsistent_utf8: mojibake embedded in otherwise good text ----

// chardata.UTF8_CLUES: the characters that UTF-8 lead bytes (C2-DF, E0-EF, F0/F3) and continuation
// bytes (80-BF) decode to in the Latin-1-like charmaps.
struct Utf8Clues {
  std::u32string first_of_2, first_of_3, first_of_4, continuation, continuation_strict;
};

const Utf8Clues& utf8_clues() {
  static const Utf8Clues clues = [] {
    Utf8Clues built;
    constexpr Charmap kLatin1Like[] = {Charmap::kLatin1,
                                       Charmap::kSloppyWindows1252,
                                       Charmap::kSloppyWindows1251,
                                       Charmap::kSloppyWindows1250,
                                       Charmap::kSloppyWindows1253,
                                       Charmap::kSloppyWindows1254};
    auto add = [](std::u32string& set, char32_t c) {
      if (set.find(c) == std::u32string::npos) set.push_back(c);
    };
    for (Charmap charmap : kLatin1Like) {
      for (int b = 0x80; b <= 0xFF; ++b) {
        char32_t c = decode_byte(charmap, static_cast<uint8_t>(b));
        if (b <= 0xBF) add(built.continuation, c);
        if (b >= 0xC2 && b <= 0xDF) add(built.first_of_2, c);
        if (b >= 0xE0 && b <= 0xEF) add(built.first_of_3, c);
        if (b == 0xF0 || b == 0xF3) add(built.first_of_4, c);
      }
    }
    // The strict set leaves out what commonly stands for itself next to mojibake: dashes, quotes,
    // the bullet and the ellipsis. The loose set also takes a space standing in for A0.
    for (char32_t c : built.continuation) {
      if (!one_of(c, U"–—―‘’‚“”„•…")) built.continuation_strict.push_back(c);
    }
    built.continuation.push_back(U' ');
    return built;
  }();
  return clues;
}

// Length of the UTF8_DETECTOR_RE match at `pos`: one or more runs of a lead character and its
// continuation characters, not directly after a strict continuation character. 0 when none.
size_t utf8_mojibake_at(std::u32string_view t, size_t pos) {
  const Utf8Clues& clues = utf8_clues();
  if (pos > 0 && one_of(t[pos - 1], clues.continuation_strict)) return 0;
  auto cont = [&](size_t k, size_t count) {
    for (size_t j = 0; j < count; ++j) {
      if (k + j >= t.size() || !one_of(t[k + j], clues.continuation)) return false;
    }
    return true;
  };
  size_t end = pos;
  while (end < t.size()) {
    if (one_of(t[end], clues.first_of_2) && cont(end + 1, 1)) {
      end += 2;
    } else if (one_of(t[end], clues.first_of_3) && cont(end + 1, 2)) {
      end += 3;
    } else if (one_of(t[end], clues.first_of_4) && cont(end + 1, 3)) {
      end += 4;
    } else {
      break;
    }
  }
  return end - pos;
}

// fixes.decode_inconsistent_utf8: fixes each UTF-8-looking stretch on its own when it looks bad.
std::u32string decode_inconsistent_utf8(std::u32string_view text) {
  std::u32string out;
  for (size_t pos = 0; pos < text.size();) {
    size_t length = utf8_mojibake_at(text, pos);
    if (length == 0) {
      out.push_back(text[pos++]);
      continue;
    }
    std::u32string_view stretch = text.substr(pos, length);
    // Only stretches shorter than the whole text, so that this cannot recurse forever.
    out += stretch.size() < text.size() && is_bad(stretch) ? fix_encoding(stretch) : std::u32string(stretch);
    pos += length;
  }
  return out;
}

bool is_ascii(std::u32string_view text) {
  for (char32_t c : text) {
    if (c >= 0x80) return false;
  }
  return true;
}

// ftfy's _fix_encoding_one_step_and_explain.
std::u32string fix_encoding_one_step(std::u32string_view text) {
  if (text.empty() || is_ascii(text) || !is_bad(text)) return std::u32string(text);

  // Most likely: UTF-8 that was decoded with a single-byte encoding. The first charmap that can
  // encode the text and whose bytes then decode as UTF-8 wins.
  bool latin1_possible = false;
  for (int m = 0; m < kNumCharmaps; ++m) {
    Charmap charmap = static_cast<Charmap>(m);
    std::optional<std::string> bytes = encode_charmap(text, charmap);
    if (!bytes) continue;
    if (charmap == Charmap::kLatin1) latin1_possible = true;
    if (has_altered_utf8(*bytes)) *bytes = restore_byte_a0(*bytes);
    if (is_sloppy(charmap)) *bytes = replace_lossy_sequences(*bytes);
    bool variants = bytes->find('\xED') != std::string::npos || bytes->find('\xC0') != std::string::npos;
    std::optional<std::u32string> decoded = decode_utf8_strict(*bytes, variants);
    if (decoded) return std::move(*decoded);
  }

  // Mojibake mixed with text that is fine: fix the UTF-8-looking stretches in isolation.
  for (size_t pos = 0; pos < text.size(); ++pos) {
    if (utf8_mojibake_at(text, pos) > 0) {
      std::u32string fixed = decode_inconsistent_utf8(text);
      if (fixed != text) return fixed;
      break;
    }
  }

  // Latin-1 that was meant as Windows-1252: only C1 controls can change here. (ftfy also checks for
  // "windows-1252" among the possible charmaps, but its list only names the sloppy variant.)
  if (latin1_possible) {
    std::optional<std::string> bytes = encode_charmap(text, Charmap::kLatin1);
    std::optional<std::u32string> fixed = decode_windows1252_strict(*bytes);
    if (fixed && *fixed != text) return std::move(*fixed);
  }
  for (char32_t c : text) {
    if (c >= 0x80 && c <= 0x9F) return fix_c1_controls(text);
  }
  return std::u32string(text);
}

}  // namespace

bool is_bad(std::u32string_view text) {
  std::vector<uint32_t> masks(text.size());
  bool any_candidate = false;
  for (size_t i = 0; i < text.size(); ++i) {
    masks[i] = class_mask(text[i]);
    any_candidate = any_candidate || text[i] >= 0x80;
  }
  // Every rule involves at least one non-ASCII character.
  if (!any_candidate) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    if (bad_at(text, masks, i)) return true;
  }
  return false;
}

std::u32string fix_encoding(std::u32string_view text) {
  // ftfy repeats single steps until the text stops changing; each real step shortens the text or
  // removes a C1 control, so the bound is only a guard.
  std::u32string current(text);
  for (int step = 0; step < 64; ++step) {
    std::u32string next = fix_encoding_one_step(current);
    if (next == current) break;
    current = std::move(next);
  }
  return current;
}

std::u32string fix_c1_controls(std::u32string_view text) {
  std::u32string out(text);
  for (char32_t& c : out) {
    if (c >= 0x80 && c <= 0x9F) c = decode_byte(Charmap::kSloppyWindows1252, static_cast<uint8_t>(c));
  }
  return out;
}

}  // namespace sdstack::text::ftfy
