// The program's version.
#pragma once

namespace sdstack::cli {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace sdstack::cli
