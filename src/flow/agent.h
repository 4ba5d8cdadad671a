// sdstack's agent: the remote side of a remote run, run by the sdstack binary that the local
// supervisor ships to an SSH host or a Slurm cluster (`sdstack __agent ...`, not for users).
//
// A remote run's folder on the host, RUN_DIR (made and filled by the local supervisor):
//   job.json      the RemotePlan below
//   work/         the project snapshot and the deps' artifacts: the job's working dir
//   log           the job's log, in the local log's format (timestamp, out|err|sys, text)
//   agent.pid     the agent's pid (SSH hosts), written before the agent starts the job
//   store/        an artifact store holding the run's artifacts when it ends (unless S3 holds them)
//   result.json   written last, atomically: how the run ended
// The agent runs the job (no sandbox: the host or the Slurm job is the isolation), passing a
// SIGTERM on as a graceful stop and SIGUSR1 as an abort, as the local supervisor does.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "flow/config.h"

namespace sdstack::flow {

struct RemotePlan {
  std::string run;
  std::vector<std::string> argv;
  std::vector<std::string> env;            // "K=V", on top of the host's environment
  std::string work_dir = "work";           // relative to the run folder
  std::vector<std::string> artifact_paths;
  std::string artifact_key;
  int grace_seconds = 10;
  int time_limit_seconds = 0;              // past it the job is stopped gracefully and fails; 0: none
  std::vector<std::string> secret_names;   // their values come with the start request, never on disk
  std::optional<S3StoreConfig> s3;         // artifacts go there (and deps come from there)
  std::vector<std::string> s3_deps;        // artifact keys restored from S3 into the work dir first
};

std::string remote_plan_to_json(const RemotePlan& plan);
base::Result<RemotePlan> remote_plan_from_json(const std::string& text);

// What a remote run's start request carries on stdin (SSH) or in the job's environment (Slurm):
// the secrets' values and the S3 store's credentials.
struct AgentSecrets {
  std::map<std::string, std::string> env;
  std::string s3_access_key, s3_secret_key;
};
std::string agent_secrets_to_json(const AgentSecrets& secrets);
base::Result<AgentSecrets> agent_secrets_from_json(const std::string& text);

// How a remote run ended (result.json).
struct RemoteResult {
  std::string status;       // "done", "failed", "stopped", "aborted"
  int exit_code = 0;
  std::string reason;
  std::string artifacts;    // "store", "s3" or "none"
  std::vector<std::string> missing;
};
std::string remote_result_to_json(const RemoteResult& result);
base::Result<RemoteResult> remote_result_from_json(const std::string& text);

// One answer to `__agent poll`: the first line, then `log` bytes (whole lines only).
struct AgentPoll {
  enum class State { kStarting, kRunning, kFinished, kGone };
  State state = State::kStarting;
  std::optional<RemoteResult> result;
  int64_t log_size = 0;   // the offset to ask for next
  std::string log;        // new complete log lines
};
base::Result<AgentPoll> parse_agent_poll(const std::string& output);

// `sdstack __agent machine|start|run|poll|stop ...`; returns the process's exit status.
int agent_main(const std::vector<std::string>& args);

}  // namespace sdstack::flow
