// The runner's history in SQLite: runs and their states, tags naming runs, repos and their secrets.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace sdstack::flow {

// A run moves submitted -> running [-> uploading] -> done, or ends early as failed (the job failed),
// stopped (the user asked) or aborted (sdstack lost it: the supervisor died, the machine went away).
enum class RunStatus { kSubmitted, kRunning, kUploading, kDone, kFailed, kStopped, kAborted };

// "submitted", "running", "uploading", "done", "failed", "stopped", "aborted".
std::string_view run_status_name(RunStatus status);
// The inverse of run_status_name; an unknown name is InvalidArgument, naming the valid ones.
base::Result<RunStatus> parse_run_status(std::string_view text);
// True for the end states: done, failed, stopped, aborted.
bool is_finished(RunStatus status);

struct RunRecord {
  std::string name;                         // "wet-mangust-1": allocated by create_run
  std::string repo;                         // the repo's id: its git root, absolute
  std::string workflow;                     // "" for a run made by `tags add TAG -a PATH` (an upload)
  std::string provider;                     // "bash", "code", ...
  std::vector<std::string> args;            // the run's arguments as the user gave them
  std::vector<std::string> artifact_paths;  // the declared artifact paths
  RunStatus status = RunStatus::kSubmitted;
  std::optional<int> exit_code;
  std::string reason;                       // why it ended: "exit code 2", "stopped by the user", ...
  int64_t submitted_ms = 0, started_ms = 0, finished_ms = 0;  // Unix time in ms; 0: not yet
  int64_t supervisor_pid = 0;               // the local process that owns the run while it is active
  std::string host = "local";
  std::string repo_head;                    // the commit the run was made from ("" if none)
  std::string app_url;                      // the IDE's URL (code/lab/notebook providers) once known
  std::vector<std::string> tags;            // filled in by get_run / list_runs, by name
};

struct RepoRecord {
  std::string root;        // the git root, absolute: the id runs, tags and secrets are kept under
  std::string remote_url;  // "" when the repo has no remote
  std::string head;        // the commit checked out at `init`
  int64_t initialized_ms = 0;
};

class RunDatabase;  // the SQLite connection under a RunStore (run_store.cc)

// One database file of run records. Many sdstack processes may open the same file at once: it uses
// SQLite's WAL journal, every write is one transaction, and a writer waits up to 30 s for another.
// One RunStore object is used by one thread at a time. Repos are ids only: runs, tags and secrets of
// a repo may be stored before (or without) put_repo.
class RunStore {
 public:
  // Opens the database at `path`, creating the file (mode 0600: it holds secrets) and its schema when
  // missing; the folder must exist. Refuses a file whose schema is newer than this sdstack knows,
  // and a file that is not a database. Errors name `path`.
  static base::Result<std::unique_ptr<RunStore>> open(const std::string& path);
  ~RunStore();
  RunStore(const RunStore&) = delete;
  RunStore& operator=(const RunStore&) = delete;

  // Inserts `repo`, or replaces the record with the same root.
  base::Status put_repo(const RepoRecord& repo);
  // The record put under `root`, or nullopt.
  base::Result<std::optional<RepoRecord>> find_repo(const std::string& root);

  // Stores `run` under a fresh name "adjective-animal-N": the words drawn at random, N one more than
  // the number of runs ever given that adjective-animal in this file (deleted ones and other repos'
  // included), so a name is never reused. The status becomes submitted, submitted_ms now, and
  // `run.name` and `run.tags` are ignored; the other fields are stored as given. Allocating the name
  // and inserting the row are one transaction, so two processes never get the same name. Arguments
  // and artifact paths must be valid UTF-8. Returns the record as stored.
  base::Result<RunRecord> create_run(RunRecord run);
  // The run `name` of `repo`, with its tags. NotFound: "no run 'wet-mangust-7' in this repo (did you
  // mean 'wet-mangust-1'?)", the hint only when one of the repo's runs is close.
  base::Result<RunRecord> get_run(const std::string& repo, const std::string& name);
  // The repo's runs with their tags, newest first (by submitted_ms, then by creation); `workflow` ""
  // lists every workflow's runs (uploads included).
  base::Result<std::vector<RunRecord>> list_runs(const std::string& repo, const std::string& workflow = "");
  // Moves the run to `to` if its status is one of `from` and returns true; otherwise changes nothing
  // and returns false. Sets started_ms to now when `to` is running, finished_ms to now when `to` is
  // finished, exit_code when given and reason when not "". One transaction, so of two processes
  // making the same move only one sees true. NotFound (as get_run) for an unknown run.
  base::Result<bool> transition(const std::string& repo, const std::string& name,
                                std::initializer_list<RunStatus> from, RunStatus to,
                                std::optional<int> exit_code = std::nullopt, const std::string& reason = "");
  // Records the process that supervises the run. NotFound as get_run.
  base::Status set_supervisor_pid(const std::string& repo, const std::string& name, int64_t pid);
  // Records the URL where the run's IDE listens. NotFound as get_run.
  base::Status set_app_url(const std::string& repo, const std::string& name, const std::string& url);
  // The run of `workflow` that finished last (by finished_ms, then by creation) with status done, or
  // nullopt when none has.
  base::Result<std::optional<RunRecord>> latest_successful(const std::string& repo, const std::string& workflow);
  // Deletes the run and the tags naming it. NotFound as get_run.
  base::Status delete_run(const std::string& repo, const std::string& name);

  // Makes `tag` name the run `run_name`. A tag is one or more of [A-Za-z0-9._-] (InvalidArgument
  // otherwise). InvalidArgument when the tag exists: "tag 'sd15' already names run 'wet-mangust-1':
  // delete it first with `sdstack tags delete sd15`"; NotFound (as get_run) for an unknown run.
  base::Status add_tag(const std::string& repo, const std::string& tag, const std::string& run_name);
  // Removes the tag (not its run). NotFound: "no tag 'sd16' in this repo (did you mean 'sd15'?)".
  base::Status delete_tag(const std::string& repo, const std::string& tag);
  // The name of the run `tag` names, or nullopt for an unknown tag.
  base::Result<std::optional<std::string>> tagged_run(const std::string& repo, const std::string& tag);
  // The repo's tags as (tag, run name), by tag.
  base::Result<std::vector<std::pair<std::string, std::string>>> list_tags(const std::string& repo);

  // Secrets reach runs as environment variables, so a name is [A-Za-z_][A-Za-z0-9_]* (InvalidArgument
  // otherwise). Inserts or replaces the repo's secret `name`.
  base::Status put_secret(const std::string& repo, const std::string& name, const std::string& value);
  // Removes the secret. NotFound: "no secret 'HF_TOKN' in this repo (did you mean 'HF_TOKEN'?)".
  base::Status delete_secret(const std::string& repo, const std::string& name);
  // The repo's secrets, name -> value.
  base::Result<std::map<std::string, std::string>> secrets(const std::string& repo);

 private:
  explicit RunStore(std::unique_ptr<RunDatabase> db);

  std::unique_ptr<RunDatabase> db_;
  std::mt19937_64 rng_;  // draws run names
};

}  // namespace sdstack::flow
