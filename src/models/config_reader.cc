// Typed reads from a component's config.json.
#include "models/config_reader.h"

namespace sdstack::models {

using base::Result;
using base::Status;

const nlohmann::json* ConfigReader::find(const std::string& key) const {
  if (!json_.is_object()) return nullptr;
  auto it = json_.find(key);
  if (it == json_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool ConfigReader::has(const std::string& key) const { return find(key) != nullptr; }

Status ConfigReader::error(const std::string& key, const std::string& problem) const {
  return base::invalid_argument(source_ + ": key '" + key + "' " + problem);
}

Status ConfigReader::missing(const std::string& key) const {
  return error(key, "is missing (is this the right config file for this model?)");
}

Status ConfigReader::mistyped(const std::string& key, const char* expected) const {
  return error(key, std::string("is ") + find(key)->dump() + ", expected " + expected);
}

Result<int64_t> ConfigReader::integer(const std::string& key) const {
  const nlohmann::json* value = find(key);
  if (value == nullptr) return missing(key);
  if (!value->is_number_integer()) return mistyped(key, "an integer");
  return value->get<int64_t>();
}

Result<double> ConfigReader::number(const std::string& key) const {
  const nlohmann::json* value = find(key);
  if (value == nullptr) return missing(key);
  if (!value->is_number()) return mistyped(key, "a number");
  return value->get<double>();
}

Result<std::string> ConfigReader::string(const std::string& key) const {
  const nlohmann::json* value = find(key);
  if (value == nullptr) return missing(key);
  if (!value->is_string()) return mistyped(key, "a string");
  return value->get<std::string>();
}

Result<bool> ConfigReader::boolean(const std::string& key) const {
  const nlohmann::json* value = find(key);
  if (value == nullptr) return missing(key);
  if (!value->is_boolean()) return mistyped(key, "true or false");
  return value->get<bool>();
}

Result<std::vector<int64_t>> ConfigReader::integers(const std::string& key) const {
  const nlohmann::json* value = find(key);
  if (value == nullptr) return missing(key);
  if (!value->is_array()) return mistyped(key, "a list of integers");
  std::vector<int64_t> out;
  for (const nlohmann::json& item : *value) {
    if (!item.is_number_integer()) return mistyped(key, "a list of integers");
    out.push_back(item.get<int64_t>());
  }
  return out;
}

Result<std::vector<std::string>> ConfigReader::strings(const std::string& key) const {
  const nlohmann::json* value = find(key);
  if (value == nullptr) return missing(key);
  if (!value->is_array()) return mistyped(key, "a list of strings");
  std::vector<std::string> out;
  for (const nlohmann::json& item : *value) {
    if (!item.is_string()) return mistyped(key, "a list of strings");
    out.push_back(item.get<std::string>());
  }
  return out;
}

Result<int64_t> ConfigReader::integer(const std::string& key, int64_t fallback) const {
  return has(key) ? integer(key) : Result<int64_t>(fallback);
}

Result<double> ConfigReader::number(const std::string& key, double fallback) const {
  return has(key) ? number(key) : Result<double>(fallback);
}

Result<std::string> ConfigReader::string(const std::string& key, const std::string& fallback) const {
  return has(key) ? string(key) : Result<std::string>(fallback);
}

Result<bool> ConfigReader::boolean(const std::string& key, bool fallback) const {
  return has(key) ? boolean(key) : Result<bool>(fallback);
}

}  // namespace sdstack::models
