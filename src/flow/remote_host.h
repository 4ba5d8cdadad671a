// A machine that remote runs use: reached with OpenSSH's client (BatchMode: keys only, never a
// prompt), or this machine itself (a Slurm cluster whose login node is where sdstack runs).
#pragma once

#include <string>
#include <vector>

#include "base/status.h"
#include "base/subprocess.h"
#include "flow/config.h"

namespace sdstack::flow {

class RemoteHost {
 public:
  static RemoteHost local();
  // `state_dir` keeps the known_hosts file sdstack uses (a host's key is accepted on first contact
  // and must not change afterwards). `connect_timeout_seconds` bounds connecting; a connection that
  // goes silent is dropped after about 3 × `alive_interval_seconds`.
  static RemoteHost over_ssh(const SshLogin& login, const std::string& state_dir, int connect_timeout_seconds = 10,
                             int alive_interval_seconds = 5);

  bool is_local() const { return local_; }
  // "this machine" or "root@10.0.0.2:2222".
  std::string name() const;

  // Runs `command`, a bash command line, on the host (stdin from `stdin_fd` and stdout into
  // `stdout_fd` when >= 0). `timeout_seconds` > 0 kills it after that long (reported as exit code
  // 124, like timeout(1)). `env` adds "K=V" entries to a local command's environment.
  base::Result<base::ProcessOutput> run(const std::string& command, int stdin_fd = -1, int stdout_fd = -1,
                                        int timeout_seconds = 0, const std::vector<std::string>& env = {}) const;
  // run() with `input` on stdin, held in memory only (a memfd): secrets travel this way.
  base::Result<base::ProcessOutput> run_with_input(const std::string& command, const std::string& input,
                                                   int timeout_seconds = 0) const;

  // Whether a run()'s result means the host could not be reached (ssh's own exit status 255, or a
  // timeout), as opposed to the command failing there.
  bool unreachable(const base::ProcessOutput& output) const;

  // The error for a command that failed on the host: what was being done, the host and its stderr.
  // IoError when the host could not be reached, Internal when the command ran there and failed.
  base::Status failure(const std::string& doing, const base::ProcessOutput& output) const;

 private:
  std::vector<std::string> argv(const std::string& command) const;

  bool local_ = true;
  SshLogin login_;
  std::string state_dir_;
  int connect_timeout_ = 10;
  int alive_interval_ = 5;
};

}  // namespace sdstack::flow
