// The individual fixes of ftfy 6.1 that fix_text() chains, on code points. Internal to text/ and its
// tests; everything else uses fix_text() from normalize.h. All functions are pure and thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace sdstack::text::ftfy {

// ftfy.badness.is_bad: whether `text` contains a character sequence that is far more likely to be
// mojibake than intended (such as "Ã©" or "â€œ").
bool is_bad(std::u32string_view text);

// ftfy.fix_encoding: repeatedly reinterprets text that is UTF-8 decoded as Latin-1, Windows-125x,
// ISO-8859-2, MacRoman or cp437 (including variants where A0 became a space or where bytes were
// lost), for as long as the text looks bad. Text that does not look bad is returned unchanged.
std::u32string fix_encoding(std::u32string_view text);

// C1 controls (U+0080..U+009F) as the Windows-1252 characters they were meant to be.
std::u32string fix_c1_controls(std::u32string_view text);

// "&amp;", "&eacute;", "&#x2019;" ... as characters: entities that end with ';' only, as ftfy does.
std::u32string unescape_html(std::u32string_view text);

// "ﬁ" -> "fi", "ĳ" -> "ij" and the other Latin ligatures and digraphs ftfy separates.
std::u32string fix_latin_ligatures(std::u32string_view text);

// Full-width ASCII and half-width katakana to their standard forms; U+3000 to a space.
std::u32string fix_character_width(std::u32string_view text);

// Curly single and double quotes (and U+02BC) to ASCII ' and ".
std::u32string uncurl_quotes(std::u32string_view text);

// CRLF, CR, U+2028, U+2029 and U+0085 to "\n".
std::u32string fix_line_breaks(std::u32string_view text);

// ANSI terminal escapes such as "\033[36;44m" removed.
std::u32string remove_terminal_escapes(std::u32string_view text);

// Control characters other than \t \n \f \r removed, with the BOM and a few Unicode controls.
std::u32string remove_control_chars(std::u32string_view text);

}  // namespace sdstack::text::ftfy
