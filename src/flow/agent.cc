// The remote side of a remote run (see agent.h).
#include "flow/agent.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "flow/artifact_store.h"
#include "flow/job.h"
#include "flow/local_run.h"
#include "flow/machine.h"
#include "flow/run_log.h"
#include "flow/s3.h"


namespace sdstack::flow {
namespace {

namespace fs = std::filesystem;
using base::Result;
using base::Status;
using json = nlohmann::json;

// The variables the bundle's wrapper script sets around the real binary (see remote_run.cc).
constexpr const char* kBundleDir = "SDSTACK_BUNDLE";
constexpr const char* kOriginalLibraryPath = "SDSTACK_ORIGINAL_LD_LIBRARY_PATH";
// The S3 credentials of a Slurm job, which can only come through its environment.
constexpr const char* kS3AccessVariable = "SDSTACK_S3_ACCESS_KEY";
constexpr const char* kS3SecretVariable = "SDSTACK_S3_SECRET_KEY";

json s3_to_json(const std::optional<S3StoreConfig>& s3) {
  if (!s3) return nullptr;
  return {{"endpoint", s3->endpoint}, {"region", s3->region}, {"bucket", s3->bucket}, {"prefix", s3->prefix},
          {"path_style", s3->path_style}};
}

std::string state_name(AgentPoll::State state) {
  switch (state) {
    case AgentPoll::State::kStarting: return "starting";
    case AgentPoll::State::kRunning: return "running";
    case AgentPoll::State::kFinished: return "finished";
    case AgentPoll::State::kGone: return "gone";
  }
  return "gone";
}

json result_json(const RemoteResult& result) {
  return {{"status", result.status}, {"exit_code", result.exit_code}, {"reason", result.reason},
          {"artifacts", result.artifacts}, {"missing", result.missing}};
}

RemoteResult result_from(const json& j) {
  RemoteResult result;
  result.status = j.at("status");
  result.exit_code = j.at("exit_code");
  result.reason = j.at("reason");
  result.artifacts = j.at("artifacts");
  result.missing = j.at("missing").get<std::vector<std::string>>();
  return result;
}

std::string option(const std::vector<std::string>& args, const std::string& name) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == name) return args[i + 1];
  }
  return "";
}

bool has_flag(const std::vector<std::string>& args, const std::string& name) {
  return std::find(args.begin(), args.end(), name) != args.end();
}

int64_t read_pid(const std::string& run_dir) {
  auto text = base::read_file(base::join_path(run_dir, "agent.pid"));
  return text.is_ok() ? std::atoll(text->c_str()) : 0;
}

// The job's environment: the host's, without what sdstack's bundle and start request put there,
// then the plan's, then the secrets. The bundled sdstack comes first on PATH.
std::vector<std::string> job_environment(const RemotePlan& plan, const AgentSecrets& secrets) {
  std::map<std::string, std::string> variables = current_environment();
  if (variables.count(kBundleDir)) {
    prepend_to_path(variables, variables[kBundleDir]);
    std::string original = variables[kOriginalLibraryPath];
    if (original.empty()) {
      variables.erase("LD_LIBRARY_PATH");
    } else {
      variables["LD_LIBRARY_PATH"] = original;
    }
  }
  for (const char* name : {kBundleDir, kOriginalLibraryPath, kS3AccessVariable, kS3SecretVariable}) variables.erase(name);
  return flatten_environment(std::move(variables), plan.env, secrets.env);
}

std::unique_ptr<S3Client> s3_client(const RemotePlan& plan, const AgentSecrets& secrets) {
  S3Config config = s3_config_of(*plan.s3);
  config.access_key = secrets.s3_access_key;
  config.secret_key = secrets.s3_secret_key;
  return std::make_unique<S3Client>(config);
}

// Runs the plan in `run_dir` to its end and writes result.json. Returns the process's exit status.
int run_agent(const std::string& run_dir, const AgentSecrets& secrets) {
  install_stop_signal_handlers();
  auto log = LogWriter::open(base::join_path(run_dir, "log"));
  if (!log.is_ok()) {
    std::fprintf(stderr, "sdstack agent: %s\n", log.status().message().c_str());
    return 1;
  }
  std::vector<std::string> secret_values;
  for (const auto& [name, value] : secrets.env) secret_values.push_back(value);
  secret_values.push_back(secrets.s3_secret_key);
  (*log)->set_secrets(secret_values);
  RemoteResult result;
  result.artifacts = "none";
  auto finish = [&](RemoteResult ending) {
    if (!ending.reason.empty() && ending.status == "failed") (void)(*log)->sys("failed: " + ending.reason);
    Status written =
        base::write_file_atomic(base::join_path(run_dir, "result.json"), remote_result_to_json(ending));
    if (!written.is_ok()) std::fprintf(stderr, "sdstack agent: %s\n", written.message().c_str());
    return written.is_ok() ? 0 : 1;
  };
  auto fail = [&](const std::string& reason) {
    RemoteResult failed;
    failed.status = "failed";
    failed.exit_code = 1;
    failed.reason = reason;
    failed.artifacts = "none";
    return finish(failed);
  };

  auto text = base::read_file(base::join_path(run_dir, "job.json"));
  if (!text.is_ok()) return fail(text.status().message());
  auto plan = remote_plan_from_json(*text);
  if (!plan.is_ok()) return fail(plan.status().message());
  const std::string work_dir = base::join_path(run_dir, plan->work_dir);
  ArtifactStore store(base::join_path(run_dir, "store"));
  if (!plan->s3_deps.empty()) {
    auto client = s3_client(*plan, secrets);
    for (const std::string& key : plan->s3_deps) {
      Status pulled = pull_from_s3(*client, key, store);
      if (pulled.is_ok()) pulled = store.restore(key, work_dir);
      if (!pulled.is_ok()) return fail("the artifacts " + key + " from S3: " + pulled.message());
      (void)(*log)->sys("artifacts " + key + " fetched from S3 into the working dir");
    }
  }

  JobSpec spec;
  spec.argv = plan->argv;
  spec.work_dir = work_dir;
  spec.env = job_environment(*plan, secrets);
  spec.sandbox = false;
  spec.grace_seconds = plan->grace_seconds;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  (void)(*log)->sys(std::string("running on ") + host + " (pid " + std::to_string(getpid()) + ")");
  auto job = Job::start(spec, log->get());
  if (!job.is_ok()) return fail(job.status().message());
  attach_stop_signals(job->get());
  // The time limit: a graceful stop when it passes, as Slurm's --time does.
  std::mutex mutex;
  std::condition_variable job_ended;
  bool over = false, timed_out = false;
  std::thread timer;
  if (plan->time_limit_seconds > 0) {
    timer = std::thread([&] {
      std::unique_lock<std::mutex> lock(mutex);
      if (job_ended.wait_for(lock, std::chrono::seconds(plan->time_limit_seconds), [&] { return over; })) return;
      timed_out = true;
      (void)(*log)->sys("time limit of " + std::to_string(plan->time_limit_seconds) + " s reached: stopping");
      (*job)->request_stop();
    });
  }
  auto ended = (*job)->wait();
  {
    std::lock_guard<std::mutex> lock(mutex);
    over = true;
  }
  job_ended.notify_all();
  if (timer.joinable()) timer.join();
  attach_stop_signals(nullptr);
  if (!ended.is_ok()) return fail(ended.status().message());

  result.exit_code = ended->exit_code;
  if (ended->aborted) {
    (void)(*log)->sys("aborted by the user; artifacts not saved");
    result.status = "aborted";
    result.reason = "aborted by the user";
    return finish(result);
  }
  if (!plan->artifact_paths.empty()) {
    auto saved = store.save(plan->artifact_key, work_dir, plan->artifact_paths);
    if (!saved.is_ok()) return fail("saving the artifacts: " + saved.status().message());
    result.missing = saved->missing;
    for (const std::string& path : saved->missing) (void)(*log)->sys("warning: artifact '" + path + "' was not made");
    result.artifacts = "store";
    if (plan->s3) {
      Status pushed = push_to_s3(store, plan->artifact_key, *s3_client(*plan, secrets));
      if (!pushed.is_ok()) return fail("uploading the artifacts to S3: " + pushed.message());
      result.artifacts = "s3";
    }
    (void)(*log)->sys("artifacts saved" + std::string(plan->s3 ? " to S3" : "") + ": " +
                      std::to_string(saved->entries.size()) + " entries, " + format_bytes(saved->total_bytes));
  }
  if (timed_out) {
    result.status = "failed";
    result.reason = "time limit of " + std::to_string(plan->time_limit_seconds) + " s reached";
  } else if (ended->stopped) {
    result.status = "stopped";
    result.reason = "stopped by the user";
  } else if (ended->exit_code != 0) {
    result.status = "failed";
    result.reason = ended->term_signal != 0 ? "killed by signal " + std::to_string(ended->term_signal)
                                            : "exit code " + std::to_string(ended->exit_code);
  } else {
    result.status = "done";
  }
  return finish(result);
}

int command_start(const std::string& run_dir) {
  std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  auto secrets = agent_secrets_from_json(input.empty() ? "{}" : input);
  if (!secrets.is_ok()) {
    std::fprintf(stderr, "sdstack agent: %s\n", secrets.status().message().c_str());
    return 1;
  }
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    std::fprintf(stderr, "sdstack agent: fork: %s\n", std::strerror(errno));
    return 1;
  }
  if (pid == 0) {
    // A session of its own: the SSH connection that started it may drop without touching it.
    setsid();
    int null_fd = open("/dev/null", O_RDONLY);
    int log_fd = open(base::join_path(run_dir, "agent.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(null_fd, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    _exit(run_agent(run_dir, *secrets));
  }
  Status written = base::write_file_atomic(base::join_path(run_dir, "agent.pid"), std::to_string(pid) + "\n");
  if (!written.is_ok()) {
    kill(pid, SIGKILL);
    std::fprintf(stderr, "sdstack agent: %s\n", written.message().c_str());
    return 1;
  }
  std::printf("%d\n", static_cast<int>(pid));
  return 0;
}

int command_run(const std::string& run_dir) {
  AgentSecrets secrets;
  auto text = base::read_file(base::join_path(run_dir, "job.json"));
  if (text.is_ok()) {
    auto plan = remote_plan_from_json(*text);
    if (plan.is_ok()) {
      for (const std::string& name : plan->secret_names) {
        if (const char* value = std::getenv(name.c_str())) secrets.env[name] = value;
      }
    }
  }
  if (const char* access = std::getenv(kS3AccessVariable)) secrets.s3_access_key = access;
  if (const char* secret = std::getenv(kS3SecretVariable)) secrets.s3_secret_key = secret;
  (void)base::write_file_atomic(base::join_path(run_dir, "agent.pid"), std::to_string(getpid()) + "\n");
  return run_agent(run_dir, secrets);
}

int command_poll(const std::string& run_dir, int64_t offset) {
  AgentPoll poll;
  auto result_text = base::read_file(base::join_path(run_dir, "result.json"));
  if (result_text.is_ok()) {
    auto result = remote_result_from_json(*result_text);
    if (result.is_ok()) {
      poll.state = AgentPoll::State::kFinished;
      poll.result = *result;
    }
  } else if (int64_t pid = read_pid(run_dir); pid > 0) {
    poll.state = process_alive(pid) ? AgentPoll::State::kRunning : AgentPoll::State::kGone;
    if (poll.state == AgentPoll::State::kGone && base::file_exists(base::join_path(run_dir, "result.json"))) {
      return command_poll(run_dir, offset);  // it finished between the two looks
    }
  }
  std::string log;
  int fd = open(base::join_path(run_dir, "log").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    constexpr int64_t kMaxBytes = 4 << 20;
    struct stat info{};
    fstat(fd, &info);
    int64_t size = std::min<int64_t>(info.st_size, offset + kMaxBytes);
    if (size > offset) {
      log.resize(static_cast<size_t>(size - offset));
      ssize_t got = pread(fd, log.data(), log.size(), offset);
      log.resize(got > 0 ? static_cast<size_t>(got) : 0);
    }
    close(fd);
  }
  size_t whole = log.rfind('\n');
  log.resize(whole == std::string::npos ? 0 : whole + 1);
  json header = {{"state", state_name(poll.state)}, {"log_size", offset + static_cast<int64_t>(log.size())}};
  if (poll.result) header["result"] = result_json(*poll.result);
  std::fwrite(header.dump().data(), 1, header.dump().size(), stdout);
  std::fputc('\n', stdout);
  std::fwrite(log.data(), 1, log.size(), stdout);
  return 0;
}

int command_stop(const std::string& run_dir, bool abort) {
  int64_t pid = read_pid(run_dir);
  if (pid <= 0 || !process_alive(pid)) {
    std::fprintf(stderr, "sdstack agent: no agent running in %s\n", run_dir.c_str());
    return 1;
  }
  if (kill(static_cast<pid_t>(pid), abort ? SIGUSR1 : SIGTERM) != 0) {
    std::fprintf(stderr, "sdstack agent: kill %lld: %s\n", static_cast<long long>(pid), std::strerror(errno));
    return 1;
  }
  return 0;
}

}  // namespace

std::string remote_plan_to_json(const RemotePlan& plan) {
  return json{{"run", plan.run},
              {"argv", plan.argv},
              {"env", plan.env},
              {"work_dir", plan.work_dir},
              {"artifact_paths", plan.artifact_paths},
              {"artifact_key", plan.artifact_key},
              {"grace_seconds", plan.grace_seconds},
              {"time_limit_seconds", plan.time_limit_seconds},
              {"secret_names", plan.secret_names},
              {"s3", s3_to_json(plan.s3)},
              {"s3_deps", plan.s3_deps}}
      .dump(2);
}

Result<RemotePlan> remote_plan_from_json(const std::string& text) {
  try {
    json j = json::parse(text);
    RemotePlan plan;
    plan.run = j.at("run");
    plan.argv = j.at("argv").get<std::vector<std::string>>();
    plan.env = j.at("env").get<std::vector<std::string>>();
    plan.work_dir = j.at("work_dir");
    plan.artifact_paths = j.at("artifact_paths").get<std::vector<std::string>>();
    plan.artifact_key = j.at("artifact_key");
    plan.grace_seconds = j.at("grace_seconds");
    plan.time_limit_seconds = j.value("time_limit_seconds", 0);
    plan.secret_names = j.at("secret_names").get<std::vector<std::string>>();
    if (!j.at("s3").is_null()) {
      const json& s3 = j.at("s3");
      S3StoreConfig config;
      config.endpoint = s3.at("endpoint");
      config.region = s3.at("region");
      config.bucket = s3.at("bucket");
      config.prefix = s3.at("prefix");
      config.path_style = s3.at("path_style");
      plan.s3 = config;
    }
    plan.s3_deps = j.at("s3_deps").get<std::vector<std::string>>();
    return plan;
  } catch (const json::exception& error) {
    return base::data_loss(std::string("not a remote run plan sdstack wrote: ") + error.what());
  }
}

std::string agent_secrets_to_json(const AgentSecrets& secrets) {
  return json{{"env", secrets.env}, {"s3_access_key", secrets.s3_access_key}, {"s3_secret_key", secrets.s3_secret_key}}
      .dump();
}

Result<AgentSecrets> agent_secrets_from_json(const std::string& text) {
  try {
    json j = json::parse(text);
    AgentSecrets secrets;
    if (j.contains("env")) secrets.env = j.at("env").get<std::map<std::string, std::string>>();
    if (j.contains("s3_access_key")) secrets.s3_access_key = j.at("s3_access_key");
    if (j.contains("s3_secret_key")) secrets.s3_secret_key = j.at("s3_secret_key");
    return secrets;
  } catch (const json::exception&) {
    return base::invalid_argument("the start request is not the JSON sdstack sends");  // never echo secrets
  }
}

std::string remote_result_to_json(const RemoteResult& result) { return result_json(result).dump(); }

Result<RemoteResult> remote_result_from_json(const std::string& text) {
  try {
    return result_from(json::parse(text));
  } catch (const json::exception& error) {
    return base::data_loss(std::string("not a result.json sdstack's agent wrote: ") + error.what());
  }
}

Result<AgentPoll> parse_agent_poll(const std::string& output) {
  size_t newline = output.find('\n');
  if (newline == std::string::npos) return base::data_loss("the agent's answer has no header line: " + output);
  try {
    json header = json::parse(output.substr(0, newline));
    AgentPoll poll;
    std::string state = header.at("state");
    poll.state = state == "running"    ? AgentPoll::State::kRunning
                 : state == "finished" ? AgentPoll::State::kFinished
                 : state == "gone"     ? AgentPoll::State::kGone
                                       : AgentPoll::State::kStarting;
    poll.log_size = header.at("log_size");
    if (header.contains("result")) poll.result = result_from(header.at("result"));
    poll.log = output.substr(newline + 1);
    return poll;
  } catch (const json::exception& error) {
    return base::data_loss(std::string("the agent's answer is not what it should print: ") + error.what());
  }
}

int agent_main(const std::vector<std::string>& args) {
  const std::string command = args.empty() ? "" : args[0];
  const std::string run_dir = option(args, "--dir");
  if (command == "machine") {
    std::printf("%s\n", machine_to_json(detect_local_machine()).c_str());
    return 0;
  }
  if (run_dir.empty()) {
    std::fprintf(stderr, "usage: sdstack __agent machine | start|run|poll|stop --dir RUN_DIR [--offset N] [--abort]\n");
    return 2;
  }
  if (command == "start") return command_start(run_dir);
  if (command == "run") return command_run(run_dir);
  if (command == "poll") return command_poll(run_dir, std::atoll(option(args, "--offset").c_str()));
  if (command == "stop") return command_stop(run_dir, has_flag(args, "--abort"));
  std::fprintf(stderr, "sdstack __agent: unknown command '%s'\n", command.c_str());
  return 2;
}

}  // namespace sdstack::flow
