// Remote runs: the local supervisor's side (see remote_run.h; the remote side is agent.cc).
#include "flow/remote_run.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <thread>

#include "base/file.h"
#include "base/sha256.h"
#include "base/strings.h"
#include "base/subprocess.h"
#include "flow/agent.h"
#include "flow/expressions.h"
#include "flow/job.h"
#include "flow/run_log.h"
#include "flow/slurm.h"

namespace sdstack::flow {
namespace {

namespace fs = std::filesystem;
using base::ProcessOutput;
using base::Result;
using base::Status;
using Clock = std::chrono::steady_clock;

// Where runs live on a host when its backend names no folder: relative to the login's home.
constexpr const char* kDefaultRemoteDir = ".sdstack-remote";

// A path as a shell word: "~"-relative paths (relative to the login's home) stay expandable.
std::string shell_path(const std::string& path) {
  if (!path.empty() && path[0] == '/') return shell_quote(path);
  return "\"$HOME\"/" + shell_quote(path);
}

std::string shell_command(const std::vector<std::string>& argv) {
  std::string command;
  for (const std::string& word : argv) {
    if (!command.empty()) command += ' ';
    command += shell_quote(word);
  }
  return command;
}

// The glibc parts every Linux has and that must match the kernel-facing loader: never bundled.
bool system_library(const std::string& name) {
  for (const char* prefix : {"linux-vdso", "ld-linux", "libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so",
                             "libresolv.so", "libutil.so"}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

// The bundle's folder here ($SDSTACK_HOME/bundles/<hash>), made once per sdstack binary.
Result<std::string> local_bundle(const StoreLayout& layout, std::string* hash_out) {
  std::error_code error;
  const std::string self = fs::read_symlink("/proc/self/exe", error).string();
  if (error) return base::io_error("cannot find this sdstack program (/proc/self/exe): " + error.message());
  SD_ASSIGN_OR_RETURN(std::string digest, base::sha256_file(self));
  const std::string hash = digest.substr(0, 16);
  *hash_out = hash;
  const std::string bundle = base::join_path(base::join_path(layout.root, "bundles"), hash);
  if (base::file_exists(base::join_path(bundle, "sdstack"))) return bundle;

  const std::string building = base::temporary_path(bundle);
  fs::create_directories(base::join_path(building, "lib"), error);
  if (error) return base::io_error(building + ": cannot create: " + error.message());
  auto cleanup = [&](Status status) {
    fs::remove_all(building, error);
    return status;
  };
  auto ldd = base::run_process({"ldd", self});
  if (!ldd.is_ok() || ldd->exit_code != 0) {
    return cleanup(base::io_error("cannot list the libraries sdstack loads (ldd " + self + ")"));
  }
  std::istringstream lines(ldd->out);
  std::string line;
  while (std::getline(lines, line)) {
    size_t arrow = line.find("=> /");
    if (arrow == std::string::npos) continue;
    std::string name = line.substr(0, arrow);
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    std::string path = line.substr(arrow + 3, line.find(" (", arrow) - arrow - 3);
    if (system_library(name)) continue;
    fs::copy_file(path, base::join_path(base::join_path(building, "lib"), name), error);
    if (error) return cleanup(base::io_error("bundling " + path + ": " + error.message()));
  }
  fs::copy_file(self, base::join_path(building, "lib/sdstack"), error);
  if (error) return cleanup(base::io_error("bundling " + self + ": " + error.message()));
  // The wrapper finds the bundled libraries without changing what the job's own programs load:
  // the agent takes its variables out of the job's environment again.
  const std::string wrapper =
      "#!/bin/sh\n"
      "here=$(dirname \"$(readlink -f \"$0\")\")\n"
      "export SDSTACK_BUNDLE=\"$here\" SDSTACK_ORIGINAL_LD_LIBRARY_PATH=\"${LD_LIBRARY_PATH:-}\"\n"
      "export LD_LIBRARY_PATH=\"$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\"\n"
      "exec \"$here/lib/sdstack\" \"$@\"\n";
  Status wrote = base::write_file_atomic(base::join_path(building, "sdstack"), wrapper);
  if (!wrote.is_ok()) return cleanup(wrote);
  fs::permissions(base::join_path(building, "sdstack"), fs::perms::owner_all | fs::perms::group_read |
                                                            fs::perms::group_exec | fs::perms::others_read |
                                                            fs::perms::others_exec,
                  error);
  fs::rename(building, bundle, error);
  if (error) {
    fs::remove_all(building, error);
    if (!base::file_exists(base::join_path(bundle, "sdstack"))) {
      return base::io_error(bundle + ": cannot put the bundle in place");
    }
  }
  return bundle;
}

// What a process wrote into a memfd (its first 4 KiB).
std::string read_back(int fd) {
  std::string text(4096, '\0');
  ssize_t got = pread(fd, text.data(), text.size(), 0);
  text.resize(got > 0 ? static_cast<size_t>(got) : 0);
  return text;
}

// Streams local folder `from` as a tar archive into `command` on `host` (which reads it on stdin).
Status upload_folder(const RemoteHost& host, const std::string& from, const std::string& command,
                     const std::string& doing) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return base::io_error(doing + ": pipe: " + std::strerror(errno));
  base::UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  // tar's complaints go to memory, read after it ends: an unread pipe could stall it.
  base::UniqueFd errors(memfd_create("tar-errors", MFD_CLOEXEC));
  base::SpawnOptions tar;
  tar.argv = {"tar", "-C", from, "-cf", "-", "."};
  tar.stdout_fd = write_end.get();
  tar.stderr_fd = errors.get();
  SD_ASSIGN_OR_RETURN(base::ChildProcess child, base::spawn_process(tar));
  write_end.reset();
  auto sent = host.run(command, read_end.get());
  read_end.reset();
  int status = 0;
  waitpid(child.pid, &status, 0);
  if (!sent.is_ok()) return sent.status();
  if (sent->exit_code != 0) return host.failure(doing, *sent);
  if (base::exit_code_from_wait_status(status) != 0) {
    return base::internal_error(doing + ": tar of " + from + " failed: " + read_back(errors.get()));
  }
  return Status::ok();
}

// Runs `command` on `host`, which writes a tar archive on stdout, and unpacks it into local `to`.
Status download_folder(const RemoteHost& host, const std::string& command, const std::string& to,
                       const std::string& doing) {
  std::error_code error;
  fs::create_directories(to, error);
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return base::io_error(doing + ": pipe: " + std::strerror(errno));
  base::UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  base::UniqueFd errors(memfd_create("tar-errors", MFD_CLOEXEC));
  base::SpawnOptions tar;
  tar.argv = {"tar", "-C", to, "-xf", "-"};
  tar.stdin_fd = read_end.get();
  tar.stdout_fd = errors.get();
  tar.stderr_fd = errors.get();
  SD_ASSIGN_OR_RETURN(base::ChildProcess child, base::spawn_process(tar));
  read_end.reset();
  auto got = host.run(command, -1, write_end.get());
  write_end.reset();
  int status = 0;
  waitpid(child.pid, &status, 0);
  if (!got.is_ok()) return got.status();
  if (got->exit_code != 0) return host.failure(doing, *got);
  if (base::exit_code_from_wait_status(status) != 0) {
    return base::internal_error(doing + ": unpacking into " + to + " failed: " + read_back(errors.get()));
  }
  return Status::ok();
}

const BackendConfig* backend_of(const Config& config, const Offer& offer) { return config.find(offer.backend); }

std::string base_dir_of(const BackendConfig& backend) { return backend.dir.empty() ? kDefaultRemoteDir : backend.dir; }

// `SLURM_CONF=... ` before a Slurm command when the backend names its config file.
std::string slurm_prefix(const BackendConfig& backend) {
  return backend.slurm_conf.empty() ? "" : "SLURM_CONF=" + shell_quote(backend.slurm_conf) + " ";
}


// One attempt's outcome.
struct Attempt {
  enum class Ending { kFinished, kInfrastructure, kError };
  Ending ending = Ending::kError;
  RemoteResult result;   // kFinished
  std::string reason;    // kInfrastructure / kError
  bool offer_gone = false;  // the host can't be reached: a retry goes elsewhere
};

class RemoteSupervisor {
 public:
  RemoteSupervisor(const StoreLayout& layout, const JobPlan& plan, const Config& config, LogWriter& log)
      : layout_(layout), plan_(plan), config_(config), log_(log) {}

  // Runs the job on `offer`; `attempt` numbers the remote folder.
  Attempt run_on(const Offer& offer, int attempt, const AgentSecrets& secrets) {
    const BackendConfig& backend = *backend_of(config_, offer);
    RemoteHost host = offer_host(config_, offer, layout_);
    auto fail = [](const std::string& reason, bool infrastructure) {
      Attempt outcome;
      outcome.ending = infrastructure ? Attempt::Ending::kInfrastructure : Attempt::Ending::kError;
      outcome.reason = reason;
      outcome.offer_gone = infrastructure;
      return outcome;
    };
    std::string run_dir;  // set once the run's folder exists there
    auto setup_failure = [&](const Status& status) {
      // Not reaching the host before the job started is the infrastructure's failure too (an
      // unreachable host is an IoError; a command that ran there and failed is not). A folder made
      // on a host that answers is removed.
      bool unreachable = status.code() == base::StatusCode::kIoError;
      if (!unreachable && !run_dir.empty()) (void)host.run("rm -rf " + shell_quote(run_dir), -1, -1, 30);
      return fail(status.message(), unreachable);
    };

    // 1. The remote folders, made absolute, and the agent.
    auto base = host.run("mkdir -p " + shell_path(base_dir_of(backend)) + " && cd " +
                             shell_path(base_dir_of(backend)) + " && pwd -P",
                         -1, -1, config_.lost_after_seconds);
    if (!base.is_ok()) return setup_failure(base.status());
    if (base->exit_code != 0) return setup_failure(host.failure("making the run's folder", *base));
    // The last line: a login shell may print a banner first.
    std::string base_dir = base->out;
    while (!base_dir.empty() && base_dir.back() == '\n') base_dir.pop_back();
    base_dir = base_dir.substr(base_dir.rfind('\n') == std::string::npos ? 0 : base_dir.rfind('\n') + 1);
    if (base_dir.empty() || base_dir[0] != '/') {
      return fail("making the run's folder on " + host.name() + ": expected its absolute path, got '" + base_dir +
                      "' (does the login shell print to stdout?)",
                  false);
    }
    auto agent = install_agent(host, base_dir, layout_);
    if (!agent.is_ok()) return setup_failure(agent.status());
    const std::string folder = base_dir + "/runs/" + project_key(plan_.project_dir) + "/" + plan_.run + "." +
                               std::to_string(attempt);

    // 2. The working dir and the plan.
    (void)log_.sys("sending the working dir to " + host.name() + ":" + folder);
    run_dir = folder;
    Status sent = upload_folder(host, base::join_path(fs::path(plan_.log_path).parent_path().string(), "work"),
                                "rm -rf " + shell_quote(run_dir) + " && mkdir -p " + shell_quote(run_dir + "/work") +
                                    " && tar -C " + shell_quote(run_dir + "/work") + " -xf -",
                                "sending the working dir");
    if (!sent.is_ok()) return setup_failure(sent);
    RemotePlan remote = remote_plan();
    auto written = host.run_with_input("cat > " + shell_quote(run_dir + "/job.json"), remote_plan_to_json(remote),
                                       config_.lost_after_seconds);
    if (!written.is_ok()) return setup_failure(written.status());
    if (written->exit_code != 0) return setup_failure(host.failure("writing the run's plan", *written));

    // 3. Start the agent.
    std::string job_id;
    if (offer.type == BackendConfig::Type::kSsh) {
      auto started = host.run_with_input(shell_quote(*agent) + " __agent start --dir " + shell_quote(run_dir),
                                         agent_secrets_to_json(secrets), config_.lost_after_seconds);
      if (!started.is_ok()) return setup_failure(started.status());
      if (started->exit_code != 0) return setup_failure(host.failure("starting sdstack's agent", *started));
      (void)log_.sys("started on " + offer.id() + " (" + host.name() + ", agent pid " +
                     started->out.substr(0, started->out.find('\n')) + ")");
    } else {
      auto submitted = submit_slurm(host, backend, offer, *agent, run_dir, secrets);
      if (!submitted.is_ok()) return setup_failure(submitted.status());
      job_id = *submitted;
      (void)log_.sys("submitted to Slurm on " + offer.id() + " as job " + job_id);
    }

    // 4. Follow it.
    Attempt outcome = follow(host, backend, offer, *agent, run_dir, job_id);

    // 5. Its artifacts, then its folder. A lost host keeps it (the job may still run there); a Slurm
    // job whose login host is lost is cancelled if the login answers again in time.
    if (outcome.offer_gone) {
      if (!job_id.empty()) (void)host.run(slurm_prefix(backend) + shell_command(scancel_argv(job_id, true)), -1, -1, 30);
      return outcome;
    }
    if (outcome.ending == Attempt::Ending::kFinished && outcome.result.artifacts == "store") {
      Status fetched = fetch_artifacts(host, run_dir);
      if (!fetched.is_ok()) outcome = fail("fetching the artifacts: " + fetched.message(), false);
    }
    (void)host.run("rm -rf " + shell_quote(run_dir), -1, -1, config_.lost_after_seconds);
    return outcome;
  }

 private:
  RemotePlan remote_plan() const {
    RemotePlan remote;
    remote.run = plan_.run;
    remote.argv = plan_.argv;
    remote.env = plan_.env;
    const std::string work_root = base::join_path(fs::path(plan_.log_path).parent_path().string(), "work");
    remote.work_dir = "work" + plan_.work_dir.substr(std::min(plan_.work_dir.size(), work_root.size()));
    remote.artifact_paths = plan_.artifact_paths;
    remote.artifact_key = artifact_key(plan_.project_dir, plan_.run);
    remote.grace_seconds = plan_.grace_seconds;
    remote.time_limit_seconds = plan_.time_limit_seconds;
    remote.secret_names = secret_names_;
    remote.s3 = config_.artifacts;
    remote.s3_deps = plan_.s3_deps;
    return remote;
  }

  Result<std::string> submit_slurm(const RemoteHost& host, const BackendConfig& backend, const Offer& offer,
                                   const std::string& agent, const std::string& run_dir, const AgentSecrets& secrets) {
    const std::string script_path = run_dir + "/job.sh";
    auto script = host.run_with_input("cat > " + shell_quote(script_path),
                                      batch_script({agent, "__agent", "run", "--dir", run_dir}),
                                      config_.lost_after_seconds);
    if (!script.is_ok()) return script.status();
    if (script->exit_code != 0) return host.failure("writing the batch script", *script);
    Resources wanted = plan_.resources;
    SlurmJobRequest request;
    request.job_name = "sdstack-" + plan_.run;
    request.partition = offer.target;
    request.account = backend.account;
    request.qos = backend.qos;
    request.cpus = wanted.cpu;
    request.memory_bytes = wanted.memory_bytes;
    request.gpu_count = wanted.gpu.count;
    request.gpu_name = wanted.gpu.name;
    // Slurm counts minutes; its limit leaves room for the agent's own (a graceful stop, the grace
    // period and the artifacts' saving) to act first.
    if (plan_.time_limit_seconds > 0) {
      request.time_limit_minutes = (plan_.time_limit_seconds + plan_.grace_seconds + 120 + 59) / 60;
    }
    request.export_env_names = {"ALL"};  // sbatch's environment, whatever SBATCH_EXPORT says
    request.work_dir = run_dir;
    request.output_path = run_dir + "/slurm.out";
    request.script_path = script_path;
    // Secrets and the S3 credentials reach the job through sbatch's environment (which sbatch
    // passes on whole by default), read from stdin here: never in a file or a command line on
    // the login host.
    std::string exports;
    auto add = [&](const std::string& name, const std::string& value) {
      exports += "export " + name + "=" + shell_quote(value) + "\n";
    };
    for (const auto& [name, value] : secrets.env) add(name, value);
    if (!secrets.s3_access_key.empty()) add("SDSTACK_S3_ACCESS_KEY", secrets.s3_access_key);
    if (!secrets.s3_secret_key.empty()) add("SDSTACK_S3_SECRET_KEY", secrets.s3_secret_key);
    auto submitted = host.run_with_input("eval \"$(cat)\"; " + slurm_prefix(backend) + shell_command(sbatch_argv(request)),
                                         exports, config_.lost_after_seconds);
    if (!submitted.is_ok()) return submitted.status();
    if (submitted->exit_code != 0) {
      return base::invalid_argument("sbatch refused the run on " + offer.id() + ": " + submitted->err);
    }
    return parse_sbatch(submitted->out);
  }

  // Asks the job to stop (graceful) or abort; returns whether the request reached it.
  // A running Slurm job's graceful stop is SIGTERM to its batch step alone, the agent, which
  // stops the job with the run's grace period and saves the artifacts; a pending one is cancelled.
  bool send_stop(const RemoteHost& host, const BackendConfig& backend, const std::string& agent,
                 const std::string& run_dir, const std::string& job_id, bool abort, bool agent_running) {
    std::vector<std::string> scancel = scancel_argv(job_id, abort);
    if (!abort && agent_running) scancel = {"scancel", "--batch", "--signal=TERM", job_id};
    std::string command = job_id.empty()
                              ? shell_quote(agent) + " __agent stop --dir " + shell_quote(run_dir) + (abort ? " --abort" : "")
                              : slurm_prefix(backend) + shell_command(scancel);
    auto sent = host.run(command, -1, -1, config_.lost_after_seconds);
    bool ok = sent.is_ok() && sent->exit_code == 0;
    (void)log_.sys(std::string(abort ? "abort" : "graceful stop") + (ok ? " sent to " : " could not reach ") +
                   host.name() + (job_id.empty() ? "" : " (scancel " + job_id + ")"));
    return ok;
  }

  Result<SlurmJobState> slurm_state(const RemoteHost& host, const BackendConfig& backend, const std::string& job_id) {
    return query_slurm_job_state(job_id, [&](const std::vector<std::string>& argv) {
      return host.run(slurm_prefix(backend) + shell_command(argv), -1, -1, config_.lost_after_seconds);
    });
  }

  Attempt follow(const RemoteHost& host, const BackendConfig& backend, const Offer& offer, const std::string& agent,
                 const std::string& run_dir, const std::string& job_id) {
    Attempt outcome;
    int64_t offset = 0;
    int sent_request = 0;
    Clock::time_point last_contact = Clock::now();
    std::optional<SlurmJobState> slurm_end;
    Clock::time_point slurm_end_seen, last_slurm_query;
    bool agent_running = false;
    int unreadable = 0;
    for (;;) {
      if (int request = pending_stop_request(); request > sent_request) {
        if (send_stop(host, backend, agent, run_dir, job_id, request == 2, agent_running)) sent_request = request;
      }
      auto polled = host.run(shell_quote(agent) + " __agent poll --dir " + shell_quote(run_dir) + " --offset " +
                                 std::to_string(offset),
                             -1, -1, config_.lost_after_seconds);
      bool reached = polled.is_ok() && !host.unreachable(*polled) && polled->exit_code == 0;
      if (reached) {
        last_contact = Clock::now();
        auto poll = parse_agent_poll(polled->out);
        if (!poll.is_ok() && ++unreadable >= 10) {
          outcome.ending = Attempt::Ending::kError;
          outcome.reason = "the agent's answers on " + host.name() + " can't be read (" + poll.status().message() +
                           "); does the login shell print to stdout?";
          return outcome;
        }
        if (poll.is_ok()) {
          unreadable = 0;
          agent_running = agent_running || poll->state != AgentPoll::State::kStarting;
          if (!poll->log.empty()) (void)log_.append_lines(poll->log);
          offset = poll->log_size;
          if (poll->state == AgentPoll::State::kFinished && poll->log.empty()) {
            outcome.ending = Attempt::Ending::kFinished;
            outcome.result = *poll->result;
            if (!job_id.empty()) override_with_slurm_cause(host, backend, job_id, sent_request > 0, &outcome);
            return outcome;
          }
          if (poll->state == AgentPoll::State::kGone && poll->log.empty() && job_id.empty()) {
            outcome.ending = Attempt::Ending::kInfrastructure;
            outcome.reason = "sdstack's agent on " + offer.id() + " ended without finishing the run (the host "
                             "restarted, or something killed it)";
            outcome.offer_gone = true;
            return outcome;
          }
        }
      } else if (Clock::now() - last_contact > std::chrono::seconds(config_.lost_after_seconds)) {
        outcome.ending = Attempt::Ending::kInfrastructure;
        outcome.reason = "host " + host.name() + " (" + offer.id() + ") lost: no answer for " +
                         std::to_string(config_.lost_after_seconds) + " s";
        outcome.offer_gone = true;
        return outcome;
      }
      if (!job_id.empty() && reached) {
        // A Slurm job that left the queue without the agent's result: Slurm says why. Asked every
        // few seconds, not at every poll; a job that completed cleanly gets a minute for its
        // result.json to show on the shared file system (NFS caches lookups).
        if (!slurm_end && Clock::now() - last_slurm_query > std::chrono::seconds(5)) {
          last_slurm_query = Clock::now();
          auto state = slurm_state(host, backend, job_id);
          if (state.is_ok() && state->phase == SlurmJobState::Phase::kFinished) {
            slurm_end = *state;
            slurm_end_seen = Clock::now();
          }
        } else if (slurm_end &&
                   Clock::now() - slurm_end_seen > std::chrono::seconds(
                                                       slurm_end->cause == SlurmJobState::Cause::kNone ? 60 : 3)) {
          outcome.ending = slurm_end->infrastructure_failure() ? Attempt::Ending::kInfrastructure
                                                               : Attempt::Ending::kFinished;
          outcome.reason = slurm_end->describe();
          outcome.result.status = sent_request == 2 ? "aborted" : sent_request == 1 ? "stopped" : "failed";
          outcome.result.exit_code = slurm_end->exit_code;
          outcome.result.reason = sent_request > 0 ? (sent_request == 2 ? "aborted by the user" : "stopped by the user")
                                                   : "Slurm job " + job_id + ": " + slurm_end->describe();
          outcome.result.artifacts = "none";
          return outcome;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(700));
    }
  }

  // Slurm knows better than the agent why a job's process died (the memory limit's kill, say).
  // A stop sdstack did not send came from Slurm (scancel by someone else, the time limit, a
  // preemption): the run failed, for Slurm's reason.
  void override_with_slurm_cause(const RemoteHost& host, const BackendConfig& backend, const std::string& job_id,
                                 bool we_stopped, Attempt* outcome) {
    bool stopped_by_slurm = outcome->result.status == "stopped" && !we_stopped;
    if (outcome->result.status != "failed" && !stopped_by_slurm) return;
    for (int tries = 0; tries < 10; ++tries) {
      auto state = slurm_state(host, backend, job_id);
      if (state.is_ok() && state->phase == SlurmJobState::Phase::kFinished) {
        if (state->cause != SlurmJobState::Cause::kNone && state->cause != SlurmJobState::Cause::kFailed) {
          outcome->result.reason = "Slurm job " + job_id + ": " + state->describe();
          if (stopped_by_slurm) outcome->result.status = "failed";
        }
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }

  Status fetch_artifacts(const RemoteHost& host, const std::string& run_dir) {
    const std::string key = artifact_key(plan_.project_dir, plan_.run);
    const std::string staging = base::temporary_path(base::join_path(layout_.root, "incoming-" + plan_.run));
    Status downloaded = download_folder(host, "tar -C " + shell_quote(run_dir + "/store") + " -cf - .", staging,
                                        "fetching the artifacts");
    std::error_code ignored;
    if (!downloaded.is_ok()) {
      fs::remove_all(staging, ignored);
      return downloaded;
    }
    ArtifactStore incoming(staging);
    ArtifactStore local(layout_.artifacts());
    Status pushed = incoming.push(key, local);
    fs::remove_all(staging, ignored);
    return pushed;
  }

 public:
  std::vector<std::string> secret_names_;

 private:
  const StoreLayout& layout_;
  const JobPlan& plan_;
  const Config& config_;
  LogWriter& log_;
};

}  // namespace

std::string config_path(const StoreLayout& layout) { return base::join_path(layout.root, "config.yaml"); }

RemoteHost offer_host(const Config& config, const Offer& offer, const StoreLayout& layout) {
  const BackendConfig& backend = *config.find(offer.backend);
  // Connecting and a silent link are both given up well within lost_after, so that polls fail in time.
  int connect = std::max(2, std::min(10, config.lost_after_seconds / 3));
  int alive = std::max(1, std::min(5, config.lost_after_seconds / 6));
  if (backend.type == BackendConfig::Type::kSsh) {
    return RemoteHost::over_ssh(backend.hosts[offer.index].login, layout.root, connect, alive);
  }
  if (backend.local_login) return RemoteHost::local();
  return RemoteHost::over_ssh(backend.login, layout.root, connect, alive);
}

Result<std::string> install_agent(const RemoteHost& host, const std::string& base_dir, const StoreLayout& layout) {
  std::string hash;
  SD_ASSIGN_OR_RETURN(std::string bundle, local_bundle(layout, &hash));
  const std::string target = (base_dir.empty() ? std::string(kDefaultRemoteDir) : base_dir) + "/bin/" + hash;
  const std::string wrapper = target + "/sdstack";
  auto present = host.run("test -x " + shell_path(wrapper));
  if (!present.is_ok()) return present.status();
  if (host.unreachable(*present)) return host.failure("looking for sdstack's agent", *present);
  if (present->exit_code != 0) {
    // Unpacked beside its final name, then renamed: a host never has half a bundle under it.
    const std::string install = "mkdir -p " + shell_path(target + ".tmp") + " && t=$(mktemp -d " +
                                shell_path(target + ".tmp/XXXXXX") + ") && tar -C \"$t\" -xf - && { mv -T \"$t\" " +
                                shell_path(target) + " 2>/dev/null || rm -rf \"$t\"; } && test -x " + shell_path(wrapper);
    SD_RETURN_IF_ERROR(upload_folder(host, bundle, install, "installing sdstack on " + host.name()));
  }
  if (wrapper[0] == '/') return wrapper;
  auto home = host.run("printf %s \"$HOME\"");
  if (!home.is_ok()) return home.status();
  if (home->exit_code != 0) return host.failure("finding the login's home", *home);
  return home->out + "/" + wrapper;
}

Status detect_ssh_hosts(Config& config, const std::string& name, const StoreLayout& layout) {
  bool found = false;
  for (BackendConfig& backend : config.backends) {
    if (backend.type != BackendConfig::Type::kSsh || (!name.empty() && backend.name != name)) continue;
    found = true;
    for (size_t i = 0; i < backend.hosts.size(); ++i) {
      Offer offer{backend.name, backend.type, backend.hosts[i].login.host, i, {}, 0, false};
      RemoteHost host = offer_host(config, offer, layout);
      auto agent = install_agent(host, base_dir_of(backend), layout);
      if (!agent.is_ok()) return agent.status().with_context("backend '" + backend.name + "'");
      auto machine = host.run(shell_quote(*agent) + " __agent machine", -1, -1, 60);
      if (!machine.is_ok()) return machine.status();
      if (machine->exit_code != 0) return host.failure("detecting its resources", *machine);
      SD_ASSIGN_OR_RETURN(backend.hosts[i].resources, machine_from_json(machine->out));
    }
  }
  if (!found && !name.empty()) return base::not_found("no SSH backend '" + name + "' in the config");
  return Status::ok();
}

Status detect_slurm_partitions(BackendConfig& backend, const StoreLayout& layout) {
  RemoteHost host = backend.local_login ? RemoteHost::local() : RemoteHost::over_ssh(backend.login, layout.root);
  auto output = host.run(slurm_prefix(backend) + shell_command(sinfo_argv()), -1, -1, 60);
  if (!output.is_ok()) return output.status();
  if (output->exit_code != 0) return host.failure("sinfo (listing the cluster's partitions)", *output);
  SD_ASSIGN_OR_RETURN(std::vector<SlurmPartition> partitions, parse_sinfo(output->out));
  std::vector<SlurmPartitionConfig> detected;
  for (const SlurmPartition& partition : partitions) {
    SlurmPartitionConfig config;
    config.name = partition.name;
    config.cpus = partition.cpus_per_node;
    config.memory_bytes = partition.memory_bytes_per_node;
    config.gpus = partition.gpus_per_node;
    config.gpu_name = partition.gpu_name;
    for (const SlurmPartitionConfig& known : backend.partitions) {
      if (known.name == config.name) config.price = known.price;
    }
    detected.push_back(config);
  }
  if (detected.empty()) return base::not_found("sinfo lists no partitions on " + host.name());
  backend.partitions = detected;
  return Status::ok();
}

Result<std::unique_ptr<S3Client>> artifact_s3_client(const Config& config) {
  if (!config.artifacts) return base::not_found("no S3 artifact store is configured (`sdstack config s3`)");
  S3Config s3 = s3_config_of(*config.artifacts);
  SD_RETURN_IF_ERROR(load_s3_credentials(s3, config.artifacts->credentials_file, config.artifacts->profile));
  return std::make_unique<S3Client>(s3);
}

Status ensure_local_artifacts(const StoreLayout& layout, ArtifactStore& local, const std::string& key) {
  SD_ASSIGN_OR_RETURN(auto manifest, local.manifest(key));
  if (manifest) return Status::ok();
  SD_ASSIGN_OR_RETURN(Config config, load_config(config_path(layout)));
  if (!config.artifacts) return base::not_found("no artifacts saved under " + key);
  SD_ASSIGN_OR_RETURN(std::unique_ptr<S3Client> client, artifact_s3_client(config));
  SD_ASSIGN_OR_RETURN(auto remote, s3_manifest(*client, key));
  if (!remote) return base::not_found("no artifacts saved under " + key + ", here or in the S3 store");
  return pull_from_s3(*client, key, local);
}

int supervise_remote(const StoreLayout& layout, const std::string& project_dir, const std::string& run,
                     const JobPlan& plan) {
  auto store = RunStore::open(layout.database());
  if (!store.is_ok()) return 1;
  auto log = LogWriter::open(plan.log_path);
  auto fail = [&](const std::string& reason) {
    return fail_run(**store, log.is_ok() ? log->get() : nullptr, project_dir, run, reason);
  };
  if (!log.is_ok()) return fail(log.status().message());
  auto config = load_config(config_path(layout));
  if (!config.is_ok()) return fail(config.status().message());
  auto secrets = (*store)->secrets(project_dir);
  if (!secrets.is_ok()) return fail(secrets.status().message());
  AgentSecrets agent_secrets;
  std::vector<std::string> secret_values;
  for (const auto& [name, value] : *secrets) {
    agent_secrets.env[name] = value;
    secret_values.push_back(value);
  }
  if (config->artifacts) {
    auto client_config = artifact_s3_client(*config);
    if (!client_config.is_ok()) return fail(client_config.status().message());
    agent_secrets.s3_access_key = (*client_config)->config().access_key;
    agent_secrets.s3_secret_key = (*client_config)->config().secret_key;
    secret_values.push_back(agent_secrets.s3_secret_key);
  }
  (*log)->set_secrets(secret_values);

  auto started = (*store)->transition(project_dir, run, {RunStatus::kSubmitted}, RunStatus::kRunning);
  if (!started.is_ok()) return fail(started.status().message());
  if (!*started) return 0;  // stopped before it began
  (void)(*store)->set_supervisor_pid(project_dir, run, getpid());

  // The offers chosen at submission, in order, as the config has them now.
  std::vector<Offer> offers;
  for (const Offer& offer : list_offers(*config)) {
    if (std::find(plan.offers.begin(), plan.offers.end(), offer.id()) != plan.offers.end()) offers.push_back(offer);
  }
  std::stable_sort(offers.begin(), offers.end(), [&](const Offer& a, const Offer& b) {
    return std::find(plan.offers.begin(), plan.offers.end(), a.id()) <
           std::find(plan.offers.begin(), plan.offers.end(), b.id());
  });
  if (offers.empty()) return fail("none of the offers chosen at submission (" + base::join(plan.offers, ", ") +
                                  ") is in the config any more");

  RemoteSupervisor supervisor(layout, plan, *config, **log);
  for (const auto& [name, value] : *secrets) supervisor.secret_names_.push_back(name);
  // An infrastructure failure is retried on the same offer while it answers (Slurm puts the job on
  // another node), else on the next offer that is not gone.
  Attempt outcome;
  const int attempts = 1 + plan.retries;
  std::vector<bool> gone(offers.size(), false);
  size_t current = 0;
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    const Offer& offer = offers[current];
    (void)(*log)->sys("attempt " + std::to_string(attempt) + " of " + std::to_string(attempts) + ": offer " +
                      offer.id() + " (" + describe_machine(offer.resources) + ", " + format_price(offer.price) + ")");
    outcome = supervisor.run_on(offer, attempt, agent_secrets);
    if (outcome.ending != Attempt::Ending::kInfrastructure || pending_stop_request() > 0) break;
    (void)(*log)->sys(outcome.reason);
    if (outcome.offer_gone) gone[current] = true;
    size_t next = current;
    while (next < offers.size() && gone[next]) ++next;
    if (next == offers.size()) {
      if (attempt < attempts) (void)(*log)->sys("no other offer fits: not retrying");
      break;
    }
    current = next;
    if (attempt < attempts) (void)(*log)->sys("retrying on offer " + offers[current].id());
  }
  if (outcome.ending != Attempt::Ending::kFinished) return fail(outcome.reason);

  const RemoteResult& result = outcome.result;
  (void)(*store)->transition(project_dir, run, {RunStatus::kRunning}, RunStatus::kUploading);
  RunStatus status = result.status == "done"      ? RunStatus::kDone
                     : result.status == "stopped" ? RunStatus::kStopped
                     : result.status == "aborted" ? RunStatus::kAborted
                                                  : RunStatus::kFailed;
  if (result.artifacts == "s3") (void)(*log)->sys("artifacts are in the S3 store (s3://" + config->artifacts->bucket + ")");
  if (result.artifacts == "store") (void)(*log)->sys("artifacts fetched into the local store");
  (void)(*log)->sys(std::string(run_status_name(status)) + (result.reason.empty() ? "" : ": " + result.reason));
  (void)(*store)->transition(project_dir, run, {RunStatus::kUploading}, status, result.exit_code, result.reason);
  return 0;
}

}  // namespace sdstack::flow
