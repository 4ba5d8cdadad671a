// Running commands on a remote run's host (see remote_host.h).
#include "flow/remote_host.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "base/file.h"

extern char** environ;

namespace sdstack::flow {

using base::ProcessOutput;
using base::Result;

RemoteHost RemoteHost::local() { return RemoteHost(); }

RemoteHost RemoteHost::over_ssh(const SshLogin& login, const std::string& state_dir, int connect_timeout_seconds,
                                int alive_interval_seconds) {
  RemoteHost host;
  host.local_ = false;
  host.login_ = login;
  host.state_dir_ = state_dir;
  host.connect_timeout_ = connect_timeout_seconds;
  host.alive_interval_ = alive_interval_seconds;
  return host;
}

std::string RemoteHost::name() const { return local_ ? "this machine" : login_.display(); }

std::vector<std::string> RemoteHost::argv(const std::string& command) const {
  if (local_) return {"bash", "-c", command};
  std::vector<std::string> argv = {
      "ssh",
      "-o", "BatchMode=yes",  // keys only: never wait for a password prompt no one sees
      "-o", "ConnectTimeout=" + std::to_string(connect_timeout_),
      "-o", "ServerAliveInterval=" + std::to_string(alive_interval_),
      "-o", "ServerAliveCountMax=3",
      "-o", "StrictHostKeyChecking=accept-new",
      "-o", "UserKnownHostsFile=" + base::join_path(state_dir_, "known_hosts"),
      "-o", "LogLevel=ERROR",
  };
  if (login_.port > 0) argv.insert(argv.end(), {"-p", std::to_string(login_.port)});
  if (!login_.identity_file.empty()) argv.insert(argv.end(), {"-i", login_.identity_file, "-o", "IdentitiesOnly=yes"});
  if (!login_.jump_host.empty()) argv.insert(argv.end(), {"-J", login_.jump_host});
  argv.push_back(login_.user.empty() ? login_.host : login_.user + "@" + login_.host);
  // The remote login shell runs this one word; bash there reads it as a command line.
  argv.push_back("bash -c " + [&] {
    std::string quoted = "'";
    for (char c : command) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
  }());
  return argv;
}

Result<ProcessOutput> RemoteHost::run(const std::string& command, int stdin_fd, int stdout_fd, int timeout_seconds,
                                      const std::vector<std::string>& env) const {
  base::SpawnOptions options;
  options.argv = argv(command);
  if (timeout_seconds > 0) {
    options.argv.insert(options.argv.begin(), {"timeout", "--kill-after=5", std::to_string(timeout_seconds)});
  }
  options.stdin_fd = stdin_fd;
  options.stdout_fd = stdout_fd;
  std::vector<std::string> environment;
  if (!env.empty()) {
    for (char** entry = environ; *entry != nullptr; ++entry) environment.push_back(*entry);
    environment.insert(environment.end(), env.begin(), env.end());
    options.env = &environment;
  }
  return base::run_process(options);
}

Result<ProcessOutput> RemoteHost::run_with_input(const std::string& command, const std::string& input,
                                                 int timeout_seconds) const {
  base::UniqueFd memory(memfd_create("sdstack-input", MFD_CLOEXEC));
  if (!memory.valid()) return base::io_error(std::string("memfd_create: ") + std::strerror(errno));
  SD_RETURN_IF_ERROR(base::write_all(memory.get(), input, "a command's input"));
  ::lseek(memory.get(), 0, SEEK_SET);
  return run(command, memory.get(), -1, timeout_seconds);
}

bool RemoteHost::unreachable(const ProcessOutput& output) const {
  if (output.exit_code == 124 || output.exit_code == 137) return true;  // timeout(1) gave up on it
  return !local_ && output.exit_code == 255;
}

base::Status RemoteHost::failure(const std::string& doing, const ProcessOutput& output) const {
  std::string err = output.err;
  while (!err.empty() && (err.back() == '\n' || err.back() == '\r')) err.pop_back();
  if (unreachable(output)) {
    return base::io_error(doing + ": cannot reach " + name() + (err.empty() ? "" : ": " + err) +
                          " (check the host is up and `ssh " + login_.display() + "` works with its key)");
  }
  // It ran there and failed: not the network's doing (IoError means the host could not be reached).
  return base::internal_error(doing + " on " + name() + " failed (exit code " + std::to_string(output.exit_code) +
                              ")" + (err.empty() ? "" : ": " + err));
}

}  // namespace sdstack::flow
