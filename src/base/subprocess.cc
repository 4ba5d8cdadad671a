// Child processes: fork/exec with a clean signal state, pipes drained with poll.
#include "base/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sdstack::base {
namespace {

// Used when neither the child's environment nor ours names a PATH (what a login shell would have).
const char kDefaultPath[] = "/usr/local/bin:/usr/bin:/bin";

std::string os_reason() { return std::strerror(errno); }

bool is_executable_file(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

Result<std::string> find_on_path(const std::string& name, const std::string& path_list) {
  if (name.empty()) return invalid_argument("no program to run (empty argv[0])");
  if (name.find('/') != std::string::npos) {
    if (is_executable_file(name)) return name;
    return not_found("program '" + name + "' not found (or not executable)");
  }
  size_t begin = 0;
  for (;;) {
    size_t end = path_list.find(':', begin);
    std::string_view dir = std::string_view(path_list).substr(begin, end == std::string::npos ? end : end - begin);
    std::string candidate(dir.empty() ? std::string_view(".") : dir);  // POSIX: "" is the current directory
    candidate += '/';
    candidate += name;
    if (is_executable_file(candidate)) return candidate;
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return not_found("program '" + name + "' not found on PATH (" + path_list + ")");
}

std::string path_of(const std::vector<std::string>* env) {
  if (env != nullptr) {
    for (const std::string& entry : *env) {
      if (entry.rfind("PATH=", 0) == 0) return entry.substr(5);
    }
    return kDefaultPath;
  }
  const char* path = std::getenv("PATH");
  return path != nullptr ? path : kDefaultPath;
}

// A descriptor at 3 or above, so the child's dup2 onto 0, 1 and 2 can't clobber another one
// (possible when this process runs with its standard descriptors closed).
Status move_above_stdio(UniqueFd* fd) {
  if (fd->get() > STDERR_FILENO) return Status::ok();
  int moved = ::fcntl(fd->get(), F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  if (moved < 0) return io_error("cannot start a process: fcntl: " + os_reason());
  fd->reset(moved);
  return Status::ok();
}

Status make_pipe(UniqueFd* read_end, UniqueFd* write_end) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return io_error("cannot start a process: pipe: " + os_reason());
  read_end->reset(fds[0]);
  write_end->reset(fds[1]);
  SD_RETURN_IF_ERROR(move_above_stdio(read_end));
  return move_above_stdio(write_end);
}

// What the child reports on the exec-error pipe when it can't exec: the step and its errno.
struct ChildFailure {
  int step = 0;  // kStepChdir or kStepExec
  int error = 0;
};
constexpr int kStepChdir = 1;
constexpr int kStepExec = 2;

// The child between fork and exec: async-signal-safe calls only (the parent may have threads).
[[noreturn]] void exec_child(const char* program, char* const* argv, char* const* envp, const char* cwd,
                             bool new_session, int null_fd, int out_fd, int err_fd, int failure_fd) {
  struct sigaction default_action;
  std::memset(&default_action, 0, sizeof default_action);
  default_action.sa_handler = SIG_DFL;
  for (int signal_number = 1; signal_number < NSIG; ++signal_number) {
    ::sigaction(signal_number, &default_action, nullptr);  // fails harmlessly for KILL, STOP, glibc's own
  }
  if (new_session) ::setsid();
  ::dup2(null_fd, STDIN_FILENO);
  ::dup2(out_fd, STDOUT_FILENO);
  ::dup2(err_fd, STDERR_FILENO);
  // Nothing else of this process's reaches the program; the failure pipe stays open until exec.
#ifdef SYS_close_range
  if (::syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */) != 0)
#endif
  {
    for (int fd = 3; fd < 4096; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  ChildFailure failure;
  if (cwd[0] != '\0' && ::chdir(cwd) != 0) {
    failure = {kStepChdir, errno};
  } else {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(program, argv, envp);
    failure = {kStepExec, errno};
  }
  ssize_t ignored = ::write(failure_fd, &failure, sizeof failure);
  (void)ignored;
  ::_exit(127);
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

int UniqueFd::release() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

int exit_code_from_wait_status(int status) {
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 255;
}

Result<std::string> find_program(const std::string& name) { return find_on_path(name, path_of(nullptr)); }

Result<ChildProcess> spawn_process(const SpawnOptions& options) {
  if (options.argv.empty()) return invalid_argument("no program to run (empty argv)");
  SD_ASSIGN_OR_RETURN(std::string program, find_on_path(options.argv[0], path_of(options.env)));

  // Everything the child needs is made before fork: it may only make async-signal-safe calls.
  std::vector<char*> argv;
  for (const std::string& arg : options.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  if (options.env != nullptr) {
    for (const std::string& entry : *options.env) envp.push_back(const_cast<char*>(entry.c_str()));
    envp.push_back(nullptr);
  }
  char* const* child_env = options.env != nullptr ? envp.data() : environ;

  UniqueFd null_fd(options.stdin_fd >= 0 ? ::fcntl(options.stdin_fd, F_DUPFD_CLOEXEC, 3)
                                          : ::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null_fd.valid()) return io_error("cannot open the child's stdin: " + os_reason());
  SD_RETURN_IF_ERROR(move_above_stdio(&null_fd));
  UniqueFd out_read, out_write, err_read, err_write, failure_read, failure_write;
  if (options.stdout_fd >= 0) {
    out_write.reset(::fcntl(options.stdout_fd, F_DUPFD_CLOEXEC, 3));
    if (!out_write.valid()) return io_error("cannot pass the child's stdout: " + os_reason());
  } else {
    SD_RETURN_IF_ERROR(make_pipe(&out_read, &out_write));
  }
  if (options.stderr_fd >= 0) {
    err_write.reset(::fcntl(options.stderr_fd, F_DUPFD_CLOEXEC, 3));
    if (!err_write.valid()) return io_error("cannot pass the child's stderr: " + os_reason());
  } else {
    SD_RETURN_IF_ERROR(make_pipe(&err_read, &err_write));
  }
  SD_RETURN_IF_ERROR(make_pipe(&failure_read, &failure_write));

  // Signals stay blocked across fork so that none of this process's handlers runs in the child
  // before it has reset them.
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pid_t pid = ::fork();
  if (pid == 0) {
    exec_child(program.c_str(), argv.data(), child_env, options.cwd.c_str(), options.new_session, null_fd.get(),
               out_write.get(), err_write.get(), failure_write.get());
  }
  int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (pid < 0) return io_error("cannot start " + options.argv[0] + ": fork: " + std::strerror(fork_errno));

  out_write.reset();
  err_write.reset();
  failure_write.reset();
  ChildFailure failure;
  ssize_t n;
  do {
    n = ::read(failure_read.get(), &failure, sizeof failure);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof failure)) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (failure.step == kStepChdir) {
      return io_error("cannot start " + options.argv[0] + ": cannot enter " + options.cwd + ": " +
                      std::strerror(failure.error));
    }
    return io_error("cannot start " + program + ": " + std::strerror(failure.error));
  }

  if (out_read.valid()) ::fcntl(out_read.get(), F_SETFL, O_NONBLOCK);
  if (err_read.valid()) ::fcntl(err_read.get(), F_SETFL, O_NONBLOCK);
  ChildProcess child;
  child.pid = pid;
  child.stdout_fd = std::move(out_read);
  child.stderr_fd = std::move(err_read);
  return child;
}

Result<ProcessOutput> run_process(const std::vector<std::string>& argv, const std::string& cwd,
                                  const std::vector<std::string>* env) {
  SpawnOptions options;
  options.argv = argv;
  options.cwd = cwd;
  options.env = env;
  return run_process(options);
}

Result<ProcessOutput> run_process(const SpawnOptions& options) {
  const std::vector<std::string>& argv = options.argv;
  SD_ASSIGN_OR_RETURN(ChildProcess child, spawn_process(options));

  ProcessOutput output;
  UniqueFd* fds[2] = {&child.stdout_fd, &child.stderr_fd};
  std::string* sinks[2] = {&output.out, &output.err};
  Status read_error;
  char buffer[1 << 16];
  while (fds[0]->valid() || fds[1]->valid()) {
    pollfd polled[2];
    for (int i = 0; i < 2; ++i) polled[i] = {fds[i]->get(), POLLIN, 0};  // poll skips a -1
    if (::poll(polled, 2, -1) < 0) {
      if (errno == EINTR) continue;
      read_error = io_error("reading the output of " + argv[0] + ": poll: " + os_reason());
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (polled[i].revents == 0) continue;
      ssize_t got = ::read(fds[i]->get(), buffer, sizeof buffer);
      if (got > 0) {
        sinks[i]->append(buffer, static_cast<size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        fds[i]->reset();  // end of output (or a broken pipe: nothing more will come)
      }
    }
  }
  // Closing our ends first means a child still writing (after a poll error) gets SIGPIPE, not a hang.
  child.stdout_fd.reset();
  child.stderr_fd.reset();
  int status = 0;
  while (::waitpid(child.pid, &status, 0) < 0) {
    if (errno != EINTR) return internal_error("waiting for " + argv[0] + ": waitpid: " + os_reason());
  }
  if (!read_error.is_ok()) return read_error;
  output.exit_code = exit_code_from_wait_status(status);
  return output;
}

}  // namespace sdstack::base
