// Text normalisation applied before CLIP tokenisation: ftfy's fix_text as transformers calls it,
// and CLIP's whitespace cleanup. Both functions are pure and thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace sdstack::text {

// ftfy.fix_text (ftfy 6.1 defaults) for the fixes that matter to prompts: mojibake repair
// (UTF-8 read as Windows-1252 / Latin-1), HTML entities, Latin ligatures, full-width
// characters, curly quotes, line breaks, control characters, NFC. Input and output are UTF-8;
// invalid UTF-8 bytes become U+FFFD.
std::string fix_text(std::string_view text);

// Python's re.sub(r"\s+", " ", text).strip() with Unicode whitespace.
std::string whitespace_clean(std::string_view text);

}  // namespace sdstack::text
