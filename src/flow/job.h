// Jobs: a run's command as a process tree, sandboxed with bubblewrap, its output pumped line by
// line into the run's log, stopped gracefully or aborted on request.
//
// A job's processes: sdstack starts one process (bwrap, or the command itself with sandbox off) as
// the leader of a new session and process group. Inside the sandbox bwrap's init is pid 1 of a
// fresh pid namespace and the command is pid 2. The job ends when the command (its "main process")
// ends: whatever it left running (`server &`, a daemon) is then killed at once with SIGKILL, as a
// container's processes die with its entrypoint, and the job's output is drained.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "base/subprocess.h"
#include "flow/run_log.h"

namespace sdstack::flow {

struct JobSpec {
  std::vector<std::string> argv;           // e.g. {"bash", "-e", "-o", "pipefail", "-c", script}
  std::string work_dir;                    // the cwd, an existing directory; writable in the sandbox
  std::vector<std::string> writable_dirs;  // more writable places (the run's HOME); existing directories
  std::vector<std::string> readonly_dirs;  // bound read-only even where the sandbox hides them (under /tmp)
  std::vector<std::string> env;            // the job's whole environment, "K=V"; argv[0] is found on its PATH
  bool sandbox = true;                     // bubblewrap; false: run directly (still its own process group)
  // The size of the sandbox's /dev/shm. 0: the kernel's tmpfs default, half of the machine's
  // memory, as the host's own /dev/shm usually is (Docker's 64 MiB makes PyTorch's DataLoader
  // workers die with "bus error"). tmpfs uses memory only for what is stored in it.
  int64_t shm_size_bytes = 0;
  int grace_seconds = 10;  // graceful stop: SIGTERM, then SIGKILL after this
};

struct JobResult {
  // The job's exit status, or 128+signal. Through bubblewrap a command killed by a signal arrives
  // as the exit status 128+signal, so a sandboxed job exiting with 129..192 reads as killed by
  // signal (status - 128), the same guess a shell makes.
  int exit_code = 0;
  int term_signal = 0;   // the signal that ended it, 0 if it exited
  bool stopped = false;  // a graceful stop was asked for (request_stop) before it ended
  bool aborted = false;  // an abort was asked for (request_abort) before it ended; then stopped is false
  // "" or why the log could not be written (disk full, say): the job ran on, as killing it over its
  // log would lose more, but output from then on may be missing from the log.
  std::string log_error;
};

// Whether bubblewrap can make the sandbox here, found by starting a trivial one. The error says
// what is wrong and how to fix it: "install bubblewrap (apt-get install bubblewrap)", or that user
// namespaces are disabled and the setting that enables them; always "or run with --no-sandbox".
base::Status check_sandbox();

// The bubblewrap command line that runs `spec.argv` in its sandbox; `bwrap` is the path of the
// bwrap program. Paths are made absolute against the current directory.
std::vector<std::string> sandbox_argv(const JobSpec& spec, const std::string& bwrap);

// A started job. Not copyable; wait() is called once, from one thread. Destroying a Job whose
// processes still run kills them (SIGKILL) and reaps its main process.
class Job {
 public:
  // Starts the job in a new session and process group without a controlling terminal (stdin
  // /dev/null, stdout/stderr pipes), inside bubblewrap when spec.sandbox: the whole filesystem
  // read-only; a fresh /dev (with the host's GPU devices, /dev/nvidia*, /dev/dri and /dev/kfd,
  // bound in) and /proc; private tmpfs /tmp and /dev/shm; work_dir and writable_dirs bound
  // read-write at the same paths; a pid namespace of its own and --die-with-parent, so nothing it
  // starts outlives it, even if sdstack is killed; the network shared (jobs download models and
  // serve IDEs on loopback). `log` (not owned) must outlive the Job. Errors: InvalidArgument for a
  // missing work dir / writable dir, NotFound for a missing program (bwrap, or argv[0] with sandbox
  // off; inside the sandbox a missing argv[0] is bwrap's error in the log and exit code 1).
  // The caller must not set SIGCHLD to SIG_IGN. If sdstack dies, a sandboxed job dies with it
  // (bwrap's --die-with-parent, which rests on PR_SET_PDEATHSIG: call start() from a thread that
  // lives as long as the job); a job run without the sandbox lives on.
  static base::Result<std::unique_ptr<Job>> start(const JobSpec& spec, LogWriter* log);
  ~Job();
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  // Ask for a graceful stop / an abort; they return at once and wait() acts on them. A graceful
  // stop sends SIGTERM to every process of the job (bash and what it started, not bwrap or its
  // init, which would just kill the rest), as a terminal's Ctrl+C reaches a whole foreground job
  // and systemd stops a whole service, then SIGKILL to all after grace_seconds. An abort sends
  // SIGKILL to all at once. Async-signal-safe and thread-safe (each writes one byte to a pipe):
  // the supervisor's SIGTERM/SIGINT/SIGUSR1 handlers call them. A request made before wait() is
  // acted on when it begins; one after the job ended does nothing.
  void request_stop();
  void request_abort();

  // Pumps the job's output into the log until its main process has ended, the rest of its
  // processes are killed and the pipes are drained, acting on stop/abort requests meanwhile (each
  // is noted in the log as a sys line); writes held partial lines at the end. stdout and stderr are
  // read as they come, so their relative order is kept only as closely as the pipes allow. Never
  // hangs on a process that escaped the job (sandbox off, it left the process group and kept the
  // pipes open): output is drained for at most 2 s after the main process ended. An error (the OS
  // refusing poll or waitpid) comes after the job has been killed.
  base::Result<JobResult> wait();

  // The process sdstack started: bwrap with the sandbox, the command without. It is also the job's
  // process group and session id.
  pid_t pid() const { return pid_; }

 private:
  Job() = default;
  // Sends `signal_number` to every process of the job that should get it (see request_stop);
  // returns how many got it.
  int signal_job(int signal_number);
  // SIGKILL to the whole job: the process group, the main process and everything descended from it.
  void kill_job();

  pid_t pid_ = -1;
  bool sandbox_ = false;
  bool reaped_ = false;
  int grace_seconds_ = 10;
  LogWriter* log_ = nullptr;
  base::UniqueFd stdout_fd_, stderr_fd_;
  base::UniqueFd control_read_, control_write_;  // the self-pipe of stop/abort requests
  base::UniqueFd exit_fd_;                       // a pidfd, readable when the main process ends (or -1)
};

// A job's environment is built from this process's: read it as name -> value, edit it, then
// flatten it with the plan's "K=V" entries and the secrets on top (later ones win).
std::map<std::string, std::string> current_environment();
std::vector<std::string> flatten_environment(std::map<std::string, std::string> variables,
                                             const std::vector<std::string>& entries,
                                             const std::map<std::string, std::string>& secrets);
// `dir` first on variables' PATH.
void prepend_to_path(std::map<std::string, std::string>& variables, const std::string& dir);

// A supervising process's stop signals: SIGTERM and SIGINT ask for a graceful stop, SIGUSR1 for an
// abort; SIGHUP and SIGPIPE are ignored (the process outlives its terminal and its readers).
// Before a job is attached a request is remembered (pending_stop_request()); attaching acts on it,
// and from then on each signal goes to the job. Only async-signal-safe work runs in the handler.
void install_stop_signal_handlers();
void attach_stop_signals(Job* job);  // nullptr detaches
// 0: none, 1: a graceful stop, 2: an abort (the strongest asked for so far).
int pending_stop_request();

}  // namespace sdstack::flow
