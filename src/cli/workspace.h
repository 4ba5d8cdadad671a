// What the runner's commands share: the current project, sdstack's store, run lookup, log printing.
#pragma once

#include <memory>
#include <string>

#include "base/status.h"
#include "flow/artifact_store.h"
#include "flow/local_run.h"
#include "flow/project.h"
#include "flow/run_log.h"
#include "flow/run_store.h"

namespace sdstack::cli {

struct Workspace {
  flow::Project project;
  flow::StoreLayout layout;
  std::unique_ptr<flow::RunStore> store;
  std::unique_ptr<flow::ArtifactStore> artifacts;
};

// The project the current directory is in and sdstack's store (created on first use). With
// `require_init`, a project `sdstack init` has not recorded is an error saying to run it.
base::Result<Workspace> open_workspace(bool require_init = true);

// A run by name, or the run a tag names when written ":TAG".
base::Result<flow::RunRecord> find_run(Workspace& workspace, const std::string& reference);

// The path of the running sdstack program.
std::string self_executable();

// A log line as `run` and `logs` print it: the job's stdout to stdout, its stderr and sdstack's
// own lines (which read "sdstack: ...") to stderr; with `timestamps`, each line starts with its time.
void print_log_line(const flow::LogLine& line, bool timestamps);

// "3s ago", "5 min ago", "2 h ago", "2026-11-20".
std::string time_ago(int64_t unix_ms);

}  // namespace sdstack::cli
