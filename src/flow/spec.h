// Workflow specs: the model of .sdstack/.dstack workflow files, their parsing and validation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace sdstack::flow {

// Where something was written, for messages: "file:line:column", both 1-based.
struct SourceLocation {
  std::string file;  // relative to the repo root, as the user would type it
  int line = 0;
  int column = 0;
  std::string to_string() const;
};

enum class Provider { kBash, kCode, kLab, kNotebook, kDocker };
// "bash", "code", "lab", "notebook", "docker".
std::string_view provider_name(Provider provider);

// `- workflow: X` (the artifacts of X's latest successful run) or `- tag: T` (those of the tagged run).
struct Dep {
  enum class Kind { kWorkflow, kTag };
  Kind kind = Kind::kWorkflow;
  std::string name;  // the workflow name or the tag
  SourceLocation where;
};

struct Artifact {
  std::string path;    // relative to the run's working directory, as written ("./models")
  bool mount = false;  // dstack's `mount: true`: kept live during the run rather than saved at the end
};

struct EnvVar {
  std::string name;
  std::optional<std::string> value;  // nullopt for a bare `K`: the value comes from the caller's environment
};

struct GpuSpec {
  int count = 0;             // 0: no GPU asked for
  std::string name;          // "" : any model ("A100", "RTX 4090", ...)
  int64_t memory_bytes = 0;  // 0: any amount
};

// What a run needs from the machine; 0 / empty means "not asked for".
struct Resources {
  int cpu = 0;
  int64_t memory_bytes = 0;
  GpuSpec gpu;
  int64_t shm_size_bytes = 0;
  bool interruptible = false;
};

struct WorkflowSpec {
  std::string name;
  std::string help;
  Provider provider = Provider::kBash;  // `provider:` may be left out for bash
  std::vector<std::string> commands;   // kept literally: `${{ run.args }}` is filled in at run time
  std::vector<std::string> setup;
  std::vector<Dep> deps;
  std::vector<Artifact> artifacts;
  Resources resources;
  std::vector<EnvVar> env;
  std::string working_dir;  // "" : the repo root
  int port_count = 0;       // `ports: N` (dstack 2023): N free ports to allocate
  std::vector<int> ports;   // `ports: [8080, ...]`: these ports
  std::string image;        // the docker provider's image
  SourceLocation where;     // the workflow's `name:` value
};

// "16GB" -> 16e9, "512MB", "1.5GiB", "64 KiB", "100B". Units are case-insensitive: B, KB, MB, GB,
// TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024); a number without a unit is refused.
// The error message is "bad size 'X': ..." and names the valid units.
base::Result<int64_t> parse_size(std::string_view text);

// Parses one workflow file's text; `file` is the name used in messages. Checks everything that one
// file can show (keys, types, sizes, providers) but not duplicate names or deps across files.
// Errors read "file:line:column: what (hint)"; the first one found is returned.
base::Result<std::vector<WorkflowSpec>> parse_workflows(std::string_view yaml, const std::string& file);

// Checks a whole set of workflows: duplicate names (naming both places), deps on unknown
// workflows and cyclic deps ("a -> b -> a").
base::Status validate_workflows(const std::vector<WorkflowSpec>& workflows);

// Reads every workflow file under `repo_root`: .sdstack/workflows/*.yaml (and .yml), then dstack's
// .dstack/workflows/*.yaml and .dstack/workflows.yaml, each folder in name order; messages name the
// files relative to `repo_root`. The workflows come back in that order, validated. No files at all
// is not an error: the result is empty.
base::Result<std::vector<WorkflowSpec>> load_workflows(const std::string& repo_root);

// The workflows that `name` needs run first, transitively through `- workflow:` deps, each after its
// own deps, ending with `name` itself. NotFound (with a "did you mean") for an unknown name.
base::Result<std::vector<std::string>> dependency_order(const std::vector<WorkflowSpec>& workflows,
                                                        const std::string& name);

}  // namespace sdstack::flow
