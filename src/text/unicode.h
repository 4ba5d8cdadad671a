// Code-point helpers for the text layer: UTF-8 <-> UTF-32 as Python decodes it, and the pieces of
// Python's str semantics (isspace, lower) that CLIP tokenisation depends on. Internal to text/.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace sdstack::text {

// UTF-8 -> code points. Invalid bytes become U+FFFD exactly as Python's
// bytes.decode("utf-8", "replace") does: one U+FFFD per maximal invalid subpart.
std::u32string decode_utf8(std::string_view bytes);

// Strict UTF-8 decoding (Python's "utf-8" codec): nullopt on any invalid, overlong or surrogate
// sequence. With `variants`, also accepts what ftfy's "utf-8-variants" codec accepts: CESU-8
// surrogate pairs and Java's C0 80 for U+0000.
std::optional<std::u32string> decode_utf8_strict(std::string_view bytes, bool variants);

std::string encode_utf8(std::u32string_view text);
void append_utf8(std::string& out, char32_t c);

// Python's str.isspace() for one character (also what `\s` matches in Python's re).
bool is_space(char32_t c);
// Unicode general category L* / N* / Nd (utf8proc's tables).
bool is_letter(char32_t c);
bool is_number(char32_t c);
bool is_decimal_digit(char32_t c);
// What `\w` matches in Python's re: letters, numbers and '_'.
bool is_word_char(char32_t c);

// Python's str.lower(): full lowercase mapping (U+0130 -> "i\u0307") and the Final_Sigma rule.
std::u32string to_lower(std::u32string_view text);

// Unicode normalization form C.
std::u32string nfc(std::u32string_view text);
// Compatibility normalization (NFKC) of one character; used to build ftfy's width map.
std::u32string nfkc(char32_t c);

}  // namespace sdstack::text
