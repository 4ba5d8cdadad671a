// `sdstack init` and `sdstack run`: record the project, submit a workflow run, follow it; and the
// hidden `sdstack __supervise` that each run's supervisor process executes.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "base/strings.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/workspace.h"
#include "flow/spec.h"

namespace sdstack::cli {
namespace {

const char* kRunHelp =
    "Usage: sdstack run WORKFLOW [OPTIONS] [ARGS...] [-- ARGS...]\n"
    "\n"
    "Run a workflow of this project (.sdstack/workflows/*.yaml, .dstack/workflows/*.yaml) on this\n"
    "machine, or with --remote on the cheapest configured engine that fits (`sdstack offers`). It runs\n"
    "in a folder of its own holding the project's files as they are now (HEAD plus uncommitted\n"
    "changes and untracked, non-ignored files) and the artifacts of its deps, inside a bubblewrap\n"
    "sandbox when local. Its output is logged and shown; its artifacts are saved when it ends.\n"
    "\n"
    "Arguments sdstack doesn't claim (and all after `--`) fill ${{ run.args }}, each quoted so that\n"
    "spaces, quotes and $ arrive intact: sdstack run prompt-stable -P \"cats in hats\"\n"
    "\n"
    "Options:\n"
    "  -d, --detach          Submit and return at once (the run's name is printed)\n"
    "  -t, --tag TAG         Tag the run (its artifacts can then be a `- tag: TAG` dep)\n"
    "  -e, --env K=V         Set an environment variable (a bare K: take it from here); repeatable\n"
    "  --cpu N               Override the workflow's resources: CPUs\n"
    "  --memory SIZE         ... memory (16GB, 512MiB, ...)\n"
    "  --gpu N               ... GPU count\n"
    "  --gpu-name NAME       ... GPU model (A100, H100, ...)\n"
    "  --gpu-memory SIZE     ... GPU memory\n"
    "  --shm-size SIZE       ... shared memory (/dev/shm)\n"
    "  --no-sandbox          Run without bubblewrap (also: SDSTACK_SANDBOX=0)\n"
    "  --stop-grace SECONDS  On a graceful stop, SIGKILL this long after SIGTERM (default 10)\n"
    "  --remote              Run on a remote engine of `sdstack config`: the cheapest offer that fits\n"
    "  --backend NAME        ... on this backend only (implies --remote)\n"
    "  --retry N             ... after an infrastructure failure (host lost, node failure), try up to\n"
    "                        N more offers (not after the job's own non-zero exit)\n"
    "  --time LIMIT          Stop a remote run gracefully past this (90 = 90m, 30s, 2h; Slurm: --time)\n"
    "  -h, --help            Show this help\n"
    "\n"
    "Ctrl+C stops an attached run gracefully (its artifacts are saved); a second Ctrl+C aborts it.\n"
    "The exit status is the run's: 0 when done, the job's exit code when it failed, 130 when stopped.\n";

struct RunArguments {
  flow::RunOptions options;
  bool detach = false;
  bool help = false;
};

base::Result<int64_t> size_option(const std::string& flag, const std::string& value) {
  auto size = flow::parse_size(value);
  if (!size.is_ok()) return base::invalid_argument(flag + ": " + size.status().message());
  return size;
}

base::Result<int> count_option(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  long number = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || number < 0 || number > 4096) {
    return base::invalid_argument(flag + ": expected a count, got '" + value + "'");
  }
  return static_cast<int>(number);
}

// In seconds: "90" and "90m" are minutes, "30s" seconds, "2h" hours, "1d" days.
base::Result<int> duration_option(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  long number = std::strtol(value.c_str(), &end, 10);
  std::string unit = end != nullptr ? end : "";
  long factor = unit == "s" ? 1 : unit.empty() || unit == "m" ? 60 : unit == "h" ? 3600 : unit == "d" ? 86400 : 0;
  if (value.empty() || end == value.c_str() || number <= 0 || factor == 0 || number * factor > 365L * 86400) {
    return base::invalid_argument(flag + ": expected a duration like 90 (minutes), 30s, 90m, 2h or 1d, got '" + value +
                                  "'");
  }
  return static_cast<int>(number * factor);
}

// sdstack's own options are taken wherever they appear before `--`; everything else, in order, is
// the run's arguments. The workflow is the first word that is not an option of sdstack's.
base::Result<RunArguments> parse_run_arguments(int argc, char** argv) {
  RunArguments parsed;
  const std::vector<std::string> valued = {"-t", "--tag", "-e", "--env", "--cpu", "--memory", "--gpu",
                                           "--gpu-name", "--gpu-memory", "--shm-size", "--stop-grace",
                                           "--backend", "--retry", "--time"};
  if (const char* sandbox = std::getenv("SDSTACK_SANDBOX"); sandbox != nullptr && std::string(sandbox) == "0") {
    parsed.options.sandbox = false;
  }
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      for (++i; i < argc; ++i) parsed.options.args.push_back(argv[i]);
      break;
    }
    std::string flag = arg, value;
    bool inline_value = false;
    if (arg.rfind("--", 0) == 0 && arg.find('=') != std::string::npos) {
      flag = arg.substr(0, arg.find('='));
      value = arg.substr(arg.find('=') + 1);
      inline_value = true;
    }
    bool takes_value = std::find(valued.begin(), valued.end(), flag) != valued.end();
    if (takes_value && !inline_value) {
      if (i + 1 >= argc) return base::invalid_argument(flag + " needs a value");
      value = argv[++i];
    }
    auto& o = parsed.options;
    if (flag == "-h" || flag == "--help") {
      if (!o.workflow.empty()) {  // after the workflow's name, --help is the workflow's
        o.args.push_back(arg);
        continue;
      }
      parsed.help = true;
    } else if (flag == "-d" || flag == "--detach") {
      parsed.detach = true;
    } else if (flag == "--no-sandbox") {
      o.sandbox = false;
    } else if (flag == "--remote") {
      o.remote = true;
    } else if (flag == "--backend") {
      o.remote = true;
      o.backend = value;
    } else if (flag == "--time") {
      SD_ASSIGN_OR_RETURN(int seconds, duration_option(flag, value));
      o.time_limit_seconds = seconds;
    } else if (flag == "--retry") {
      SD_ASSIGN_OR_RETURN(int retries, count_option(flag, value));
      o.retries = retries;
    } else if (flag == "-t" || flag == "--tag") {
      o.tag = value;
    } else if (flag == "-e" || flag == "--env") {
      o.env.push_back(value);
    } else if (flag == "--cpu") {
      SD_ASSIGN_OR_RETURN(int cpu, count_option(flag, value));
      o.overrides.cpu = cpu;
    } else if (flag == "--memory") {
      SD_ASSIGN_OR_RETURN(int64_t bytes, size_option(flag, value));
      o.overrides.memory_bytes = bytes;
    } else if (flag == "--gpu") {
      SD_ASSIGN_OR_RETURN(int count, count_option(flag, value));
      o.overrides.gpu_count = count;
    } else if (flag == "--gpu-name") {
      o.overrides.gpu_name = value;
    } else if (flag == "--gpu-memory") {
      SD_ASSIGN_OR_RETURN(int64_t bytes, size_option(flag, value));
      o.overrides.gpu_memory_bytes = bytes;
    } else if (flag == "--shm-size") {
      SD_ASSIGN_OR_RETURN(int64_t bytes, size_option(flag, value));
      o.overrides.shm_size_bytes = bytes;
    } else if (flag == "--stop-grace") {
      SD_ASSIGN_OR_RETURN(int seconds, count_option(flag, value));
      o.grace_seconds = seconds;
    } else if (o.workflow.empty() && !arg.empty() && arg[0] != '-') {
      o.workflow = arg;
    } else if (o.workflow.empty()) {
      return base::invalid_argument("unknown option '" + arg + "' before the workflow's name" +
                                    base::did_you_mean(arg, {"--detach", "--tag", "--env", "--cpu", "--memory",
                                                             "--gpu", "--gpu-name", "--gpu-memory", "--shm-size",
                                                             "--no-sandbox", "--stop-grace", "--remote", "--backend", "--retry", "--time",
                                                             "--help"}));
    } else {
      o.args.push_back(arg);
    }
  }
  return parsed;
}

volatile sig_atomic_t g_interrupts = 0;
void on_interrupt(int) { g_interrupts = g_interrupts + 1; }

// Follows an attached run's log until it ends, passing Ctrl+C on: the first stops it gracefully,
// the second aborts it. Returns the run's final record.
base::Result<flow::RunRecord> follow_run(Workspace& workspace, const flow::JobPlan& plan, pid_t supervisor) {
  struct sigaction action{};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  int handled = 0;
  base::Status status = base::Status::ok();
  auto finished = [&]() {
    if (g_interrupts > handled) {
      handled = g_interrupts;
      bool abort = handled >= 2;
      std::fprintf(stderr, abort ? "\nsdstack: aborting run %s\n"
                                 : "\nsdstack: stopping run %s gracefully (Ctrl+C again to abort)\n",
                   plan.run.c_str());
      kill(supervisor, abort ? SIGUSR1 : SIGTERM);
    }
    auto run = workspace.store->get_run(plan.project_dir, plan.run);
    if (!run.is_ok()) {
      status = run.status();
      return true;
    }
    if (flow::is_finished(run->status)) return true;
    if (!flow::process_alive(supervisor)) {
      (void)flow::reap_lost_runs(plan.project_dir, workspace.layout, *workspace.store);
      return true;
    }
    return false;
  };
  SD_RETURN_IF_ERROR(flow::follow_log(plan.log_path, [](const flow::LogLine& line) { print_log_line(line, false); },
                                      finished));
  SD_RETURN_IF_ERROR(status);
  waitpid(supervisor, nullptr, WNOHANG);
  return workspace.store->get_run(plan.project_dir, plan.run);
}

int exit_status_of(const flow::RunRecord& run) {
  switch (run.status) {
    case flow::RunStatus::kDone:
      return 0;
    case flow::RunStatus::kStopped:
    case flow::RunStatus::kAborted:
      return 130;
    default:
      return run.exit_code && *run.exit_code > 0 ? *run.exit_code : kExitFailure;
  }
}

}  // namespace

int run_init(int argc, char** argv) {
  CLI::App app("Record this project (the git repository around the current directory; a remote is optional)\n"
               "so that its workflows can run. Runs, tags and secrets are kept per project.",
               argv[0]);
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  auto workspace = open_workspace(/*require_init=*/false);
  if (!workspace.is_ok()) return report(workspace.status());
  const flow::Project& project = workspace->project;
  flow::RepoRecord repo{project.dir, project.remote_url, project.head,
                        std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count()};
  if (base::Status put = workspace->store->put_repo(repo); !put.is_ok()) return report(put);
  auto workflows = flow::load_workflows(project.dir);
  std::printf("initialized %s (git root %s, %s)\n", project.dir.c_str(), project.git_root.c_str(),
              project.remote_url.empty() ? "no remote" : ("remote " + project.remote_url).c_str());
  if (!workflows.is_ok()) {
    std::fprintf(stderr, "sdstack: warning: %s\n", workflows.status().message().c_str());
  } else {
    std::printf("%zu workflow%s", workflows->size(), workflows->size() == 1 ? "" : "s");
    for (size_t i = 0; i < workflows->size(); ++i) std::printf("%s%s", i ? ", " : ": ", (*workflows)[i].name.c_str());
    std::printf("\n");
  }
  return 0;
}

int run_run(int argc, char** argv) {
  auto parsed = parse_run_arguments(argc, argv);
  if (!parsed.is_ok()) {
    std::fprintf(stderr, "sdstack run: error: %s\nRun 'sdstack run --help' for its options.\n",
                 parsed.status().message().c_str());
    return kExitUsage;
  }
  if (parsed->help) {
    std::fputs(kRunHelp, stdout);
    return 0;
  }
  if (parsed->options.workflow.empty()) {
    std::fprintf(stderr, "sdstack run: error: name the workflow to run\n\n%s", kRunHelp);
    return kExitUsage;
  }
  auto workspace = open_workspace();
  if (!workspace.is_ok()) return report(workspace.status());
  auto workflows = flow::load_workflows(workspace->project.dir);
  if (!workflows.is_ok()) return report(workflows.status());
  auto plan = flow::submit_run(workspace->project, *workflows, parsed->options, workspace->layout,
                               *workspace->store, *workspace->artifacts);
  if (!plan.is_ok()) return report(plan.status());
  auto supervisor = flow::launch_supervisor(*plan, self_executable(), *workspace->store);
  if (!supervisor.is_ok()) return report(supervisor.status());
  if (parsed->detach) {
    std::printf("%s\n", plan->run.c_str());
    std::fprintf(stderr, "sdstack: run %s submitted; follow it with `sdstack logs -f %s`%s\n", plan->run.c_str(),
                 plan->run.c_str(), plan->app_url.empty() ? "" : (", IDE at " + plan->app_url).c_str());
    return 0;
  }
  auto run = follow_run(*workspace, *plan, *supervisor);
  if (!run.is_ok()) return report(run.status());
  return exit_status_of(*run);
}

int run_supervise(int argc, char** argv) {
  CLI::App app("Runs one submitted run (started by `sdstack run`; not for direct use).", argv[0]);
  std::string project, run;
  app.add_option("--project", project)->required();
  app.add_option("--run", run)->required();
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  return flow::supervise(flow::StoreLayout::from_environment(), project, run);
}

}  // namespace sdstack::cli
