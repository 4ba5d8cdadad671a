// Submitting local runs, and the supervisor that runs them (see local_run.h for the life of a run).
#include "flow/local_run.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "base/sha256.h"
#include "base/strings.h"
#include "base/subprocess.h"
#include "flow/expressions.h"
#include "flow/job.h"
#include "flow/remote_run.h"
#include "flow/run_log.h"


namespace sdstack::flow {
namespace {

namespace fs = std::filesystem;
using base::Result;
using base::Status;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool valid_env_name(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

// "K=V" stays; a bare "K" takes the caller's value, or is dropped when the caller has none.
Result<std::optional<std::string>> resolve_env_entry(const std::string& entry, const std::string& where) {
  size_t equals = entry.find('=');
  std::string name = entry.substr(0, equals);
  if (!valid_env_name(name)) {
    return base::invalid_argument(where + ": bad environment variable '" + entry +
                                  "': write NAME=VALUE, NAME made of letters, digits and '_'");
  }
  if (equals != std::string::npos) return std::optional<std::string>(entry);
  const char* value = std::getenv(name.c_str());
  if (value == nullptr) return std::optional<std::string>();
  return std::optional<std::string>(name + "=" + value);
}

// A free TCP port on 127.0.0.1, as the kernel hands one out.
Result<int> free_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return base::io_error(std::string("socket: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    int error = errno;
    close(fd);
    return base::io_error(std::string("cannot find a free port: ") + std::strerror(error));
  }
  close(fd);
  return static_cast<int>(ntohs(address.sin_port));
}

bool port_free(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  int reuse = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(reuse));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return ok;
}

bool port_listening(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return ok;
}

std::string random_token() {
  std::random_device device;
  std::string token;
  const char* digits = "0123456789abcdef";
  for (int i = 0; i < 48; ++i) token += digits[device() % 16];
  return token;
}

nlohmann::json plan_to_json(const JobPlan& plan) {
  return {{"run", plan.run},
          {"project_dir", plan.project_dir},
          {"workflow", plan.workflow},
          {"provider", plan.provider},
          {"argv", plan.argv},
          {"env", plan.env},
          {"artifact_paths", plan.artifact_paths},
          {"work_dir", plan.work_dir},
          {"writable_dirs", plan.writable_dirs},
          {"home_dir", plan.home_dir},
          {"log_path", plan.log_path},
          {"sandbox", plan.sandbox},
          {"shm_size_bytes", plan.shm_size_bytes},
          {"grace_seconds", plan.grace_seconds},
          {"app_url", plan.app_url},
          {"app_port", plan.app_port},
          {"offers", plan.offers},
          {"retries", plan.retries},
          {"time_limit_seconds", plan.time_limit_seconds},
          {"resources",
           {{"cpu", plan.resources.cpu},
            {"memory_bytes", plan.resources.memory_bytes},
            {"gpu_count", plan.resources.gpu.count},
            {"gpu_name", plan.resources.gpu.name},
            {"gpu_memory_bytes", plan.resources.gpu.memory_bytes},
            {"shm_size_bytes", plan.resources.shm_size_bytes}}},
          {"s3_deps", plan.s3_deps}};
}

Result<JobPlan> read_plan(const std::string& path) {
  SD_ASSIGN_OR_RETURN(std::string text, base::read_file(path));
  try {
    nlohmann::json json = nlohmann::json::parse(text);
    JobPlan plan;
    plan.run = json.at("run");
    plan.project_dir = json.at("project_dir");
    plan.workflow = json.at("workflow");
    plan.provider = json.at("provider");
    plan.argv = json.at("argv").get<std::vector<std::string>>();
    plan.env = json.at("env").get<std::vector<std::string>>();
    plan.artifact_paths = json.at("artifact_paths").get<std::vector<std::string>>();
    plan.work_dir = json.at("work_dir");
    plan.writable_dirs = json.at("writable_dirs").get<std::vector<std::string>>();
    plan.home_dir = json.at("home_dir");
    plan.log_path = json.at("log_path");
    plan.sandbox = json.at("sandbox");
    plan.shm_size_bytes = json.at("shm_size_bytes");
    plan.grace_seconds = json.at("grace_seconds");
    plan.app_url = json.at("app_url");
    plan.app_port = json.at("app_port");
    plan.offers = json.value("offers", std::vector<std::string>());
    plan.retries = json.value("retries", 0);
    plan.time_limit_seconds = json.value("time_limit_seconds", 0);
    if (json.contains("resources")) {
      const nlohmann::json& resources = json.at("resources");
      plan.resources.cpu = resources.at("cpu");
      plan.resources.memory_bytes = resources.at("memory_bytes");
      plan.resources.gpu.count = resources.at("gpu_count");
      plan.resources.gpu.name = resources.at("gpu_name");
      plan.resources.gpu.memory_bytes = resources.at("gpu_memory_bytes");
      plan.resources.shm_size_bytes = resources.at("shm_size_bytes");
    }
    plan.s3_deps = json.value("s3_deps", std::vector<std::string>());
    return plan;
  } catch (const nlohmann::json::exception& error) {
    return base::data_loss(path + ": not a run plan sdstack wrote: " + error.what());
  }
}

const WorkflowSpec* find_workflow(const std::vector<WorkflowSpec>& workflows, const std::string& name) {
  for (const WorkflowSpec& workflow : workflows) {
    if (workflow.name == name) return &workflow;
  }
  return nullptr;
}

// The tools a provider needs, checked before anything is recorded.
Status check_provider_tools(const WorkflowSpec& workflow) {
  auto have = [](const char* program) { return base::find_program(program).is_ok(); };
  switch (workflow.provider) {
    case Provider::kBash:
      if (!have("bash")) return base::not_found("the bash provider needs bash, which is not on PATH");
      return Status::ok();
    case Provider::kCode:
      if (have("openvscode-server") || have("code-server") || have("jupyter-notebook") || have("jupyter-lab")) {
        return Status::ok();
      }
      return base::not_found("workflow '" + workflow.name +
                             "': the code provider needs an IDE: code-server or openvscode-server, or Jupyter "
                             "(apt-get install jupyter-notebook); none is on PATH");
    case Provider::kLab:
      if (have("jupyter-lab")) return Status::ok();
      return base::not_found("workflow '" + workflow.name +
                             "': the lab provider needs JupyterLab (jupyter-lab), which is not on PATH; Debian "
                             "packages only the classic notebook: use `provider: notebook`, or install JupyterLab");
    case Provider::kNotebook:
      if (have("jupyter-notebook")) return Status::ok();
      return base::not_found("workflow '" + workflow.name +
                             "': the notebook provider needs Jupyter Notebook, which is not on PATH "
                             "(apt-get install jupyter-notebook)");
    case Provider::kDocker:
      if (have("podman")) return Status::ok();
      return base::not_found("workflow '" + workflow.name +
                             "': the docker provider runs its image with podman, which is not installed "
                             "(apt-get install podman)");
  }
  return Status::ok();
}

// The IDE's command line: openvscode-server or code-server for `code` when installed, else Jupyter.
std::vector<std::string> ide_command(Provider provider, int port, const std::string& token,
                                     const std::string& work_dir, std::string* url, std::vector<std::string>* env) {
  const std::string address = "127.0.0.1:" + std::to_string(port);
  auto have = [](const char* program) { return base::find_program(program).is_ok(); };
  if (provider == Provider::kCode && have("openvscode-server")) {
    *url = "http://" + address + "/?tkn=" + token + "&folder=" + work_dir;
    return {"openvscode-server", "--host", "127.0.0.1", "--port", std::to_string(port), "--connection-token", token,
            "--default-folder", work_dir};
  }
  if (provider == Provider::kCode && have("code-server")) {
    *url = "http://" + address + "/?folder=" + work_dir + " (password: " + token + ")";
    env->push_back("PASSWORD=" + token);
    return {"code-server", "--bind-addr", address, "--auth", "password", "--disable-telemetry", work_dir};
  }
  bool lab = provider == Provider::kLab || (provider == Provider::kCode && !have("jupyter-notebook"));
  std::vector<std::string> argv = {"jupyter", lab ? "lab" : "notebook", "--no-browser", "--ip=127.0.0.1",
                                   "--port=" + std::to_string(port), "--port-retries=0",
                                   "--NotebookApp.token=" + token, "--ServerApp.token=" + token,
                                   "--notebook-dir=" + work_dir};
  if (geteuid() == 0) argv.push_back("--allow-root");
  *url = "http://" + address + (lab ? "/lab" : "/tree") + "?token=" + token;
  return argv;
}

std::string joined_script(const std::vector<std::string>& lines) {
  std::string script = "set -eo pipefail\n";
  for (const std::string& line : lines) script += line + "\n";
  return script;
}

// The run's artifacts of a dep, or an error saying what to run first.
Result<RunRecord> resolve_dep(const Dep& dep, const WorkflowSpec& workflow, const Project& project,
                              const StoreLayout& layout, RunStore& store, ArtifactStore& artifacts) {
  std::optional<RunRecord> run;
  if (dep.kind == Dep::Kind::kWorkflow) {
    SD_ASSIGN_OR_RETURN(run, store.latest_successful(project.dir, dep.name));
    if (!run) {
      return base::not_found(dep.where.to_string() + ": workflow '" + workflow.name +
                             "' needs the artifacts of workflow '" + dep.name +
                             "', which has no successful run yet: run `sdstack run " + dep.name + "` first");
    }
  } else {
    SD_ASSIGN_OR_RETURN(std::optional<std::string> tagged, store.tagged_run(project.dir, dep.name));
    if (!tagged) {
      return base::not_found(dep.where.to_string() + ": workflow '" + workflow.name + "' needs the artifacts of tag '" +
                             dep.name + "', which does not exist: tag a finished run first with `sdstack tags add " +
                             dep.name + " RUN`");
    }
    SD_ASSIGN_OR_RETURN(RunRecord tagged_record, store.get_run(project.dir, *tagged));
    run = tagged_record;
  }
  Status available = ensure_local_artifacts(layout, artifacts, artifact_key(project.dir, run->name));
  if (!available.is_ok() && available.code() != base::StatusCode::kNotFound) return available;
  if (!available.is_ok()) {
    return base::not_found(dep.where.to_string() + ": workflow '" + workflow.name + "' needs the artifacts of run '" +
                           run->name + "' (" + (run->workflow.empty() ? "an upload" : run->workflow) +
                           "), which has none saved (" + std::string(run_status_name(run->status)) +
                           "): run it again");
  }
  return *run;
}

// Every port the workflow asks for, as PORT_0, PORT_1, ... in the job's environment.
Result<std::vector<std::string>> port_variables(const WorkflowSpec& workflow) {
  std::vector<std::string> env;
  std::vector<int> ports = workflow.ports;
  for (int i = 0; i < workflow.port_count; ++i) {
    SD_ASSIGN_OR_RETURN(int port, free_port());
    ports.push_back(port);
  }
  for (size_t i = 0; i < ports.size(); ++i) {
    if (i < workflow.ports.size() && !port_free(ports[i])) {
      return base::invalid_argument(workflow.where.to_string() + ": workflow '" + workflow.name + "' asks for port " +
                                    std::to_string(ports[i]) + ", which is in use on this machine");
    }
    env.push_back("PORT_" + std::to_string(i) + "=" + std::to_string(ports[i]));
  }
  return env;
}

}  // namespace

StoreLayout StoreLayout::from_environment() {
  if (const char* home = std::getenv("SDSTACK_HOME"); home != nullptr && *home != '\0') return {home};
  const char* user_home = std::getenv("HOME");
  return {base::join_path(user_home != nullptr ? user_home : "/tmp", ".sdstack")};
}

std::string StoreLayout::database() const { return base::join_path(root, "runs.db"); }
std::string StoreLayout::artifacts() const { return base::join_path(root, "artifacts"); }
std::string StoreLayout::run_dir(const std::string& project_dir, const std::string& run) const {
  return base::join_path(base::join_path(base::join_path(root, "runs"), project_key(project_dir)), run);
}

std::string project_key(const std::string& project_dir) {
  base::Sha256 hash;
  hash.update(project_dir.data(), project_dir.size());
  std::string name = fs::path(project_dir).filename().string();
  std::string safe;
  for (char c : name) safe += std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ? c : '_';
  if (safe.empty()) safe = "project";
  return safe + "-" + hash.hex_digest().substr(0, 8);
}

std::string artifact_key(const std::string& project_dir, const std::string& run) {
  return project_key(project_dir) + "/" + run;
}

Result<JobPlan> submit_run(const Project& project, const std::vector<WorkflowSpec>& workflows,
                           const RunOptions& options, const StoreLayout& layout, RunStore& store,
                           ArtifactStore& artifacts) {
  const WorkflowSpec* found = find_workflow(workflows, options.workflow);
  if (found == nullptr) {
    std::vector<std::string> names;
    for (const WorkflowSpec& workflow : workflows) names.push_back(workflow.name);
    std::string hint = base::did_you_mean(options.workflow, names);
    if (hint.empty()) hint = names.empty() ? " (there are none: add .sdstack/workflows/*.yaml)" : " (known: " + base::join(names, ", ") + ")";
    return base::not_found("no workflow '" + options.workflow + "' in " + project.dir + hint);
  }
  const WorkflowSpec& workflow = *found;

  // 1. What this machine (or an offer) can give, the provider's tools, the sandbox, the deps:
  // refuse early.
  Resources resources = apply_overrides(workflow.resources, options.overrides);
  std::vector<std::string> offers;
  Config config;
  if (options.remote) {
    if (workflow.provider != Provider::kBash) {
      return base::invalid_argument("workflow '" + workflow.name + "' uses the " +
                                    std::string(provider_name(workflow.provider)) +
                                    " provider, which runs on this machine only; remote runs take bash workflows");
    }
    SD_ASSIGN_OR_RETURN(config, load_config(config_path(layout)));
    std::vector<Offer> all = list_offers(config);
    bool undetected = std::any_of(all.begin(), all.end(), [&](const Offer& offer) {
      return !offer.detected && (options.backend.empty() || offer.backend == options.backend);
    });
    if (undetected) {  // first contact: learn what the hosts have, and keep it
      SD_RETURN_IF_ERROR(detect_ssh_hosts(config, options.backend, layout));
      SD_RETURN_IF_ERROR(save_config(config, config_path(layout)));
      all = list_offers(config);
    }
    OfferMatch match = match_offers(all, resources, options.backend);
    if (match.fitting.empty()) return no_offer_error(resources, match, options.backend);
    for (const Offer& offer : match.fitting) offers.push_back(offer.id());
  }
  std::vector<std::string> missing =
      options.remote ? std::vector<std::string>() : missing_resources(resources, detect_local_machine());
  if (!missing.empty()) {
    std::string message = "this machine can't give what workflow '" + workflow.name + "' asks for:";
    for (const std::string& line : missing) message += "\n  - " + line;
    message += "\nlower the request (--cpu, --memory, --gpu, --gpu-name, --gpu-memory, --shm-size) or run it on "
               "an engine that has it";
    return base::invalid_argument(message);
  }
  if (!options.remote) SD_RETURN_IF_ERROR(check_provider_tools(workflow));
  bool sandbox = options.sandbox && !options.remote && workflow.provider != Provider::kDocker;
  if (sandbox) SD_RETURN_IF_ERROR(check_sandbox());
  std::vector<RunRecord> dep_runs;
  for (const Dep& dep : workflow.deps) {
    SD_ASSIGN_OR_RETURN(RunRecord run, resolve_dep(dep, workflow, project, layout, store, artifacts));
    dep_runs.push_back(std::move(run));
  }
  if (!options.tag.empty()) {
    SD_ASSIGN_OR_RETURN(std::optional<std::string> tagged, store.tagged_run(project.dir, options.tag));
    if (tagged) {
      return base::invalid_argument("tag '" + options.tag + "' already names run '" + *tagged +
                                    "': delete it first with `sdstack tags delete " + options.tag + "`");
    }
  }
  std::vector<std::string> env;
  for (const EnvVar& variable : workflow.env) {
    std::string entry = variable.value ? variable.name + "=" + *variable.value : variable.name;
    SD_ASSIGN_OR_RETURN(auto resolved, resolve_env_entry(entry, workflow.where.to_string()));
    if (resolved) env.push_back(*resolved);
  }
  for (const std::string& entry : options.env) {
    SD_ASSIGN_OR_RETURN(auto resolved, resolve_env_entry(entry, "-e"));
    if (resolved) env.push_back(*resolved);
  }
  // Expressions are checked before the run exists, with a stand-in name.
  std::vector<std::string> lines = workflow.setup;
  lines.insert(lines.end(), workflow.commands.begin(), workflow.commands.end());
  for (const std::string& line : lines) {
    SD_RETURN_IF_ERROR(expand_expressions(line, {"run", options.args}, workflow.where.to_string()).status());
  }

  // 2. The record, then the run's folder; a failure from here on removes both.
  RunRecord record;
  record.repo = project.dir;
  record.workflow = workflow.name;
  record.provider = std::string(provider_name(workflow.provider));
  record.args = options.args;
  for (const Artifact& artifact : workflow.artifacts) record.artifact_paths.push_back(artifact.path);
  record.repo_head = project.head;
  SD_ASSIGN_OR_RETURN(record, store.create_run(record));
  const std::string run_dir = layout.run_dir(project.dir, record.name);
  auto fail = [&](const Status& status) -> Status {
    (void)store.delete_run(project.dir, record.name);
    std::error_code ignored;
    fs::remove_all(run_dir, ignored);
    return status;
  };

  JobPlan plan;
  plan.run = record.name;
  plan.project_dir = project.dir;
  plan.workflow = workflow.name;
  plan.provider = record.provider;
  plan.artifact_paths = record.artifact_paths;
  const std::string work_root = base::join_path(run_dir, "work");
  plan.work_dir = workflow.working_dir.empty() ? work_root : base::join_path(work_root, workflow.working_dir);
  plan.home_dir = base::join_path(run_dir, "home");
  plan.writable_dirs = {work_root, plan.home_dir};
  plan.log_path = base::join_path(run_dir, "log");
  plan.sandbox = sandbox;
  plan.shm_size_bytes = resources.shm_size_bytes;
  plan.grace_seconds = options.grace_seconds;
  plan.offers = offers;
  plan.retries = options.retries;
  plan.time_limit_seconds = options.time_limit_seconds;
  plan.resources = resources;

  std::error_code error;
  fs::create_directories(plan.home_dir, error);
  if (error) return fail(base::io_error(plan.home_dir + ": cannot create: " + error.message()));
  auto snapshot = snapshot_project(project, work_root);
  if (!snapshot.is_ok()) return fail(snapshot.status());
  fs::create_directories(plan.work_dir, error);
  auto log = LogWriter::open(plan.log_path);
  if (!log.is_ok()) return fail(log.status());
  std::string from = project.head.empty() ? "a repo without commits" : project.head.substr(0, 12);
  (void)(*log)->sys("run " + record.name + " of workflow '" + workflow.name + "' (" + record.provider +
                    "), from " + from + (project.dirty ? " with local changes" : "") + ": " +
                    std::to_string(snapshot->files) + " files, " + format_bytes(snapshot->bytes));
  bool deps_from_s3 = options.remote && config.artifacts.has_value();
  std::unique_ptr<S3Client> s3;
  if (deps_from_s3 && !dep_runs.empty()) {
    auto client = artifact_s3_client(config);
    if (!client.is_ok()) return fail(client.status());
    s3 = std::move(*client);
  }
  for (const RunRecord& dep_run : dep_runs) {
    const std::string key = artifact_key(project.dir, dep_run.name);
    if (deps_from_s3) {
      // The remote fetches them from the S3 store itself; put them there first if they are only here.
      auto there = s3_manifest(*s3, key);
      Status pushed = !there.is_ok() ? there.status() : *there ? Status::ok() : push_to_s3(artifacts, key, *s3);
      if (!pushed.is_ok()) return fail(pushed.with_context("the artifacts of run " + dep_run.name));
      plan.s3_deps.push_back(key);
      (void)(*log)->sys("artifacts of run " + dep_run.name + " (" + dep_run.workflow + ") come from the S3 store");
      continue;
    }
    Status restored = artifacts.restore(key, plan.work_dir);
    if (!restored.is_ok()) return fail(restored.with_context("the artifacts of run " + dep_run.name));
    (void)(*log)->sys("artifacts of run " + dep_run.name + " (" + dep_run.workflow + ") put in the working dir");
  }

  std::vector<std::string> expanded;
  for (const std::string& line : lines) {
    auto command = expand_expressions(line, {record.name, options.args}, workflow.where.to_string());
    if (!command.is_ok()) return fail(command.status());
    expanded.push_back(*command);
  }
  auto ports = port_variables(workflow);
  if (!ports.is_ok()) return fail(ports.status());
  env.insert(env.end(), ports->begin(), ports->end());
  env.push_back("SDSTACK_RUN=" + record.name);
  env.push_back("SDSTACK_WORKFLOW=" + workflow.name);
  env.push_back("PYTHONUNBUFFERED=1");  // Python's output reaches the log as it is printed
  if (sandbox) {
    env.push_back("HOME=" + plan.home_dir);
    env.push_back("TMPDIR=/tmp");  // the sandbox's private /tmp: the caller's TMPDIR may be read-only there
  }

  switch (workflow.provider) {
    case Provider::kBash:
      plan.argv = {"bash", "-c", joined_script(expanded)};
      break;
    case Provider::kCode:
    case Provider::kLab:
    case Provider::kNotebook: {
      auto port = free_port();
      if (!port.is_ok()) return fail(port.status());
      plan.app_port = *port;
      std::vector<std::string> ide = ide_command(workflow.provider, *port, random_token(), plan.work_dir,
                                                 &plan.app_url, &env);
      std::string exec = "exec";
      for (const std::string& word : ide) exec += " " + shell_quote(word);
      expanded.push_back(exec);
      plan.argv = {"bash", "-c", joined_script(expanded)};
      break;
    }
    case Provider::kDocker: {
      plan.argv = {"podman", "run", "--rm", "--init", "-v", work_root + ":/workflow", "-w",
                   "/workflow" + (workflow.working_dir.empty() ? "" : "/" + workflow.working_dir)};
      for (const std::string& entry : env) plan.argv.insert(plan.argv.end(), {"-e", entry});
      if (resources.shm_size_bytes > 0) plan.argv.push_back("--shm-size=" + std::to_string(resources.shm_size_bytes));
      plan.argv.insert(plan.argv.end(), {workflow.image, "bash", "-c", joined_script(expanded)});
      break;
    }
  }
  plan.env = env;
  if (!plan.app_url.empty()) {
    Status url = store.set_app_url(project.dir, record.name, plan.app_url);
    if (!url.is_ok()) return fail(url);
  }
  if (!options.tag.empty()) {
    Status tagged = store.add_tag(project.dir, options.tag, record.name);
    if (!tagged.is_ok()) return fail(tagged);
  }
  Status written = base::write_file_atomic(base::join_path(run_dir, "job.json"), plan_to_json(plan).dump(2));
  if (!written.is_ok()) return fail(written);
  return plan;
}

Result<pid_t> launch_supervisor(const JobPlan& plan, const std::string& self_exe, RunStore& store) {
  const std::string run_dir = fs::path(plan.log_path).parent_path().string();
  const std::string supervisor_log = base::join_path(run_dir, "supervisor.log");
  std::vector<std::string> args = {"sdstack", "__supervise", "--project", plan.project_dir, "--run", plan.run};
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return base::io_error(std::string("cannot start the run's supervisor: fork: ") + std::strerror(errno));
  if (pid == 0) {
    // The child: a session of its own, so the terminal's Ctrl+C and hangup don't reach it.
    setsid();
    int null_fd = open("/dev/null", O_RDONLY);
    int log_fd = open(supervisor_log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    if (log_fd >= 0) {
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
    }
    execv(self_exe.c_str(), argv.data());
    _exit(127);
  }
  SD_RETURN_IF_ERROR(store.set_supervisor_pid(plan.project_dir, plan.run, pid));
  return pid;
}

namespace {

// The environment the job sees: the supervisor's own (the caller's), then the plan's, then secrets.
std::vector<std::string> job_environment(const JobPlan& plan, const std::map<std::string, std::string>& secrets,
                                         const std::string& self_dir) {
  std::map<std::string, std::string> variables = current_environment();
  prepend_to_path(variables, self_dir);  // the job finds the same sdstack that started it first on PATH
  return flatten_environment(std::move(variables), plan.env, secrets);
}

std::string self_directory() {
  std::error_code error;
  fs::path self = fs::read_symlink("/proc/self/exe", error);
  return error ? std::string() : self.parent_path().string();
}

// Waits for the IDE to listen, then says where it is.
void announce_when_ready(const JobPlan& plan, const std::atomic<bool>* finished) {
  auto log = LogWriter::open(plan.log_path);
  if (!log.is_ok()) return;
  for (int attempt = 0; attempt < 600 && !finished->load(); ++attempt) {
    if (port_listening(plan.app_port)) {
      (void)(*log)->sys("the IDE is ready: " + plan.app_url);
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

std::string ending_reason(const JobResult& result) {
  if (result.term_signal != 0) return "killed by signal " + std::to_string(result.term_signal);
  return "exit code " + std::to_string(result.exit_code);
}

}  // namespace

int supervise(const StoreLayout& layout, const std::string& project_dir, const std::string& run) {
  install_stop_signal_handlers();
  auto store = RunStore::open(layout.database());
  if (!store.is_ok()) {
    std::fprintf(stderr, "sdstack: %s\n", store.status().message().c_str());
    return 1;
  }
  const std::string run_dir = layout.run_dir(project_dir, run);
  auto plan = read_plan(base::join_path(run_dir, "job.json"));
  if (plan.is_ok() && !plan->offers.empty()) return supervise_remote(layout, project_dir, run, *plan);
  auto log = LogWriter::open(base::join_path(run_dir, "log"));
  auto fail = [&](const std::string& reason) {
    return fail_run(**store, log.is_ok() ? log->get() : nullptr, project_dir, run, reason);
  };
  if (!log.is_ok()) return fail(log.status().message());
  if (!plan.is_ok()) return fail(plan.status().message());
  auto secrets = (*store)->secrets(project_dir);
  if (!secrets.is_ok()) return fail(secrets.status().message());
  std::vector<std::string> secret_values;
  for (const auto& [name, value] : *secrets) secret_values.push_back(value);
  (*log)->set_secrets(secret_values);

  auto started = (*store)->transition(project_dir, run, {RunStatus::kSubmitted}, RunStatus::kRunning);
  if (!started.is_ok()) return fail(started.status().message());
  if (!*started) return 0;  // stopped before it began
  (void)(*store)->set_supervisor_pid(project_dir, run, getpid());

  JobSpec spec;
  spec.argv = plan->argv;
  spec.work_dir = plan->work_dir;
  spec.writable_dirs = plan->writable_dirs;
  const std::string self_dir = self_directory();
  spec.env = job_environment(*plan, *secrets, self_dir);
  if (!self_dir.empty()) spec.readonly_dirs.push_back(self_dir);  // the job runs this same sdstack
  spec.sandbox = plan->sandbox;
  spec.shm_size_bytes = plan->shm_size_bytes;
  spec.grace_seconds = plan->grace_seconds;
  (void)(*log)->sys(std::string("running") + (spec.sandbox ? " in a sandbox" : ""));
  auto job = Job::start(spec, log->get());
  if (!job.is_ok()) return fail(job.status().message());
  attach_stop_signals(job->get());

  std::atomic<bool> job_finished{false};
  std::thread announcer;
  if (plan->app_port != 0) announcer = std::thread(announce_when_ready, *plan, &job_finished);
  auto result = (*job)->wait();
  job_finished = true;
  if (announcer.joinable()) announcer.join();
  attach_stop_signals(nullptr);
  if (!result.is_ok()) return fail(result.status().message());

  if (result->aborted) {
    (void)(*log)->sys("aborted by the user; artifacts not saved");
    (void)(*store)->transition(project_dir, run, {RunStatus::kRunning}, RunStatus::kAborted, result->exit_code,
                               "aborted by the user");
    return 0;
  }
  (void)(*store)->transition(project_dir, run, {RunStatus::kRunning}, RunStatus::kUploading);
  if (!plan->artifact_paths.empty()) {
    ArtifactStore artifacts(layout.artifacts());
    auto saved = artifacts.save(artifact_key(project_dir, run), plan->work_dir, plan->artifact_paths);
    if (!saved.is_ok()) return fail("saving the artifacts: " + saved.status().message());
    for (const std::string& path : saved->missing) (void)(*log)->sys("warning: artifact '" + path + "' was not made");
    (void)(*log)->sys("artifacts saved: " + std::to_string(saved->entries.size()) + " entries, " +
                      format_bytes(saved->total_bytes));
  }
  RunStatus status = RunStatus::kDone;
  std::string reason;
  if (result->stopped) {
    status = RunStatus::kStopped;
    reason = "stopped by the user";
  } else if (result->exit_code != 0) {
    status = RunStatus::kFailed;
    reason = ending_reason(*result);
  }
  (void)(*log)->sys(std::string(run_status_name(status)) + (reason.empty() ? "" : ": " + reason));
  (void)(*store)->transition(project_dir, run, {RunStatus::kUploading}, status, result->exit_code, reason);
  return 0;
}

int fail_run(RunStore& store, LogWriter* log, const std::string& project_dir, const std::string& run,
             const std::string& reason) {
  if (log != nullptr) (void)log->sys("failed: " + reason);
  (void)store.transition(project_dir, run, {RunStatus::kSubmitted, RunStatus::kRunning, RunStatus::kUploading},
                         RunStatus::kFailed, std::nullopt, reason);
  return 1;
}

bool process_alive(int64_t pid) {
  if (pid <= 0) return false;
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;  // no /proc: trust kill()
  size_t paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'Z';
}

base::Status reap_lost_runs(const std::string& project_dir, const StoreLayout& layout, RunStore& store) {
  SD_ASSIGN_OR_RETURN(std::vector<RunRecord> runs, store.list_runs(project_dir));
  for (const RunRecord& run : runs) {
    if (is_finished(run.status)) continue;
    bool lost = run.supervisor_pid > 0 ? !process_alive(run.supervisor_pid)
                                       : now_ms() - run.submitted_ms > 10 * 60 * 1000;  // never launched
    if (!lost) continue;
    std::string reason = run.supervisor_pid > 0
                             ? "its supervisor (pid " + std::to_string(run.supervisor_pid) + ") ended without finishing it"
                             : "it was never started";
    SD_ASSIGN_OR_RETURN(bool moved, store.transition(project_dir, run.name, {run.status}, RunStatus::kFailed,
                                                     std::nullopt, reason));
    if (moved) {
      auto log = LogWriter::open(base::join_path(layout.run_dir(project_dir, run.name), "log"));
      if (log.is_ok()) (void)(*log)->sys("failed: " + reason);
    }
  }
  return Status::ok();
}

base::Status request_stop(const RunRecord& run, bool abort, RunStore& store) {
  if (is_finished(run.status)) {
    return base::invalid_argument("run " + run.name + " has already finished (" +
                                  std::string(run_status_name(run.status)) + ")");
  }
  RunStatus to = abort ? RunStatus::kAborted : RunStatus::kStopped;
  if (run.status == RunStatus::kSubmitted) {
    // Not begun: the supervisor will find it stopped and not start it.
    SD_ASSIGN_OR_RETURN(bool moved, store.transition(run.repo, run.name, {RunStatus::kSubmitted}, to, std::nullopt,
                                                     abort ? "aborted by the user" : "stopped by the user"));
    if (moved) return Status::ok();
  }
  if (!process_alive(run.supervisor_pid)) {
    return base::not_found("run " + run.name + ": its supervisor (pid " + std::to_string(run.supervisor_pid) +
                           ") is gone; `sdstack ps` marks it failed");
  }
  if (kill(static_cast<pid_t>(run.supervisor_pid), abort ? SIGUSR1 : SIGTERM) != 0) {
    return base::io_error("run " + run.name + ": cannot signal its supervisor (pid " +
                          std::to_string(run.supervisor_pid) + "): " + std::strerror(errno));
  }
  return Status::ok();
}

}  // namespace sdstack::flow
