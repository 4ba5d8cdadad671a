// Slurm's command line for remote runs: argv builders for sinfo/sbatch/squeue/scontrol/sacct/scancel
// and parsers for what they print. Pure functions (no process is started) except
// query_slurm_job_state, which runs the state queries through a caller-given runner; all are
// thread-safe. Checked against Slurm 22.05 (Debian 12), whose outputs the tests hold; the output
// formats asked for are the documented -o/-O fields, not the human-readable defaults.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "base/subprocess.h"

namespace sdstack::flow {

// ---- Partitions ----------------------------------------------------------------------------

// A partition as offers see it. A partition whose nodes differ (sinfo prints one line per node
// group) is described by its biggest node group (most GPUs, then CPUs, then memory): a job that fits
// that node can run there, and offers compare partitions by what one node can hold.
struct SlurmPartition {
  std::string name;                    // "gpu" (without sinfo's default marker '*')
  bool is_default = false;             // where sbatch sends a job that names no partition
  int nodes = 0;                       // all node groups together
  int cpus_per_node = 0;               // the biggest node group's
  int64_t memory_bytes_per_node = 0;   // the biggest node group's (Slurm's RealMemory)
  int gpus_per_node = 0;               // from GRES: "gpu:a100:4" -> 4, "gpu:4" -> 4, "(null)" -> 0
  std::string gpu_name;                // "a100"; "" when GRES names no type or no GPU
  int time_limit_minutes = 0;          // the partition's MaxTime; 0: no limit ("infinite")
  std::string state;                   // availability: "up", "down", "drain" or "inact"
};

// `sinfo -h -o %P|%a|%l|%D|%c|%m|%G`: one line per partition and node group.
std::vector<std::string> sinfo_argv();

// The partitions in sinfo_argv()'s output, in the order sinfo lists them. A line that does not
// have its seven fields, or a number that is not one, is DataLoss quoting the line.
base::Result<std::vector<SlurmPartition>> parse_sinfo(const std::string& out);

// ---- Submitting ----------------------------------------------------------------------------

// What sbatch is asked for; empty strings and zeros are left out (the cluster's defaults apply).
struct SlurmJobRequest {
  std::string job_name;
  std::string partition;
  std::string account;                 // -A
  std::string qos;                     // -q
  int cpus = 0;                        // --cpus-per-task
  int64_t memory_bytes = 0;            // --mem, in MB rounded up; the job is OUT_OF_MEMORY past it
  int gpu_count = 0;                   // --gres=gpu[:gpu_name]:gpu_count
  std::string gpu_name;
  int time_limit_minutes = 0;          // --time; the job ends as TIMEOUT past it
  std::string work_dir;                // --chdir, on the compute node
  std::string output_path;             // --output: stdout and stderr together
  std::string script_path;             // the batch script (see batch_script), last on the line
  // --export=NAMES: the job then sees only these variables (with the values in sbatch's own
  // environment, so secrets never touch a disk or an argv) plus Slurm's SLURM_*; add PATH/HOME if
  // the job needs them. Empty: Slurm's default, sbatch's whole environment.
  std::vector<std::string> export_env_names;
};

// `sbatch --parsable ... SCRIPT`.
std::vector<std::string> sbatch_argv(const SlurmJobRequest& request);

// The job id in `sbatch --parsable`'s output ("42" or "42;cluster" on a multi-cluster setup).
// Anything else is DataLoss quoting it.
base::Result<std::string> parse_sbatch(const std::string& out);

// A batch script that replaces bash with `argv` (each word quoted for bash), so that the signals
// Slurm sends to the batch step reach the program itself. `argv` must not be empty.
std::string batch_script(const std::vector<std::string>& argv);

// ---- Stopping ------------------------------------------------------------------------------

// graceful (abort false): `scancel ID` — Slurm's own cancel sequence: SIGCONT and SIGTERM to every
// process of the job (the exec'd program included), SIGKILL after the cluster's KillWait (30 s by
// default; 10 s on the test cluster); the job ends CANCELLED. (`--signal=TERM --full` would deliver
// TERM too, but never escalates and leaves the state to the program's exit status: COMPLETED when it
// exits 0.)
// abort: `scancel --batch --signal=KILL ID` — SIGKILL straight to the batch step's process, no
// grace; slurmstepd then kills what is left in the job's cgroup. The job ends FAILED with signal 9
// (Reason=JobLaunchFailure on 22.05); a pending job is simply cancelled. Without --batch, Slurm
// turns a SIGKILL into the graceful cancel above, TERM first.
// scancel exits 0 for a job that has already ended.
std::vector<std::string> scancel_argv(const std::string& job_id, bool abort);

// ---- State ---------------------------------------------------------------------------------

struct SlurmJobState {
  enum class Phase { kPending, kRunning, kFinished, kUnknown };
  // Why a finished job ended; kNone for COMPLETED (exit 0) and for jobs not finished.
  enum class Cause { kNone, kFailed, kOutOfMemory, kNodeFail, kCancelled, kTimeout, kPreempted, kBootFail, kDeadline };

  Phase phase = Phase::kUnknown;
  std::string state;      // Slurm's, raw: "OUT_OF_MEMORY" ("CANCELLED by 0" is cut to "CANCELLED")
  int exit_code = 0;      // ExitCode=a:b's a: the batch script's exit status
  int signal = 0;         // ExitCode=a:b's b: the signal that ended it (125 marks Slurm's OOM kill)
  Cause cause = Cause::kNone;
  std::string reason;     // Slurm's Reason= ("Resources", "NodeDown", "OutOfMemory"); "" or "None"

  // A failure of the cluster, not of the job: node failure, boot failure, preemption. Resubmitting
  // (--retry) may well succeed. Not the user's non-zero exit, not a cancel, and not out of memory or
  // time limit: the same request would fail the same way.
  bool infrastructure_failure() const;

  // One line for the user: "pending (Resources)", "running", "completed", "exited with status 3",
  // "out of memory: the job used more than its --mem; ask for more memory", ...
  std::string describe() const;
};

// The state for Slurm's state name ("RUNNING", "OUT_OF_MEMORY", "CANCELLED by 0"), Slurm's reason
// and ExitCode ("3:0"); an ExitCode that isn't "a:b" is DataLoss. An unknown state is Phase::kUnknown.
base::Result<SlurmJobState> slurm_job_state(const std::string& state, const std::string& reason,
                                            const std::string& exit_code);

// `squeue -h -t all -j ID -o %T|%r`. squeue knows pending and running jobs, and finished ones until
// the controller forgets them (MinJobAge), but prints no exit code: use it to list or watch, not to
// learn how a job ended.
std::vector<std::string> squeue_argv(const std::string& job_id);
// nullopt when squeue printed nothing (the job is no longer in the controller's memory).
base::Result<std::optional<SlurmJobState>> parse_squeue(const std::string& out);

// `scontrol show job -o ID`: one key=value line, the state, reason and exit code. Knows a job from
// its submission until MinJobAge (300 s by default) after it ended; then it exits 1 with "Invalid
// job id specified".
std::vector<std::string> scontrol_job_argv(const std::string& job_id);
base::Result<std::optional<SlurmJobState>> parse_scontrol_job(const std::string& out);

// `sacct -n -P -X -j ID -o State,ExitCode,Reason`: the accounting database's record, there for good
// once the job ended — but only where the cluster stores accounting (slurmdbd); elsewhere (the test
// cluster) it exits 1 with "Slurm accounting storage is disabled".
std::vector<std::string> sacct_argv(const std::string& job_id);
// nullopt when sacct printed no record.
base::Result<std::optional<SlurmJobState>> parse_sacct(const std::string& out);

// One way of asking about a job: the command, and how to read it.
struct SlurmStateQuery {
  std::vector<std::string> argv;
  base::Result<std::optional<SlurmJobState>> (*parse)(const std::string& out);
};

// The order to ask in: scontrol (the controller: live, and with the exit code), then sacct (the
// record kept after the controller forgot the job). A query that fails, or answers nullopt, means
// "ask the next one" (see query_slurm_job_state).
std::vector<SlurmStateQuery> state_query_order(const std::string& job_id);

// Runs a command where Slurm's clients are (locally, or over SSH on a login host).
using SlurmRunner = std::function<base::Result<base::ProcessOutput>(const std::vector<std::string>& argv)>;

// Asks state_query_order's queries in turn through `run` and returns the first answer. A query that
// exits non-zero or knows no such job passes on to the next; when none knows the job, NotFound
// naming it and what each query said. A runner error (sbatch's host unreachable) is returned as is.
base::Result<SlurmJobState> query_slurm_job_state(const std::string& job_id, const SlurmRunner& run);

}  // namespace sdstack::flow
