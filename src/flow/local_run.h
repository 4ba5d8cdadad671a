// Local runs: submitting a workflow run (checks, snapshot, deps, record) and the supervisor process
// that runs it, keeps its log and record, and saves its artifacts.
//
// A run's life: `sdstack run` submits it (status submitted) and starts a supervisor in a session of
// its own (`sdstack __supervise`), so a detached run outlives the command; an attached `sdstack run`
// just follows the run's log. The supervisor moves it to running, runs the job, then uploading
// while it saves the artifacts, then done / failed / stopped; an abort skips the artifacts.
// SIGTERM or SIGINT to the supervisor is a graceful stop, SIGUSR1 an abort.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "flow/artifact_store.h"
#include "flow/machine.h"
#include "flow/project.h"
#include "flow/run_log.h"
#include "flow/run_store.h"
#include "flow/spec.h"

namespace sdstack::flow {

// Where sdstack keeps its state: $SDSTACK_HOME, else ~/.sdstack.
//   runs.db                      run history, names, tags, secrets (SQLite)
//   artifacts/                   the artifact store (objects + one manifest per run)
//   runs/<project key>/<run>/    work/ (the run's working dir), home/, log, job.json
struct StoreLayout {
  std::string root;
  static StoreLayout from_environment();
  std::string database() const;
  std::string artifacts() const;
  std::string run_dir(const std::string& project_dir, const std::string& run) const;
};

// A project's short stable id for paths and artifact keys: "<folder name>-<8 hex of sha256(path)>".
std::string project_key(const std::string& project_dir);
// The key of a run's artifacts in the ArtifactStore.
std::string artifact_key(const std::string& project_dir, const std::string& run);

struct RunOptions {
  std::string workflow;
  std::vector<std::string> args;  // ${{ run.args }}
  std::vector<std::string> env;   // -e K=V (or a bare K: from the caller's environment)
  std::string tag;                // -t: tag the run at once
  ResourceOverrides overrides;
  bool sandbox = true;            // bubblewrap around the job
  int grace_seconds = 10;         // a graceful stop's SIGTERM → SIGKILL delay
  // --remote: on the cheapest offer of the config that fits (remote_run.h), of backend `backend`
  // when it is not ""; `retries` more offers are tried after infrastructure failures.
  bool remote = false;
  std::string backend;
  int retries = 0;
  int time_limit_seconds = 0;  // --time: remote runs are stopped past it (Slurm: sbatch --time); 0: none
};

// What the supervisor runs: written to the run's job.json at submission.
struct JobPlan {
  std::string run;
  std::string project_dir;
  std::string workflow;
  std::string provider;
  std::vector<std::string> argv;            // the job's command line
  std::vector<std::string> env;             // "K=V" added to the inherited environment (no secrets)
  std::vector<std::string> artifact_paths;
  std::string work_dir;                     // the job's cwd (the snapshot, or its working_dir)
  std::vector<std::string> writable_dirs;   // the snapshot's root and the run's HOME
  std::string home_dir, log_path;
  bool sandbox = true;
  int64_t shm_size_bytes = 0;
  int grace_seconds = 10;
  std::string app_url;   // the IDE's URL (code, lab, notebook)
  int app_port = 0;      // the port the IDE listens on, 127.0.0.1
  // Remote runs: the offers to try, in order (ids "backend/target"; empty for a local run), how
  // many retries after infrastructure failures, the resources asked for (Slurm's request) and the
  // deps' artifact keys the remote fetches from the S3 store itself.
  std::vector<std::string> offers;
  int retries = 0;
  int time_limit_seconds = 0;
  Resources resources;
  std::vector<std::string> s3_deps;
};

// Submits a run of `options.workflow`: checks the workflow exists, the resources this machine can
// give, the tools its provider needs and its deps (each a clear error naming what to run first);
// records the run (submitted), snapshots the project into its working dir, puts the deps'
// artifacts there and writes the plan. Nothing is left behind when it fails.
base::Result<JobPlan> submit_run(const Project& project, const std::vector<WorkflowSpec>& workflows,
                                 const RunOptions& options, const StoreLayout& layout, RunStore& store,
                                 ArtifactStore& artifacts);

// Starts the supervisor of a submitted run: `self_exe __supervise --project DIR --run NAME` in a
// new session (stdin /dev/null, its own output to the run dir's supervisor.log); returns its pid,
// also recorded as the run's supervisor_pid.
base::Result<pid_t> launch_supervisor(const JobPlan& plan, const std::string& self_exe, RunStore& store);

// The supervisor's body (in the supervisor process). Returns the process's exit status.
int supervise(const StoreLayout& layout, const std::string& project_dir, const std::string& run);

// Marks the project's active runs whose supervisor is gone (crashed, killed, machine rebooted) as
// failed, saying so in the record and the log. Called before listing or waiting on runs.
base::Status reap_lost_runs(const std::string& project_dir, const StoreLayout& layout, RunStore& store);

// Asks a run to stop: gracefully (SIGTERM: the job gets the grace period and its artifacts are
// saved) or, with `abort`, at once and without artifacts. A submitted run that has not started is
// stopped/aborted in its record. Error when the run has already finished.
base::Status request_stop(const RunRecord& run, bool abort, RunStore& store);

// A supervisor's way out when the run cannot go on: "failed: REASON" in the log (when there is one)
// and the record, from whatever active state it is in. Returns the supervisor's exit status (1).
int fail_run(RunStore& store, LogWriter* log, const std::string& project_dir, const std::string& run,
             const std::string& reason);

// Whether a process with this pid exists and is not a zombie.
bool process_alive(int64_t pid);

}  // namespace sdstack::flow
