// The HTML entities ftfy decodes: HTML5's named entities that end in ';', plus all-caps spellings of
// the lowercase ones (such as "&EACUTE;"). Internal to text/.
#pragma once

#include <optional>
#include <string_view>

namespace sdstack::text {

// The UTF-8 text of the entity `name` (without '&' and ';'), or nullopt when ftfy leaves it alone.
std::optional<std::string_view> html_entity(std::string_view name);

}  // namespace sdstack::text
