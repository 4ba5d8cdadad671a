// Small string helpers used in messages: joining, "did you mean".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sdstack::base {

// Levenshtein distance (insert, delete, substitute; each costs 1).
size_t edit_distance(std::string_view a, std::string_view b);

// The candidate closest to `word` if it is close enough to be a likely typo, else "".
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

// " (did you mean 'x'?)" or "" when nothing is close.
std::string did_you_mean(std::string_view word, const std::vector<std::string>& candidates);

std::string join(const std::vector<std::string>& parts, std::string_view separator);

// [2,77,768] -> "[2,77,768]".
std::string shape_to_string(const std::vector<int64_t>& shape);

}  // namespace sdstack::base
