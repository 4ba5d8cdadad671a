// The single-byte encodings that ftfy reinterprets mojibake through, as Python's codecs define them.
// Internal to text/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sdstack::text {

// In the order ftfy 6.1 tries them (chardata.CHARMAP_ENCODINGS). The "sloppy" Windows code pages
// are ftfy's: bytes the code page leaves undefined decode as Latin-1, and byte 1A stands for U+FFFD.
enum class Charmap {
  kLatin1,
  kSloppyWindows1252,
  kSloppyWindows1251,
  kSloppyWindows1250,
  kSloppyWindows1253,
  kSloppyWindows1254,
  kIso8859_2,
  kMacRoman,
  kCp437,
};
inline constexpr int kNumCharmaps = 9;

bool is_sloppy(Charmap charmap);

// The character `byte` decodes to.
char32_t decode_byte(Charmap charmap, uint8_t byte);

// `text` encoded in `charmap`, or nullopt when some character has no byte there (ftfy's
// possible_encoding() is exactly "this returns a value").
std::optional<std::string> encode_charmap(std::u32string_view text, Charmap charmap);

// Python's strict "windows-1252" codec: nullopt when a byte is one of the five it leaves undefined.
std::optional<std::u32string> decode_windows1252_strict(std::string_view bytes);

}  // namespace sdstack::text
