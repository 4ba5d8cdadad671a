// Reading and writing ~/.sdstack/config.yaml (see config.h for the format).
#include "flow/config.h"

#include <cmath>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "base/file.h"
#include "base/strings.h"
#include "flow/spec.h"

namespace sdstack::flow {
namespace {

using base::Result;
using base::Status;

// Errors name the file, line and column of the node they are about.
class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  Status error(const YAML::Node& node, const std::string& what) const {
    const YAML::Mark mark = node.Mark();
    std::ostringstream where;
    where << file_;
    if (mark.line >= 0) where << ':' << mark.line + 1 << ':' << mark.column + 1;
    where << ": " << what;
    return base::invalid_argument(where.str());
  }

  // Refuses keys outside `known`, suggesting the nearest one.
  Status check_keys(const YAML::Node& map, const std::vector<std::string>& known, const std::string& what) const {
    if (!map.IsMap()) return error(map, what + " must be a mapping (key: value lines)");
    for (const auto& entry : map) {
      std::string key = entry.first.as<std::string>();
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      std::string hint = base::did_you_mean(key, known);
      return error(entry.first, "unknown key '" + key + "' in " + what + (hint.empty() ? " (known: " + base::join(known, ", ") + ")" : hint));
    }
    return Status::ok();
  }

  Result<std::string> string(const YAML::Node& map, const std::string& key, const std::string& fallback = "") const {
    const YAML::Node node = map[key];
    if (!node) return fallback;
    if (!node.IsScalar()) return error(node, "'" + key + "' must be a single value");
    return node.as<std::string>();
  }

  Result<int64_t> integer(const YAML::Node& map, const std::string& key, int64_t fallback = 0) const {
    SD_ASSIGN_OR_RETURN(std::string text, string(map, key, ""));
    if (text.empty()) return fallback;
    try {
      size_t used = 0;
      int64_t value = std::stoll(text, &used);
      if (used == text.size() && value >= 0) return value;
    } catch (const std::exception&) {
    }
    return error(map[key], "'" + key + "' must be a whole number >= 0, not '" + text + "'");
  }

  Result<double> number(const YAML::Node& map, const std::string& key) const {
    SD_ASSIGN_OR_RETURN(std::string text, string(map, key, ""));
    if (text.empty()) return 0.0;
    try {
      size_t used = 0;
      double value = std::stod(text, &used);
      if (used == text.size() && value >= 0 && std::isfinite(value)) return value;
    } catch (const std::exception&) {
    }
    return error(map[key], "'" + key + "' must be a number >= 0 (a price per hour), not '" + text + "'");
  }

  Result<int64_t> size(const YAML::Node& map, const std::string& key) const {
    SD_ASSIGN_OR_RETURN(std::string text, string(map, key, ""));
    if (text.empty()) return int64_t{0};
    auto parsed = parse_size(text);
    if (!parsed.is_ok()) return error(map[key], parsed.status().message());
    return *parsed;
  }

  Result<SshLogin> login_fields(const YAML::Node& map, const SshLogin& defaults) const {
    SshLogin login = defaults;
    SD_ASSIGN_OR_RETURN(login.host, string(map, "host", defaults.host));
    SD_ASSIGN_OR_RETURN(int64_t port, integer(map, "port", defaults.port));
    if (port > 65535) return error(map["port"], "'port' must be 1-65535");
    login.port = static_cast<int>(port);
    SD_ASSIGN_OR_RETURN(login.user, string(map, "user", defaults.user));
    SD_ASSIGN_OR_RETURN(login.identity_file, string(map, "identity_file", defaults.identity_file));
    SD_ASSIGN_OR_RETURN(login.jump_host, string(map, "jump_host", defaults.jump_host));
    return login;
  }

  Result<MachineResources> resources(const YAML::Node& node) const {
    SD_RETURN_IF_ERROR(check_keys(node, {"cpus", "memory", "shm", "gpus"}, "resources"));
    MachineResources machine;
    SD_ASSIGN_OR_RETURN(int64_t cpus, integer(node, "cpus"));
    machine.cpus = static_cast<int>(cpus);
    SD_ASSIGN_OR_RETURN(machine.memory_bytes, size(node, "memory"));
    SD_ASSIGN_OR_RETURN(machine.shm_bytes, size(node, "shm"));
    if (const YAML::Node gpus = node["gpus"]) {
      if (!gpus.IsSequence()) return error(gpus, "'gpus' must be a list of {name, memory}");
      for (const YAML::Node& gpu : gpus) {
        SD_RETURN_IF_ERROR(check_keys(gpu, {"name", "memory"}, "a GPU"));
        GpuInfo info;
        SD_ASSIGN_OR_RETURN(info.name, string(gpu, "name"));
        SD_ASSIGN_OR_RETURN(info.memory_bytes, size(gpu, "memory"));
        machine.gpus.push_back(info);
      }
    }
    return machine;
  }

  Result<BackendConfig> backend(const YAML::Node& node) const {
    if (!node.IsMap()) return error(node, "each backend must be a mapping with 'name' and 'type'");
    BackendConfig backend;
    SD_ASSIGN_OR_RETURN(backend.name, string(node, "name"));
    SD_ASSIGN_OR_RETURN(std::string type, string(node, "type"));
    if (backend.name.empty()) return error(node, "a backend needs a 'name'");
    if (type == "ssh") {
      backend.type = BackendConfig::Type::kSsh;
      SD_RETURN_IF_ERROR(check_keys(node, {"name", "type", "dir", "user", "port", "identity_file", "jump_host", "hosts"},
                                    "backend '" + backend.name + "'"));
      SD_ASSIGN_OR_RETURN(backend.dir, string(node, "dir"));
      SD_ASSIGN_OR_RETURN(SshLogin defaults, login_fields(node, {}));
      const YAML::Node hosts = node["hosts"];
      if (!hosts || !hosts.IsSequence() || hosts.size() == 0) {
        return error(node, "ssh backend '" + backend.name + "' needs 'hosts': a list of {host: ADDRESS}");
      }
      for (const YAML::Node& host : hosts) {
        SD_RETURN_IF_ERROR(check_keys(host, {"host", "port", "user", "identity_file", "jump_host", "price", "resources"},
                                      "a host of backend '" + backend.name + "'"));
        SshHostConfig config;
        SD_ASSIGN_OR_RETURN(config.login, login_fields(host, defaults));
        if (config.login.host.empty()) return error(host, "a host of backend '" + backend.name + "' needs 'host'");
        SD_ASSIGN_OR_RETURN(config.price, number(host, "price"));
        if (host["resources"]) {
          SD_ASSIGN_OR_RETURN(config.resources, resources(host["resources"]));
        }
        for (const SshHostConfig& other : backend.hosts) {
          if (other.login.host == config.login.host && other.login.port == config.login.port) {
            return error(host, "backend '" + backend.name + "' lists host " + config.login.display() +
                                   " twice: each host once");
          }
        }
        backend.hosts.push_back(config);
      }
    } else if (type == "slurm") {
      backend.type = BackendConfig::Type::kSlurm;
      SD_RETURN_IF_ERROR(check_keys(node, {"name", "type", "dir", "login", "port", "identity_file", "jump_host",
                                           "account", "qos", "slurm_conf", "partitions"},
                                    "backend '" + backend.name + "'"));
      SD_ASSIGN_OR_RETURN(backend.dir, string(node, "dir"));
      SD_ASSIGN_OR_RETURN(std::string login, string(node, "login", "local"));
      backend.local_login = login == "local";
      if (!backend.local_login) {
        auto parsed = parse_login(login);
        if (!parsed.is_ok()) return error(node["login"], parsed.status().message());
        SshLogin defaults = *parsed;
        YAML::Node rest = YAML::Clone(node);
        rest.remove("login");
        rest.remove("host");
        SD_ASSIGN_OR_RETURN(backend.login, login_fields(rest, defaults));
      }
      SD_ASSIGN_OR_RETURN(backend.account, string(node, "account"));
      SD_ASSIGN_OR_RETURN(backend.qos, string(node, "qos"));
      SD_ASSIGN_OR_RETURN(backend.slurm_conf, string(node, "slurm_conf"));
      if (const YAML::Node partitions = node["partitions"]) {
        if (!partitions.IsSequence()) return error(partitions, "'partitions' must be a list");
        for (const YAML::Node& partition : partitions) {
          SD_RETURN_IF_ERROR(check_keys(partition, {"name", "cpus", "memory", "gpus", "gpu_name", "gpu_memory", "price"},
                                        "a partition of backend '" + backend.name + "'"));
          SlurmPartitionConfig config;
          SD_ASSIGN_OR_RETURN(config.name, string(partition, "name"));
          if (config.name.empty()) return error(partition, "a partition needs 'name'");
          SD_ASSIGN_OR_RETURN(int64_t cpus, integer(partition, "cpus"));
          config.cpus = static_cast<int>(cpus);
          SD_ASSIGN_OR_RETURN(config.memory_bytes, size(partition, "memory"));
          SD_ASSIGN_OR_RETURN(int64_t gpus, integer(partition, "gpus"));
          config.gpus = static_cast<int>(gpus);
          SD_ASSIGN_OR_RETURN(config.gpu_name, string(partition, "gpu_name"));
          SD_ASSIGN_OR_RETURN(config.gpu_memory_bytes, size(partition, "gpu_memory"));
          SD_ASSIGN_OR_RETURN(config.price, number(partition, "price"));
          backend.partitions.push_back(config);
        }
      }
    } else {
      return error(node["type"] ? node["type"] : node,
                   "backend '" + backend.name + "' has type '" + type + "': sdstack knows 'ssh' and 'slurm'");
    }
    return backend;
  }

  Result<S3StoreConfig> store(const YAML::Node& node) const {
    SD_RETURN_IF_ERROR(check_keys(node, {"type", "endpoint", "region", "bucket", "prefix", "addressing", "credentials",
                                         "credentials_file", "profile"},
                                  "artifacts"));
    S3StoreConfig s3;
    SD_ASSIGN_OR_RETURN(std::string type, string(node, "type", "s3"));
    if (type != "s3") return error(node["type"], "artifacts type '" + type + "': sdstack knows 's3'");
    SD_ASSIGN_OR_RETURN(s3.endpoint, string(node, "endpoint"));
    SD_ASSIGN_OR_RETURN(s3.region, string(node, "region", "us-east-1"));
    SD_ASSIGN_OR_RETURN(s3.bucket, string(node, "bucket"));
    SD_ASSIGN_OR_RETURN(s3.prefix, string(node, "prefix"));
    SD_ASSIGN_OR_RETURN(std::string addressing, string(node, "addressing", "path"));
    if (addressing != "path" && addressing != "virtual") {
      return error(node["addressing"], "'addressing' is 'path' (endpoint/bucket/key) or 'virtual' (bucket.endpoint/key)");
    }
    s3.path_style = addressing == "path";
    SD_ASSIGN_OR_RETURN(s3.credentials_file, string(node, "credentials_file"));
    SD_ASSIGN_OR_RETURN(s3.profile, string(node, "profile"));
    if (s3.endpoint.empty() || s3.bucket.empty()) return error(node, "the S3 store needs 'endpoint' and 'bucket'");
    return s3;
  }

 private:
  std::string file_;
};

void emit_login(YAML::Emitter& out, const SshLogin& login, const SshLogin& defaults) {
  if (login.port != 0 && login.port != defaults.port) out << YAML::Key << "port" << YAML::Value << login.port;
  if (!login.user.empty() && login.user != defaults.user) out << YAML::Key << "user" << YAML::Value << login.user;
  if (!login.identity_file.empty() && login.identity_file != defaults.identity_file) {
    out << YAML::Key << "identity_file" << YAML::Value << login.identity_file;
  }
  if (!login.jump_host.empty() && login.jump_host != defaults.jump_host) {
    out << YAML::Key << "jump_host" << YAML::Value << login.jump_host;
  }
}

// Sizes written back in a unit parse_size reads, exactly.
std::string size_text(int64_t bytes) { return std::to_string(bytes) + "B"; }

}  // namespace

std::string SshLogin::display() const {
  std::string text = user.empty() ? host : user + "@" + host;
  if (port != 0 && port != 22) text.append(":").append(std::to_string(port));
  return text;
}

const BackendConfig* Config::find(const std::string& name) const {
  for (const BackendConfig& backend : backends) {
    if (backend.name == name) return &backend;
  }
  return nullptr;
}

BackendConfig* Config::find(const std::string& name) {
  return const_cast<BackendConfig*>(static_cast<const Config*>(this)->find(name));
}

const char* backend_type_name(BackendConfig::Type type) {
  return type == BackendConfig::Type::kSsh ? "ssh" : "slurm";
}

Result<SshLogin> parse_login(const std::string& text) {
  SshLogin login;
  std::string rest = text;
  size_t at = rest.find('@');
  if (at != std::string::npos) {
    login.user = rest.substr(0, at);
    rest = rest.substr(at + 1);
  }
  size_t colon = rest.rfind(':');
  if (colon != std::string::npos) {
    try {
      login.port = std::stoi(rest.substr(colon + 1));
    } catch (const std::exception&) {
      login.port = -1;
    }
    if (login.port <= 0 || login.port > 65535) {
      return base::invalid_argument("bad login '" + text + "': the port after ':' must be 1-65535");
    }
    rest = rest.substr(0, colon);
  }
  login.host = rest;
  if (login.host.empty() || (at != std::string::npos && login.user.empty())) {
    return base::invalid_argument("bad login '" + text + "': write host, user@host or user@host:port");
  }
  return login;
}

Result<Config> parse_config(const std::string& text, const std::string& file) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& error) {
    return base::invalid_argument(file + ":" + std::to_string(error.mark.line + 1) + ":" +
                                  std::to_string(error.mark.column + 1) + ": not valid YAML: " + error.msg);
  }
  Config config;
  if (!root || root.IsNull()) return config;
  Reader reader(file);
  SD_RETURN_IF_ERROR(reader.check_keys(root, {"backends", "artifacts", "lost_after"}, "the config"));
  if (const YAML::Node backends = root["backends"]) {
    if (!backends.IsSequence()) return reader.error(backends, "'backends' must be a list");
    for (const YAML::Node& node : backends) {
      SD_ASSIGN_OR_RETURN(BackendConfig backend, reader.backend(node));
      if (config.find(backend.name) != nullptr) {
        return reader.error(node, "two backends are named '" + backend.name + "': names must be unique");
      }
      config.backends.push_back(std::move(backend));
    }
  }
  if (const YAML::Node store = root["artifacts"]) {
    SD_ASSIGN_OR_RETURN(config.artifacts, reader.store(store));
  }
  if (const YAML::Node lost = root["lost_after"]) {
    std::string value = lost.as<std::string>();
    int seconds = 0;
    char unit = 's';
    if (std::sscanf(value.c_str(), "%d%c", &seconds, &unit) < 1 || seconds <= 0 || (unit != 's' && unit != 'm')) {
      return reader.error(lost, "'lost_after' is a duration like 30s or 2m, not '" + value + "'");
    }
    config.lost_after_seconds = unit == 'm' ? seconds * 60 : seconds;
  }
  return config;
}

Result<Config> load_config(const std::string& path) {
  if (!base::file_exists(path)) return Config{};
  SD_ASSIGN_OR_RETURN(std::string text, base::read_file(path));
  return parse_config(text, path);
}

std::string config_to_yaml(const Config& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  if (!config.backends.empty()) {
    out << YAML::Key << "backends" << YAML::Value << YAML::BeginSeq;
    for (const BackendConfig& backend : config.backends) {
      out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << backend.name << YAML::Key << "type"
          << YAML::Value << backend_type_name(backend.type);
      if (!backend.dir.empty()) out << YAML::Key << "dir" << YAML::Value << backend.dir;
      if (backend.type == BackendConfig::Type::kSsh) {
        out << YAML::Key << "hosts" << YAML::Value << YAML::BeginSeq;
        for (const SshHostConfig& host : backend.hosts) {
          out << YAML::BeginMap << YAML::Key << "host" << YAML::Value << host.login.host;
          emit_login(out, host.login, {});
          if (host.price > 0) out << YAML::Key << "price" << YAML::Value << host.price;
          if (host.resources) {
            const MachineResources& machine = *host.resources;
            out << YAML::Key << "resources" << YAML::Value << YAML::BeginMap << YAML::Key << "cpus" << YAML::Value
                << machine.cpus << YAML::Key << "memory" << YAML::Value << size_text(machine.memory_bytes)
                << YAML::Key << "shm" << YAML::Value << size_text(machine.shm_bytes);
            out << YAML::Key << "gpus" << YAML::Value << YAML::BeginSeq;
            for (const GpuInfo& gpu : machine.gpus) {
              out << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << gpu.name << YAML::Key
                  << "memory" << YAML::Value << size_text(gpu.memory_bytes) << YAML::EndMap;
            }
            out << YAML::EndSeq << YAML::EndMap;
          }
          out << YAML::EndMap;
        }
        out << YAML::EndSeq;
      } else {
        out << YAML::Key << "login" << YAML::Value
            << (backend.local_login ? std::string("local") : backend.login.display());
        if (!backend.local_login) {
          if (!backend.login.identity_file.empty()) {
            out << YAML::Key << "identity_file" << YAML::Value << backend.login.identity_file;
          }
          if (!backend.login.jump_host.empty()) out << YAML::Key << "jump_host" << YAML::Value << backend.login.jump_host;
        }
        if (!backend.account.empty()) out << YAML::Key << "account" << YAML::Value << backend.account;
        if (!backend.qos.empty()) out << YAML::Key << "qos" << YAML::Value << backend.qos;
        if (!backend.slurm_conf.empty()) out << YAML::Key << "slurm_conf" << YAML::Value << backend.slurm_conf;
        out << YAML::Key << "partitions" << YAML::Value << YAML::BeginSeq;
        for (const SlurmPartitionConfig& partition : backend.partitions) {
          out << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << partition.name << YAML::Key
              << "cpus" << YAML::Value << partition.cpus << YAML::Key << "memory" << YAML::Value
              << size_text(partition.memory_bytes) << YAML::Key << "gpus" << YAML::Value << partition.gpus;
          if (!partition.gpu_name.empty()) out << YAML::Key << "gpu_name" << YAML::Value << partition.gpu_name;
          if (partition.gpu_memory_bytes > 0) {
            out << YAML::Key << "gpu_memory" << YAML::Value << size_text(partition.gpu_memory_bytes);
          }
          if (partition.price > 0) out << YAML::Key << "price" << YAML::Value << partition.price;
          out << YAML::EndMap;
        }
        out << YAML::EndSeq;
      }
      out << YAML::EndMap;
    }
    out << YAML::EndSeq;
  }
  if (config.artifacts) {
    const S3StoreConfig& s3 = *config.artifacts;
    out << YAML::Key << "artifacts" << YAML::Value << YAML::BeginMap << YAML::Key << "type" << YAML::Value << "s3"
        << YAML::Key << "endpoint" << YAML::Value << s3.endpoint << YAML::Key << "region" << YAML::Value << s3.region
        << YAML::Key << "bucket" << YAML::Value << s3.bucket;
    if (!s3.prefix.empty()) out << YAML::Key << "prefix" << YAML::Value << s3.prefix;
    out << YAML::Key << "addressing" << YAML::Value << (s3.path_style ? "path" : "virtual");
    if (s3.credentials_file.empty()) {
      out << YAML::Key << "credentials" << YAML::Value << "env";
    } else {
      out << YAML::Key << "credentials_file" << YAML::Value << s3.credentials_file;
      if (!s3.profile.empty()) out << YAML::Key << "profile" << YAML::Value << s3.profile;
    }
    out << YAML::EndMap;
  }
  if (config.lost_after_seconds != 60) {
    out << YAML::Key << "lost_after" << YAML::Value << std::to_string(config.lost_after_seconds) + "s";
  }
  out << YAML::EndMap;
  return std::string("# sdstack's engines; edit by hand or with `sdstack config`.\n") + out.c_str() + "\n";
}

Status save_config(const Config& config, const std::string& path) {
  std::error_code ignored;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ignored);
  SD_RETURN_IF_ERROR(base::write_file_atomic(path, config_to_yaml(config)));
  std::filesystem::permissions(path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write,
                               ignored);
  return Status::ok();
}

std::string machine_to_json(const MachineResources& machine) {
  nlohmann::json gpus = nlohmann::json::array();
  for (const GpuInfo& gpu : machine.gpus) gpus.push_back({{"name", gpu.name}, {"memory_bytes", gpu.memory_bytes}});
  return nlohmann::json{{"cpus", machine.cpus},
                        {"memory_bytes", machine.memory_bytes},
                        {"shm_bytes", machine.shm_bytes},
                        {"gpus", gpus}}
      .dump();
}

Result<MachineResources> machine_from_json(const std::string& text) {
  try {
    nlohmann::json json = nlohmann::json::parse(text);
    MachineResources machine;
    machine.cpus = json.at("cpus");
    machine.memory_bytes = json.at("memory_bytes");
    machine.shm_bytes = json.at("shm_bytes");
    for (const auto& gpu : json.at("gpus")) machine.gpus.push_back({gpu.at("name"), gpu.at("memory_bytes")});
    return machine;
  } catch (const nlohmann::json::exception& error) {
    return base::data_loss(std::string("not a machine description sdstack's agent printed: ") + error.what());
  }
}

}  // namespace sdstack::flow
