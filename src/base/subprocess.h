// Child processes: running a program to completion with its output captured, and starting one
// whose output the caller pumps itself (the workflow runner's jobs).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "base/status.h"

namespace sdstack::base {

// An owned file descriptor, closed when the object dies. Not thread-safe.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership: the caller closes the returned descriptor.
  int release();
  // Closes the descriptor held (if any) and holds `fd` instead.
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

struct ProcessOutput {
  int exit_code = 0;  // the exit status, or 128+signal when a signal ended it
  std::string out;    // stdout
  std::string err;    // stderr
};

// Runs argv (no shell) to completion in `cwd` ("" = the current directory) and captures its stdout
// and stderr; both are drained together with poll, so big outputs can't deadlock. stdin is
// /dev/null. `env` ("K=V" each) is the child's whole environment; null inherits this process's.
// argv[0] without a '/' is looked up on the PATH of the environment the child gets; one that can't
// be found is NotFound naming it. A child that can't be started (cwd missing, not executable) is an
// IoError naming the program. Thread-safe; the caller must not have set SIGCHLD to SIG_IGN (that
// makes the child's status unreadable).
Result<ProcessOutput> run_process(const std::vector<std::string>& argv, const std::string& cwd = "",
                                  const std::vector<std::string>* env = nullptr);

// The path of the executable `name` on this process's PATH (absolute when PATH's entries are), or
// NotFound naming it and the PATH searched. A name containing '/' is checked as it is and returned
// unchanged.
Result<std::string> find_program(const std::string& name);

// How to start a child with spawn_process.
struct SpawnOptions {
  std::vector<std::string> argv;                  // argv[0] is looked up as run_process does
  std::string cwd;                                // "" = the current directory
  const std::vector<std::string>* env = nullptr;  // the whole environment ("K=V"); null: inherit
  // setsid(): the child leads a new session and process group (pgid == pid) with no controlling
  // terminal, so a terminal's Ctrl+C doesn't reach it and it can't open /dev/tty.
  bool new_session = false;
  // Descriptors (not owned, duplicated into the child) to use as its stdin / stdout instead of
  // /dev/null / a pipe: a file to upload, one end of a pipe to another process. -1: the default.
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;  // likewise for stderr: then ChildProcess::stderr_fd is not valid
};

// A child started by spawn_process. The caller owns all of it: it must reap `pid` (waitpid) and the
// descriptors close with the object.
struct ChildProcess {
  pid_t pid = -1;
  // Read ends of the child's stdout (not valid when SpawnOptions::stdout_fd was given) and stderr:
  // non-blocking, close-on-exec.
  UniqueFd stdout_fd;
  UniqueFd stderr_fd;
};

// Starts argv with stdin /dev/null and stdout/stderr on fresh pipes (or the descriptors given). The child gets a clean start
// whatever this process did: every signal unblocked and at its default action (a parent that
// ignores SIGPIPE or blocks SIGTERM doesn't pass that on), and no descriptor but 0, 1 and 2.
// Errors are reported here, not as an exit status: NotFound for an unknown program, IoError when
// the cwd or exec fails (the child has then been reaped). Thread-safe.
Result<ChildProcess> spawn_process(const SpawnOptions& options);

// run_process with every spawn option: stdin from a file or pipe, stdout into one (then `out` is empty).
Result<ProcessOutput> run_process(const SpawnOptions& options);

// A waitpid status as a shell shows it: the exit status, or 128+signal.
int exit_code_from_wait_status(int status);

}  // namespace sdstack::base
