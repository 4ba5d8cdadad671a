// Typed reads from a component's config.json, with errors that name the file and the key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace sdstack::models {

// Reads keys of one JSON config (e.g. unet/config.json). `source` is how messages name it.
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& json, std::string source) : json_(json), source_(std::move(source)) {}

  bool has(const std::string& key) const;
  // Required keys: missing or mistyped -> error "SOURCE: key 'K' ...".
  base::Result<int64_t> integer(const std::string& key) const;
  base::Result<double> number(const std::string& key) const;
  base::Result<std::string> string(const std::string& key) const;
  base::Result<bool> boolean(const std::string& key) const;
  base::Result<std::vector<int64_t>> integers(const std::string& key) const;
  base::Result<std::vector<std::string>> strings(const std::string& key) const;
  // Optional keys: absent or null -> the fallback; present but mistyped -> error.
  base::Result<int64_t> integer(const std::string& key, int64_t fallback) const;
  base::Result<double> number(const std::string& key, double fallback) const;
  base::Result<std::string> string(const std::string& key, const std::string& fallback) const;
  base::Result<bool> boolean(const std::string& key, bool fallback) const;

  // An error about `key`, e.g. error("hidden_act", "is 'relu'; expected 'gelu' or 'quick_gelu'").
  base::Status error(const std::string& key, const std::string& problem) const;
  const std::string& source() const { return source_; }

 private:
  const nlohmann::json* find(const std::string& key) const;
  base::Status missing(const std::string& key) const;
  base::Status mistyped(const std::string& key, const char* expected) const;

  const nlohmann::json& json_;
  std::string source_;
};

}  // namespace sdstack::models
