// ftfy 6.1's fix_text (its default configuration, as transformers calls it) and CLIP's
// whitespace_clean, plus the simple character-level fixes fix_text chains.
#include "text/normalize.h"

#include <optional>
#include <unordered_map>
#include <utility>

#include "text/ftfy.h"
#include "text/html_entities.h"
#include "text/unicode.h"

namespace sdstack::text {
namespace ftfy {
namespace {

// html.unescape() of a numeric character reference, as Python 3 decodes one: HTML5's
// replacements for C1 and invalid code points, and nothing at all for some controls.
std::u32string decode_char_ref(uint64_t code) {
  if (code == 0) return U"\uFFFD";
  if (code == 0x0D) return U"\r";
  if (code >= 0x80 && code <= 0x9F) return fix_c1_controls(std::u32string(1, static_cast<char32_t>(code)));
  if ((code >= 0xD800 && code <= 0xDFFF) || code > 0x10FFFF) return U"\uFFFD";
  if ((code >= 0x01 && code <= 0x08) || code == 0x0B || (code >= 0x0E && code <= 0x1F) || code == 0x7F ||
      (code >= 0xFDD0 && code <= 0xFDEF) || (code & 0xFFFE) == 0xFFFE) {
    return U"";
  }
  return std::u32string(1, static_cast<char32_t>(code));
}

// "#123" or "#x1F600" (the text between '&' and ';'); nullopt when html.unescape would leave part of
// it undecoded, in which case ftfy keeps the whole entity.
std::optional<std::u32string> numeric_entity(std::u32string_view body) {
  bool hex = body.size() > 1 && (body[1] == U'x' || body[1] == U'X');
  size_t start = hex ? 2 : 1;
  if (start >= body.size()) return std::nullopt;
  uint64_t code = 0;
  for (size_t k = start; k < body.size(); ++k) {
    char32_t c = body[k];
    int digit = -1;
    if (c >= U'0' && c <= U'9') digit = static_cast<int>(c - U'0');
    if (hex && c >= U'a' && c <= U'f') digit = static_cast<int>(c - U'a' + 10);
    if (hex && c >= U'A' && c <= U'F') digit = static_cast<int>(c - U'A' + 10);
    if (digit < 0) return std::nullopt;
    code = code * (hex ? 16 : 10) + digit;
    if (code > 0x10FFFF) code = 0x110000;  // anything this large decodes the same way
  }
  std::u32string decoded = decode_char_ref(code);
  // ftfy: "If html.unescape only decoded part of the string, that's not what we want."
  if (decoded.find(U';') != std::u32string::npos) return std::nullopt;
  return decoded;
}

bool ascii_alnum(char32_t c) {
  return (c >= U'0' && c <= U'9') || (c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z');
}

}  // namespace

std::u32string unescape_html(std::u32string_view text) {
  // ftfy's HTML_ENTITY_RE: &#?[0-9A-Za-z]{1,24};
  std::u32string out;
  for (size_t pos = 0; pos < text.size();) {
    if (text[pos] == U'&') {
      size_t start = pos + 1 < text.size() && text[pos + 1] == U'#' ? pos + 2 : pos + 1;
      size_t end = start;
      while (end < text.size() && end - start < 24 && ascii_alnum(text[end])) ++end;
      if (end > start && end < text.size() && text[end] == U';') {
        std::u32string_view body = text.substr(pos + 1, end - pos - 1);
        std::optional<std::u32string> replacement;
        if (body[0] == U'#') {
          replacement = numeric_entity(body);
        } else if (std::optional<std::string_view> entity = html_entity(encode_utf8(body))) {
          replacement = decode_utf8(*entity);
        }
        if (replacement) {
          out += *replacement;
        } else {
          out.append(text.substr(pos, end + 1 - pos));
        }
        pos = end + 1;
        continue;
      }
    }
    out.push_back(text[pos++]);
  }
  return out;
}

std::u32string fix_latin_ligatures(std::u32string_view text) {
  // ftfy's LIGATURES: typographic ligatures, and digraphs that exist only for legacy encodings.
  // Intended letters such as æ and œ are not on the list.
  // clang-format off
  static constexpr std::pair<char32_t, std::u32string_view> kLigatures[] = {
      {U'Ĳ', U"IJ"}, {U'ĳ', U"ij"}, {U'ŉ', U"ʼn"}, {U'Ǳ', U"DZ"}, {U'ǲ', U"Dz"}, {U'ǳ', U"dz"},
      {U'Ǆ', U"DŽ"}, {U'ǅ', U"Dž"}, {U'ǆ', U"dž"}, {U'Ǉ', U"LJ"}, {U'ǈ', U"Lj"}, {U'ǉ', U"lj"},
      {U'Ǌ', U"NJ"}, {U'ǋ', U"Nj"}, {U'ǌ', U"nj"}, {U'ﬀ', U"ff"}, {U'ﬁ', U"fi"}, {U'ﬂ', U"fl"},
      {U'ﬃ', U"ffi"}, {U'ﬄ', U"ffl"}, {U'ﬅ', U"ſt"}, {U'ﬆ', U"st"}};
  // clang-format on
  std::u32string out;
  for (char32_t c : text) {
    const std::u32string_view* replacement = nullptr;
    if (c >= U'Ĳ') {
      for (const auto& [ligature, letters] : kLigatures) {
        if (c == ligature) replacement = &letters;
      }
    }
    if (replacement == nullptr) {
      out.push_back(c);
    } else {
      out += *replacement;
    }
  }
  return out;
}

std::u32string fix_character_width(std::u32string_view text) {
  // ftfy's WIDTH_MAP: U+FF01..U+FFEF to their NFKC forms, and the ideographic space to a space.
  static const std::unordered_map<char32_t, std::u32string> width_map = [] {
    std::unordered_map<char32_t, std::u32string> built{{0x3000, U" "}};
    for (char32_t c = 0xFF01; c < 0xFFF0; ++c) {
      std::u32string alternate = nfkc(c);
      if (alternate != std::u32string(1, c)) built.emplace(c, alternate);
    }
    return built;
  }();
  std::u32string out;
  for (char32_t c : text) {
    auto it = c >= 0x3000 ? width_map.find(c) : width_map.end();
    if (it == width_map.end()) {
      out.push_back(c);
    } else {
      out += it->second;
    }
  }
  return out;
}

std::u32string uncurl_quotes(std::u32string_view text) {
  std::u32string out(text);
  for (char32_t& c : out) {
    if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = U'\'';
    if (c >= 0x201C && c <= 0x201F) c = U'"';
  }
  return out;
}

std::u32string fix_line_breaks(std::u32string_view text) {
  std::u32string out;
  for (size_t i = 0; i < text.size(); ++i) {
    char32_t c = text[i];
    if (c == U'\r' && i + 1 < text.size() && text[i + 1] == U'\n') continue;  // CRLF: keep the LF
    out.push_back(c == U'\r' || c == 0x2028 || c == 0x2029 || c == 0x0085 ? U'\n' : c);
  }
  return out;
}

std::u32string remove_terminal_escapes(std::u32string_view text) {
  // ftfy's ANSI_RE: \033\[((?:\d|;)*)([a-zA-Z])
  std::u32string out;
  for (size_t pos = 0; pos < text.size();) {
    if (text[pos] == 0x1B && pos + 1 < text.size() && text[pos + 1] == U'[') {
      size_t end = pos + 2;
      while (end < text.size() && (text[end] == U';' || is_decimal_digit(text[end]))) ++end;
      if (end < text.size() && ascii_alnum(text[end]) && !(text[end] >= U'0' && text[end] <= U'9')) {
        pos = end + 1;
        continue;
      }
    }
    out.push_back(text[pos++]);
  }
  return out;
}

std::u32string remove_control_chars(std::u32string_view text) {
  std::u32string out;
  for (char32_t c : text) {
    bool control = c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
                   c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
    if (!control) out.push_back(c);
  }
  return out;
}

}  // namespace ftfy

namespace {

// ftfy's fix_and_explain for one segment: every fix in order, repeated until nothing changes.
std::u32string fix_segment(std::u32string_view segment, bool unescape_html) {
  std::u32string text(segment);
  for (int round = 0; round < 16; ++round) {  // ftfy has no bound; fixes converge in two or three
    std::u32string before = text;
    if (unescape_html) text = ftfy::unescape_html(text);
    text = ftfy::fix_encoding(text);
    text = ftfy::fix_c1_controls(text);
    text = ftfy::fix_latin_ligatures(text);
    text = ftfy::fix_character_width(text);
    text = ftfy::uncurl_quotes(text);
    text = ftfy::fix_line_breaks(text);
    text = ftfy::remove_terminal_escapes(text);
    text = ftfy::remove_control_chars(text);
    text = nfc(text);
    if (text == before) break;
  }
  return text;
}

}  // namespace

std::string fix_text(std::string_view text) {
  constexpr size_t kMaxDecodeLength = 1000000;  // ftfy's max_decode_length
  std::u32string input = decode_utf8(text);
  std::u32string out;
  // unescape_html="auto": entities are decoded until a segment contains '<' (then the text is
  // probably HTML, whose entities must stay), and from then on in no later segment either.
  bool unescape_html = true;
  for (size_t pos = 0; pos < input.size();) {
    size_t newline = input.find(U'\n', pos);
    size_t end = newline == std::u32string::npos ? input.size() : newline + 1;
    if (end - pos > kMaxDecodeLength) end = pos + kMaxDecodeLength;
    std::u32string_view segment(input.data() + pos, end - pos);
    if (segment.find(U'<') != std::u32string_view::npos) unescape_html = false;
    out += fix_segment(segment, unescape_html);
    pos = end;
  }
  return encode_utf8(out);
}

std::string whitespace_clean(std::string_view text) {
  std::u32string input = decode_utf8(text);
  std::u32string out;
  bool pending_space = false;
  for (char32_t c : input) {
    if (is_space(c)) {
      pending_space = true;
      continue;
    }
    if (pending_space && !out.empty()) out.push_back(U' ');
    pending_space = false;
    out.push_back(c);
  }
  return encode_utf8(out);
}

}  // namespace sdstack::text
