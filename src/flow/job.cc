// Jobs: the bubblewrap command line, the output pump, and stopping a process tree.
#include "flow/job.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "base/file.h"

extern char** environ;

namespace sdstack::flow {

using base::Result;
using base::Status;
using Clock = std::chrono::steady_clock;

namespace {

constexpr char kNoSandboxHint[] = "or run with --no-sandbox";
constexpr auto kDrainLimit = std::chrono::seconds(2);  // reading output after the main process ended
constexpr int kTickMs = 20;                            // polling when a pidfd or a target is missing
constexpr char kStopByte = 's';
constexpr char kAbortByte = 'a';

// One line of /proc/PID/stat, the parts we need.
struct ProcessEntry {
  pid_t pid = 0;
  pid_t parent = 0;
  pid_t group = 0;
};

// Every process on the machine as this process's pid namespace sees it (pids inside a sandbox are
// shown as their outer numbers).
std::vector<ProcessEntry> list_processes() {
  std::vector<ProcessEntry> processes;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return processes;
  while (dirent* entry = readdir(proc)) {
    if (entry->d_name[0] < '1' || entry->d_name[0] > '9') continue;
    std::ifstream stat(std::string("/proc/") + entry->d_name + "/stat");
    std::string line;
    if (!std::getline(stat, line)) continue;  // it just ended
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so parse after the last ')'.
    size_t paren = line.rfind(')');
    if (paren == std::string::npos) continue;
    ProcessEntry process;
    char state = 0;
    int parent = 0, group = 0;
    if (std::sscanf(line.c_str() + paren + 1, " %c %d %d", &state, &parent, &group) != 3) continue;
    process.pid = static_cast<pid_t>(std::atoi(entry->d_name));
    process.parent = parent;
    process.group = group;
    processes.push_back(process);
  }
  closedir(proc);
  return processes;
}

// The processes descended from `root` (not root itself), parents before children.
std::vector<ProcessEntry> descendants(pid_t root) {
  std::multimap<pid_t, ProcessEntry> children;
  for (const ProcessEntry& process : list_processes()) children.emplace(process.parent, process);
  std::vector<ProcessEntry> found;
  std::vector<pid_t> frontier = {root};
  while (!frontier.empty()) {
    pid_t parent = frontier.back();
    frontier.pop_back();
    auto [begin, end] = children.equal_range(parent);
    for (auto it = begin; it != end; ++it) {
      found.push_back(it->second);
      frontier.push_back(it->second.pid);
    }
  }
  return found;
}

// Whether `pid` is pid 1 of a pid namespace below ours (bwrap's init): its NSpid line ends in 1.
bool is_namespace_init(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("NSpid:", 0) != 0) continue;
    size_t last = line.find_last_of(" \t");
    size_t first = line.find_first_not_of(" \t", 6);
    return last != std::string::npos && first != std::string::npos && first <= last && line.substr(last + 1) == "1";
  }
  return false;
}

int milliseconds_until(Clock::time_point when) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(when - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left + 1, 0, 60 * 1000));
}

// The host's GPU device nodes, which the sandbox's fresh /dev lacks: NVIDIA's (/dev/nvidia0,
// nvidiactl, nvidia-uvm, nvidia-caps/...), the DRM render nodes and AMD's compute device.
std::vector<std::string> gpu_devices() {
  std::vector<std::string> devices;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/dev", error)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("nvidia", 0) == 0 || name == "dri" || name == "kfd") devices.push_back(entry.path().string());
  }
  std::sort(devices.begin(), devices.end());
  return devices;
}

std::string absolute_path(const std::string& path) {
  std::error_code error;
  std::filesystem::path absolute = std::filesystem::absolute(path, error);
  return error ? path : absolute.lexically_normal().string();
}

// `path` without a trailing '/' ("/a/b/" -> "/a/b"; "/" stays).
std::string without_trailing_slash(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The sandbox

std::vector<std::string> sandbox_argv(const JobSpec& spec, const std::string& bwrap) {
  std::vector<std::string> args = {bwrap, "--ro-bind", "/", "/", "--dev", "/dev"};
  for (const std::string& device : gpu_devices()) {
    for (const std::string& arg : {std::string("--dev-bind-try"), device, device}) args.push_back(arg);
  }
  for (const char* arg : {"--proc", "/proc", "--tmpfs", "/tmp"}) args.push_back(arg);
  if (spec.shm_size_bytes > 0) {
    args.push_back("--size");
    args.push_back(std::to_string(spec.shm_size_bytes));
  }
  args.push_back("--tmpfs");
  args.push_back("/dev/shm");
  // Read-only ones next (the sdstack program may live under /tmp, which the sandbox replaces).
  for (const std::string& dir : spec.readonly_dirs) {
    for (const std::string& arg : {std::string("--ro-bind"), absolute_path(dir), absolute_path(dir)}) args.push_back(arg);
  }
  // Outer folders first, so that binding one never hides another bound inside it.
  std::vector<std::string> writable = {without_trailing_slash(absolute_path(spec.work_dir))};
  for (const std::string& dir : spec.writable_dirs) writable.push_back(without_trailing_slash(absolute_path(dir)));
  std::sort(writable.begin(), writable.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() < b.size() : a < b;
  });
  writable.erase(std::unique(writable.begin(), writable.end()), writable.end());
  for (const std::string& dir : writable) {
    args.push_back("--bind");
    args.push_back(dir);
    args.push_back(dir);
  }
  // No --new-session: the job already leads a session without a terminal (so no TIOCSTI), and
  // keeping bwrap's process group lets a graceful stop find the job's processes.
  for (const std::string& arg : {std::string("--chdir"), absolute_path(spec.work_dir), std::string("--unshare-pid"),
                                 std::string("--die-with-parent"), std::string("--")}) {
    args.push_back(arg);
  }
  args.insert(args.end(), spec.argv.begin(), spec.argv.end());
  return args;
}

Status check_sandbox() {
  auto bwrap = base::find_program("bwrap");
  if (!bwrap.is_ok()) {
    return base::unsupported(
        "bubblewrap (bwrap) is not installed, so jobs can't be sandboxed: install bubblewrap (apt-get install "
        "bubblewrap, or dnf install bubblewrap), " +
        std::string(kNoSandboxHint));
  }
  // The same kinds of mounts and namespace a job gets, around `true`.
  auto probe = base::run_process({*bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                                  "--tmpfs", "/dev/shm", "--unshare-pid", "--die-with-parent", "--", "true"});
  if (!probe.is_ok()) {
    return base::unsupported("bubblewrap cannot make a sandbox here: " + probe.status().message() + "; " +
                             kNoSandboxHint);
  }
  if (probe->exit_code == 0) return Status::ok();
  std::string reason = probe->err;
  while (!reason.empty() && (reason.back() == '\n' || reason.back() == ' ')) reason.pop_back();
  std::replace(reason.begin(), reason.end(), '\n', ' ');
  if (reason.empty()) reason = "bwrap exited with status " + std::to_string(probe->exit_code);
  std::string hint;
  for (const char* sign : {"namespace", "uid map", "Operation not permitted", "Permission denied"}) {
    if (reason.find(sign) != std::string::npos) {
      hint =
          " (user namespaces are disabled or restricted here: allow them with `sysctl -w "
          "kernel.unprivileged_userns_clone=1`, or on Ubuntu 24.04+ `sysctl -w "
          "kernel.apparmor_restrict_unprivileged_userns=0`; inside a container, start it with a seccomp "
          "profile that allows user namespaces, e.g. docker run --security-opt seccomp=unconfined)";
      break;
    }
  }
  return base::unsupported("bubblewrap cannot make a sandbox here: " + reason + hint + "; " + kNoSandboxHint);
}

// ---------------------------------------------------------------------------------------------
// Job

Result<std::unique_ptr<Job>> Job::start(const JobSpec& spec, LogWriter* log) {
  if (log == nullptr) return base::invalid_argument("the job has no log to write to");
  if (spec.argv.empty()) return base::invalid_argument("the job has no command (empty argv)");
  if (!base::is_directory(spec.work_dir)) {
    return base::invalid_argument("the job's working directory '" + spec.work_dir + "' is not a directory");
  }
  for (const std::string& dir : spec.writable_dirs) {
    if (!base::is_directory(dir)) {
      return base::invalid_argument("the job's writable directory '" + dir + "' is not a directory");
    }
  }
  base::SpawnOptions options;
  if (spec.sandbox) {
    auto bwrap = base::find_program("bwrap");
    if (!bwrap.is_ok()) {
      return base::not_found("bubblewrap (bwrap) is not installed: install bubblewrap (apt-get install bubblewrap), " +
                             std::string(kNoSandboxHint));
    }
    options.argv = sandbox_argv(spec, *bwrap);
  } else {
    options.argv = spec.argv;
  }
  options.cwd = spec.work_dir;
  options.env = &spec.env;
  options.new_session = true;

  std::unique_ptr<Job> job(new Job());
  int control[2];
  if (::pipe2(control, O_CLOEXEC | O_NONBLOCK) != 0) {
    return base::io_error(std::string("cannot start the job: pipe: ") + std::strerror(errno));
  }
  job->control_read_.reset(control[0]);
  job->control_write_.reset(control[1]);
  SD_ASSIGN_OR_RETURN(base::ChildProcess child, base::spawn_process(options));
  job->pid_ = child.pid;
  job->sandbox_ = spec.sandbox;
  job->grace_seconds_ = std::max(0, spec.grace_seconds);
  job->log_ = log;
  job->stdout_fd_ = std::move(child.stdout_fd);
  job->stderr_fd_ = std::move(child.stderr_fd);
#ifdef SYS_pidfd_open
  job->exit_fd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, child.pid, 0)));  // -1 before Linux 5.3
#endif
  return job;
}

Job::~Job() {
  if (reaped_ || pid_ < 0) return;
  kill_job();
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
}

void Job::request_stop() {
  int saved_errno = errno;  // a signal handler must leave errno as it found it
  ssize_t ignored = ::write(control_write_.get(), &kStopByte, 1);
  (void)ignored;
  errno = saved_errno;
}

void Job::request_abort() {
  int saved_errno = errno;
  ssize_t ignored = ::write(control_write_.get(), &kAbortByte, 1);
  (void)ignored;
  errno = saved_errno;
}

int Job::signal_job(int signal_number) {
  int signaled = 0;
  if (sandbox_) {
    // Everything under bwrap but its init: bwrap would just kill the namespace, and the init ignores
    // signals from outside anyway.
    for (const ProcessEntry& process : descendants(pid_)) {
      if (!is_namespace_init(process.pid) && ::kill(process.pid, signal_number) == 0) ++signaled;
    }
    return signaled;
  }
  if (::kill(-pid_, signal_number) == 0) ++signaled;
  for (const ProcessEntry& process : descendants(pid_)) {  // those that left the process group
    if (process.group != pid_ && ::kill(process.pid, signal_number) == 0) ++signaled;
  }
  return signaled;
}

void Job::kill_job() {
  ::kill(-pid_, SIGKILL);
  if (reaped_) return;  // the pid may name another process now
  std::vector<ProcessEntry> below = descendants(pid_);
  ::kill(pid_, SIGKILL);  // with the sandbox, bwrap's death takes its pid namespace with it
  for (const ProcessEntry& process : below) ::kill(process.pid, SIGKILL);
}

Result<JobResult> Job::wait() {
  JobResult result;
  enum class Request { kNone, kStop, kAbort };
  Request request = Request::kNone;
  bool main_ended = false;
  int wait_status = 0;
  bool term_pending = false;  // SIGTERM asked for but no process of the job seen yet
  bool kill_pending = false;  // a graceful stop is under way: SIGKILL at kill_at
  Clock::time_point kill_at;
  Clock::time_point drain_until;
  Status failure;

  auto log_write = [&](const Status& status) {
    if (!status.is_ok() && result.log_error.empty()) result.log_error = status.message();
  };
  auto check_main = [&]() {
    if (main_ended) return;
    pid_t waited = ::waitpid(pid_, &wait_status, WNOHANG);
    if (waited == pid_) {
      main_ended = true;
      reaped_ = true;
      // What the job left running dies with it. With the sandbox bwrap's --die-with-parent does the
      // same; the process group is still ours to signal while any member lives.
      ::kill(-pid_, SIGKILL);
      drain_until = Clock::now() + kDrainLimit;
    } else if (waited < 0 && errno != EINTR) {
      failure = base::internal_error(std::string("waiting for the job: waitpid: ") + std::strerror(errno));
    }
  };

  char buffer[1 << 16];
  base::UniqueFd* pipes[2] = {&stdout_fd_, &stderr_fd_};
  const LogStream streams[2] = {LogStream::kOut, LogStream::kErr};
  for (;;) {
    check_main();
    if (!failure.is_ok()) break;
    if (main_ended && !stdout_fd_.valid() && !stderr_fd_.valid()) break;
    if (main_ended && Clock::now() >= drain_until) {
      log_write(log_->sys("stopped reading the job's output " + std::to_string(kDrainLimit.count()) +
                          " s after it ended: a process it started outside its process group still holds "
                          "stdout/stderr open"));
      break;
    }
    if (term_pending && !main_ended && signal_job(SIGTERM) > 0) term_pending = false;

    // Sleep until output, a request or the main process's end, or the next deadline.
    int timeout_ms = -1;
    auto wake_by = [&timeout_ms](int ms) { timeout_ms = timeout_ms < 0 ? ms : std::min(timeout_ms, ms); };
    if (!main_ended && (!exit_fd_.valid() || term_pending)) wake_by(kTickMs);
    if (!main_ended && kill_pending) wake_by(milliseconds_until(kill_at));
    if (main_ended) wake_by(milliseconds_until(drain_until));
    pollfd polled[4] = {{stdout_fd_.get(), POLLIN, 0},
                        {stderr_fd_.get(), POLLIN, 0},
                        {control_read_.get(), POLLIN, 0},
                        {main_ended ? -1 : exit_fd_.get(), POLLIN, 0}};
    if (::poll(polled, 4, timeout_ms) < 0) {
      if (errno == EINTR) continue;  // the supervisor's signal handler ran (and wrote its request)
      failure = base::io_error(std::string("pumping the job's output: poll: ") + std::strerror(errno));
      break;
    }
    // One read per stream per round keeps both streams and the requests served under a flood.
    for (int i = 0; i < 2; ++i) {
      if (polled[i].revents == 0) continue;
      ssize_t got = ::read(pipes[i]->get(), buffer, sizeof buffer);
      if (got > 0) {
        log_write(log_->write(streams[i], std::string_view(buffer, static_cast<size_t>(got))));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        pipes[i]->reset();
      }
    }
    // A request that arrives with the job's end counts only if the job hadn't ended on its own.
    check_main();
    if (!failure.is_ok()) break;
    if (polled[2].revents != 0) {
      char requests[64];
      ssize_t got = ::read(control_read_.get(), requests, sizeof requests);
      for (ssize_t i = 0; i < got && !main_ended; ++i) {
        if (requests[i] == kAbortByte && request != Request::kAbort) {
          request = Request::kAbort;
          log_write(log_->sys("abort requested: killing the job (SIGKILL)"));
          kill_job();
          term_pending = false;
          kill_pending = false;
        } else if (requests[i] == kStopByte && request == Request::kNone) {
          request = Request::kStop;
          log_write(log_->sys("stop requested: sending SIGTERM to the job; SIGKILL in " +
                              std::to_string(grace_seconds_) + " s if it still runs"));
          term_pending = signal_job(SIGTERM) == 0;
          kill_pending = true;
          kill_at = Clock::now() + std::chrono::seconds(grace_seconds_);
        }
      }
    }
    if (kill_pending && !main_ended && Clock::now() >= kill_at) {
      log_write(
          log_->sys("the job still runs " + std::to_string(grace_seconds_) + " s after SIGTERM: sending SIGKILL"));
      kill_job();
      term_pending = false;
      kill_pending = false;
    }
  }
  log_write(log_->flush());
  if (!failure.is_ok()) {
    if (!reaped_) {
      kill_job();
      while (::waitpid(pid_, &wait_status, 0) < 0 && errno == EINTR) {
      }
      reaped_ = true;
    }
    return failure;
  }
  stdout_fd_.reset();  // a process that escaped the job gets SIGPIPE from now on
  stderr_fd_.reset();

  result.exit_code = base::exit_code_from_wait_status(wait_status);
  if (WIFSIGNALED(wait_status)) {
    result.term_signal = WTERMSIG(wait_status);
  } else if (sandbox_ && result.exit_code > 128 && result.exit_code <= 128 + 64) {
    result.term_signal = result.exit_code - 128;  // bwrap passes a signal on as 128+signal
  }
  result.stopped = request == Request::kStop;
  result.aborted = request == Request::kAbort;
  return result;
}

std::map<std::string, std::string> current_environment() {
  std::map<std::string, std::string> variables;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string text = *entry;
    size_t equals = text.find('=');
    if (equals != std::string::npos) variables[text.substr(0, equals)] = text.substr(equals + 1);
  }
  return variables;
}

std::vector<std::string> flatten_environment(std::map<std::string, std::string> variables,
                                             const std::vector<std::string>& entries,
                                             const std::map<std::string, std::string>& secrets) {
  for (const std::string& entry : entries) {
    size_t equals = entry.find('=');
    variables[entry.substr(0, equals)] = equals == std::string::npos ? "" : entry.substr(equals + 1);
  }
  for (const auto& [name, value] : secrets) variables[name] = value;
  std::vector<std::string> env;
  for (const auto& [name, value] : variables) env.push_back(name + "=" + value);
  return env;
}

void prepend_to_path(std::map<std::string, std::string>& variables, const std::string& dir) {
  auto path = variables.find("PATH");
  variables["PATH"] = path == variables.end() ? dir : dir + ":" + path->second;
}

namespace {

std::atomic<Job*> g_stop_target{nullptr};
volatile sig_atomic_t g_stop_request = 0;  // 1: stop, 2: abort

void on_stop_signal(int signal_number) {
  int request = signal_number == SIGUSR1 ? 2 : 1;
  if (g_stop_request < request) g_stop_request = request;
  if (Job* job = g_stop_target.load()) request == 2 ? job->request_abort() : job->request_stop();
}

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction action{};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGUSR1, &action, nullptr);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
}

void attach_stop_signals(Job* job) {
  g_stop_target.store(job);
  if (job == nullptr) return;
  if (g_stop_request == 1) job->request_stop();
  if (g_stop_request == 2) job->request_abort();
}

int pending_stop_request() { return g_stop_request; }

}  // namespace sdstack::flow
