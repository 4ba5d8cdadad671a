// Parsing one workflow file: YAML nodes to WorkflowSpec, every error at its line and column.
#include "flow/spec.h"

#include <charconv>
#include <cmath>
#include <set>

#include <yaml-cpp/yaml.h>

#include "base/strings.h"

namespace sdstack::flow {

using base::Result;
using base::Status;

std::string SourceLocation::to_string() const {
  return file + ":" + std::to_string(line) + ":" + std::to_string(column);
}

namespace {

const std::vector<std::string> kProviderNames = {"bash", "code", "lab", "notebook", "docker"};
const std::vector<std::string> kTopKeys = {"workflows"};
const std::vector<std::string> kWorkflowKeys = {
    "name", "help",      "provider", "commands",    "setup", "deps", "artifacts",
    "resources", "env",  "working_dir", "ports",    "image"};
const std::vector<std::string> kDepKeys = {"workflow", "tag"};
const std::vector<std::string> kArtifactKeys = {"path", "mount"};
const std::vector<std::string> kResourceKeys = {"cpu", "memory", "gpu", "shm_size", "interruptible"};
const std::vector<std::string> kGpuKeys = {"count", "name", "memory"};
const char kSizeUnits[] = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB";

// "a list", "a map", "nothing", "'text'": how a node reads in "must be X, not Y" messages.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Scalar: return "'" + node.Scalar() + "'";
    default: return "nothing";
  }
}

bool parse_int(const std::string& text, int64_t* value) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *value);
  return ec == std::errc() && ptr == end && !text.empty();
}

// Turns the nodes of one file into specs. Each method returns the first error it meets.
class FileParser {
 public:
  explicit FileParser(std::string file) : file_(std::move(file)) {}

  SourceLocation where(const YAML::Node& node) const {
    const YAML::Mark mark = node.Mark();
    return SourceLocation{file_, mark.line + 1, mark.column + 1};
  }
  Status error_at(const YAML::Node& node, const std::string& message) const {
    return base::invalid_argument(where(node).to_string() + ": " + message);
  }

  // Unknown, repeated or empty keys of a map, with a "did you mean" or the list of valid keys. An
  // empty value is reported at its key: YAML marks it where the next line starts.
  Status check_keys(const YAML::Node& map, const std::vector<std::string>& allowed, bool allow_empty = false) const {
    std::set<std::string> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first;
      if (!key.IsScalar()) return error_at(key, "a key must be a plain word, not " + describe(key));
      const std::string& name = key.Scalar();
      bool known = false;
      for (const std::string& candidate : allowed) known = known || candidate == name;
      if (!known) {
        std::string hint = base::did_you_mean(name, allowed);
        if (hint.empty()) hint = " (valid keys: " + base::join(allowed, ", ") + ")";
        return error_at(key, "unknown key '" + name + "'" + hint);
      }
      if (!seen.insert(name).second) return error_at(key, "key '" + name + "' is given twice");
      if (!allow_empty && it->second.IsNull()) return error_at(key, "'" + name + "' has no value");
    }
    return Status::ok();
  }

  Result<std::string> string_value(const std::string& key, const YAML::Node& value) const {
    if (!value.IsScalar()) return error_at(value, "'" + key + "' must be a string, not " + describe(value));
    return value.Scalar();
  }

  Result<int64_t> int_value(const std::string& key, const YAML::Node& value, int64_t min, int64_t max) const {
    int64_t number = 0;
    if (!value.IsScalar() || !parse_int(value.Scalar(), &number)) {
      return error_at(value, "'" + key + "' must be a whole number, not " + describe(value));
    }
    if (number < min || number > max) {
      return error_at(value, "'" + key + "' must be between " + std::to_string(min) + " and " +
                                 std::to_string(max) + ", not " + value.Scalar());
    }
    return number;
  }

  Result<bool> bool_value(const std::string& key, const YAML::Node& value) const {
    bool flag = false;
    if (!value.IsScalar() || !YAML::convert<bool>::decode(value, flag)) {
      return error_at(value, "'" + key + "' must be true or false, not " + describe(value));
    }
    return flag;
  }

  Result<int64_t> size_value(const std::string& key, const YAML::Node& value) const {
    if (!value.IsScalar()) return error_at(value, "'" + key + "' must be a size like 16GB, not " + describe(value));
    Result<int64_t> bytes = parse_size(value.Scalar());
    if (!bytes.is_ok()) return error_at(value, "'" + key + "': " + bytes.status().message());
    return bytes;
  }

  // A list of strings. A map item is almost always a command holding ": " that YAML read as a key.
  Result<std::vector<std::string>> string_list(const std::string& key, const YAML::Node& value) const {
    if (!value.IsSequence()) {
      return error_at(value, "'" + key + "' must be a list of strings, not " + describe(value));
    }
    std::vector<std::string> items;
    for (const YAML::Node& item : value) {
      if (item.IsScalar()) {
        items.push_back(item.Scalar());
        continue;
      }
      std::string hint = item.IsMap() ? " (quote an item that holds ': ')" : "";
      return error_at(item, "'" + key + "' must be a list of strings; this item is " + describe(item) + hint);
    }
    return items;
  }

  Result<std::vector<WorkflowSpec>> parse_file(const YAML::Node& root) const {
    std::vector<WorkflowSpec> workflows;
    if (root.IsNull()) return workflows;  // an empty file
    if (!root.IsMap()) return error_at(root, "a workflow file must be a map with 'workflows:', not " + describe(root));
    SD_RETURN_IF_ERROR(check_keys(root, kTopKeys, /*allow_empty=*/true));
    const YAML::Node list = root["workflows"];
    if (!list) return error_at(root, "missing 'workflows:' (a list of workflows)");
    if (list.IsNull()) return workflows;
    if (!list.IsSequence()) return error_at(list, "'workflows' must be a list of workflows, not " + describe(list));
    for (const YAML::Node& item : list) {
      SD_ASSIGN_OR_RETURN(WorkflowSpec workflow, parse_workflow(item));
      workflows.push_back(std::move(workflow));
    }
    return workflows;
  }

 private:
  Result<WorkflowSpec> parse_workflow(const YAML::Node& node) const {
    if (!node.IsMap()) return error_at(node, "a workflow must be a map with 'name:', not " + describe(node));
    SD_RETURN_IF_ERROR(check_keys(node, kWorkflowKeys));
    WorkflowSpec workflow;
    const YAML::Node name = node["name"];
    if (!name) return error_at(node, "workflow without a 'name'");
    SD_ASSIGN_OR_RETURN(workflow.name, string_value("name", name));
    SD_RETURN_IF_ERROR(check_name(name, workflow.name));
    workflow.where = where(name);
    for (auto it = node.begin(); it != node.end(); ++it) {
      SD_RETURN_IF_ERROR(parse_field(it->first.Scalar(), it->second, &workflow));
    }
    if (workflow.provider == Provider::kDocker && workflow.image.empty()) {
      return error_at(node["provider"], "provider 'docker' needs an 'image'");
    }
    if (workflow.provider != Provider::kDocker && !workflow.image.empty()) {
      return error_at(node["image"], "'image' is only for provider 'docker', not '" +
                                         std::string(provider_name(workflow.provider)) + "'");
    }
    return workflow;
  }

  Status check_name(const YAML::Node& node, const std::string& name) const {
    if (name.empty()) return error_at(node, "a workflow name must not be empty");
    for (char c : name) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                c == '_' || c == '.';
      if (!ok) return error_at(node, "workflow name '" + name + "' may hold only letters, digits, '-', '_' and '.'");
    }
    return Status::ok();
  }

  Status parse_field(const std::string& key, const YAML::Node& value, WorkflowSpec* workflow) const {
    if (key == "name") return Status::ok();  // done first, for its location
    if (key == "help") return assign(string_value(key, value), &workflow->help);
    if (key == "working_dir") return assign(string_value(key, value), &workflow->working_dir);
    if (key == "image") return assign(string_value(key, value), &workflow->image);
    if (key == "commands") return assign(string_list(key, value), &workflow->commands);
    if (key == "setup") return assign(string_list(key, value), &workflow->setup);
    if (key == "provider") {
      SD_ASSIGN_OR_RETURN(std::string provider, string_value(key, value));
      for (size_t i = 0; i < kProviderNames.size(); ++i) {
        if (kProviderNames[i] == provider) {
          workflow->provider = static_cast<Provider>(i);
          return Status::ok();
        }
      }
      std::string hint = base::did_you_mean(provider, kProviderNames);
      if (hint.empty()) hint = " (valid providers: " + base::join(kProviderNames, ", ") + ")";
      return error_at(value, "unknown provider '" + provider + "'" + hint);
    }
    if (key == "deps") return parse_deps(value, &workflow->deps);
    if (key == "artifacts") return parse_artifacts(value, &workflow->artifacts);
    if (key == "resources") return parse_resources(value, &workflow->resources);
    if (key == "env") return parse_env(value, &workflow->env);
    if (key == "ports") return parse_ports(value, workflow);
    return base::internal_error("workflow key '" + key + "' is allowed but not parsed");
  }

  template <typename T>
  static Status assign(Result<T> result, T* out) {
    if (!result.is_ok()) return result.status();
    *out = std::move(result).value();
    return Status::ok();
  }

  Status parse_deps(const YAML::Node& value, std::vector<Dep>* deps) const {
    if (!value.IsSequence()) {
      return error_at(value, "'deps' must be a list of '- workflow: NAME' or '- tag: TAG', not " + describe(value));
    }
    for (const YAML::Node& item : value) {
      if (!item.IsMap() || item.size() != 1) {
        return error_at(item, "a dep must be '- workflow: NAME' or '- tag: TAG', not " + describe(item));
      }
      SD_RETURN_IF_ERROR(check_keys(item, kDepKeys));
      const std::string kind = item.begin()->first.Scalar();
      const YAML::Node target = item.begin()->second;
      Dep dep;
      dep.kind = kind == "tag" ? Dep::Kind::kTag : Dep::Kind::kWorkflow;
      SD_ASSIGN_OR_RETURN(dep.name, string_value(kind, target));
      if (dep.name.empty()) return error_at(target, "'" + kind + "' must not be empty");
      dep.where = where(target);
      deps->push_back(std::move(dep));
    }
    return Status::ok();
  }

  // `- path: P` with an optional `mount: true`; a bare `- P` is taken too.
  Status parse_artifacts(const YAML::Node& value, std::vector<Artifact>* artifacts) const {
    if (!value.IsSequence()) {
      return error_at(value, "'artifacts' must be a list of '- path: PATH', not " + describe(value));
    }
    for (const YAML::Node& item : value) {
      Artifact artifact;
      if (item.IsScalar()) {
        artifact.path = item.Scalar();
      } else if (item.IsMap()) {
        SD_RETURN_IF_ERROR(check_keys(item, kArtifactKeys));
        if (!item["path"]) return error_at(item, "artifact without a 'path'");
        SD_ASSIGN_OR_RETURN(artifact.path, string_value("path", item["path"]));
        if (item["mount"]) {
          SD_ASSIGN_OR_RETURN(artifact.mount, bool_value("mount", item["mount"]));
        }
      } else {
        return error_at(item, "an artifact must be '- path: PATH', not " + describe(item));
      }
      if (artifact.path.empty()) return error_at(item, "an artifact path must not be empty");
      artifacts->push_back(std::move(artifact));
    }
    return Status::ok();
  }

  Status parse_resources(const YAML::Node& value, Resources* resources) const {
    if (!value.IsMap()) return error_at(value, "'resources' must be a map (cpu, memory, gpu, ...), not " + describe(value));
    SD_RETURN_IF_ERROR(check_keys(value, kResourceKeys));
    for (auto it = value.begin(); it != value.end(); ++it) {
      const std::string key = it->first.Scalar();
      const YAML::Node field = it->second;
      if (key == "cpu") {
        SD_ASSIGN_OR_RETURN(int64_t cpu, int_value(key, field, 1, 4096));
        resources->cpu = static_cast<int>(cpu);
      } else if (key == "memory") {
        SD_ASSIGN_OR_RETURN(resources->memory_bytes, size_value(key, field));
      } else if (key == "shm_size") {
        SD_ASSIGN_OR_RETURN(resources->shm_size_bytes, size_value(key, field));
      } else if (key == "interruptible") {
        SD_ASSIGN_OR_RETURN(resources->interruptible, bool_value(key, field));
      } else {
        SD_RETURN_IF_ERROR(parse_gpu(field, &resources->gpu));
      }
    }
    return Status::ok();
  }

  // `gpu: 1` or `gpu: {count: 1, name: A100, memory: 40GB}`; a map without `count` asks for one.
  Status parse_gpu(const YAML::Node& value, GpuSpec* gpu) const {
    if (value.IsScalar()) {
      SD_ASSIGN_OR_RETURN(int64_t count, int_value("gpu", value, 0, 64));
      gpu->count = static_cast<int>(count);
      return Status::ok();
    }
    if (!value.IsMap()) return error_at(value, "'gpu' must be a count or a map (count, name, memory), not " + describe(value));
    SD_RETURN_IF_ERROR(check_keys(value, kGpuKeys));
    gpu->count = 1;
    if (value["count"]) {
      SD_ASSIGN_OR_RETURN(int64_t count, int_value("count", value["count"], 0, 64));
      gpu->count = static_cast<int>(count);
    }
    if (value["name"]) {
      SD_ASSIGN_OR_RETURN(gpu->name, string_value("name", value["name"]));
    }
    if (value["memory"]) {
      SD_ASSIGN_OR_RETURN(gpu->memory_bytes, size_value("memory", value["memory"]));
    }
    return Status::ok();
  }

  Status parse_env(const YAML::Node& value, std::vector<EnvVar>* env) const {
    SD_ASSIGN_OR_RETURN(std::vector<std::string> items, string_list("env", value));
    size_t index = 0;
    for (const YAML::Node& item : value) {
      const std::string& text = items[index++];
      const size_t equals = text.find('=');
      EnvVar var;
      var.name = text.substr(0, equals);
      if (equals != std::string::npos) var.value = text.substr(equals + 1);
      bool ok = !var.name.empty() && !(var.name[0] >= '0' && var.name[0] <= '9');
      for (char c : var.name) {
        ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_');
      }
      if (!ok) return error_at(item, "bad env entry '" + text + "': expected NAME=VALUE or NAME, NAME like MY_VAR");
      env->push_back(std::move(var));
    }
    return Status::ok();
  }

  Status parse_ports(const YAML::Node& value, WorkflowSpec* workflow) const {
    if (value.IsScalar()) {
      SD_ASSIGN_OR_RETURN(int64_t count, int_value("ports", value, 0, 100));
      workflow->port_count = static_cast<int>(count);
      return Status::ok();
    }
    if (!value.IsSequence()) return error_at(value, "'ports' must be a count or a list of port numbers, not " + describe(value));
    for (const YAML::Node& item : value) {
      SD_ASSIGN_OR_RETURN(int64_t port, int_value("ports", item, 1, 65535));
      workflow->ports.push_back(static_cast<int>(port));
    }
    return Status::ok();
  }

  std::string file_;
};

}  // namespace

std::string_view provider_name(Provider provider) { return kProviderNames[static_cast<size_t>(provider)]; }

Result<int64_t> parse_size(std::string_view text) {
  const std::string quoted = "bad size '" + std::string(text) + "'";
  const std::string expected = ": expected a number and a unit (" + std::string(kSizeUnits) + "), like 16GB";
  size_t digits = 0;
  while (digits < text.size() && ((text[digits] >= '0' && text[digits] <= '9') || text[digits] == '.')) ++digits;
  double number = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + digits, number);
  if (digits == 0 || ec != std::errc() || ptr != text.data() + digits) return base::invalid_argument(quoted + expected);
  std::string unit;
  for (char c : text.substr(digits)) {
    if (c != ' ') unit += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
  }
  struct Unit { const char* name; double bytes; };
  static const Unit kUnits[] = {{"B", 1.0},        {"KB", 1e3},     {"MB", 1e6},     {"GB", 1e9},
                                {"TB", 1e12},      {"KIB", 0x1p10}, {"MIB", 0x1p20}, {"GIB", 0x1p30},
                                {"TIB", 0x1p40}};
  for (const Unit& candidate : kUnits) {
    if (unit != candidate.name) continue;
    const double bytes = std::round(number * candidate.bytes);
    if (bytes > 0x1p62) return base::invalid_argument(quoted + ": too large");
    return static_cast<int64_t>(bytes);
  }
  if (unit.empty()) return base::invalid_argument(quoted + ": a unit is needed (" + kSizeUnits + "), like 16GB");
  return base::invalid_argument(quoted + ": unknown unit; valid units are " + kSizeUnits);
}

Result<std::vector<WorkflowSpec>> parse_workflows(std::string_view yaml, const std::string& file) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    std::string position = file;
    if (!e.mark.is_null()) position += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
    return base::invalid_argument(position + ": YAML syntax error: " + e.msg);
  }
  return FileParser(file).parse_file(root);
}

}  // namespace sdstack::flow
