// `sdstack ps`, `logs`, `stop`, `rm`: the runs of this project.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "base/file.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/workspace.h"

namespace sdstack::cli {
namespace {

// Runs named on the command line, or all of the project's matching `keep` with -a.
base::Result<std::vector<flow::RunRecord>> selected_runs(Workspace& workspace, const std::vector<std::string>& names,
                                                         bool all, bool (*keep)(const flow::RunRecord&)) {
  std::vector<flow::RunRecord> runs;
  if (all) {
    SD_ASSIGN_OR_RETURN(std::vector<flow::RunRecord> every, workspace.store->list_runs(workspace.project.dir));
    for (flow::RunRecord& run : every) {
      if (keep(run)) runs.push_back(std::move(run));
    }
    return runs;
  }
  if (names.empty()) return base::invalid_argument("name a run (or pass -a for all)");
  for (const std::string& name : names) {
    SD_ASSIGN_OR_RETURN(flow::RunRecord run, find_run(workspace, name));
    runs.push_back(std::move(run));
  }
  return runs;
}

std::string ending(const flow::RunRecord& run) {
  if (!run.reason.empty()) return run.reason;
  if (run.status == flow::RunStatus::kDone) return "exit code 0";
  if (!run.app_url.empty() && !flow::is_finished(run.status)) return run.app_url;
  return "";
}

}  // namespace

int run_ps(int argc, char** argv) {
  CLI::App app("List this project's runs: the active ones and the latest of each workflow (-a: all), newest first.",
               argv[0]);
  bool all = false;
  app.add_flag("-a,--all", all, "Show every run");
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  auto workspace = open_workspace();
  if (!workspace.is_ok()) return report(workspace.status());
  if (auto reaped = flow::reap_lost_runs(workspace->project.dir, workspace->layout, *workspace->store);
      !reaped.is_ok()) {
    return report(reaped);
  }
  auto runs = workspace->store->list_runs(workspace->project.dir);
  if (!runs.is_ok()) return report(runs.status());
  std::printf("%-24s %-20s %-9s %-10s %-12s %-12s %s\n", "RUN", "WORKFLOW", "PROVIDER", "STATUS", "SUBMITTED", "TAGS",
              "EXIT / URL");
  std::set<std::string> shown_workflows;
  for (const flow::RunRecord& run : *runs) {
    bool latest_of_workflow = shown_workflows.insert(run.workflow).second;
    if (!all && !latest_of_workflow && flow::is_finished(run.status)) continue;
    std::string tags;
    for (const std::string& tag : run.tags) tags += (tags.empty() ? "" : ",") + tag;
    std::printf("%-24s %-20s %-9s %-10s %-12s %-12s %s\n", run.name.c_str(),
                run.workflow.empty() ? "(upload)" : run.workflow.c_str(), run.provider.c_str(),
                std::string(flow::run_status_name(run.status)).c_str(), time_ago(run.submitted_ms).c_str(),
                tags.empty() ? "-" : tags.c_str(), ending(run).c_str());
  }
  return 0;
}

int run_logs(int argc, char** argv) {
  CLI::App app("Print a run's output (stdout, stderr, and sdstack's own lines), from its log in the store.", argv[0]);
  std::string name;
  bool follow = false, timestamps = false;
  app.add_option("run", name, "The run (or :TAG)")->required();
  app.add_flag("-f,--follow", follow, "Keep printing new output until the run ends");
  app.add_flag("-T,--timestamps", timestamps, "Start each line with its UTC time");
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  auto workspace = open_workspace();
  if (!workspace.is_ok()) return report(workspace.status());
  auto run = find_run(*workspace, name);
  if (!run.is_ok()) return report(run.status());
  const std::string log = base::join_path(workspace->layout.run_dir(workspace->project.dir, run->name), "log");
  auto print = [timestamps](const flow::LogLine& line) { print_log_line(line, timestamps); };
  if (!follow) {
    auto lines = flow::read_log(log);
    if (!lines.is_ok()) return report(lines.status());
    for (const flow::LogLine& line : *lines) print(line);
    return 0;
  }
  auto finished = [&]() {
    (void)flow::reap_lost_runs(workspace->project.dir, workspace->layout, *workspace->store);
    auto now = workspace->store->get_run(workspace->project.dir, run->name);
    return !now.is_ok() || flow::is_finished(now->status);
  };
  if (base::Status followed = flow::follow_log(log, print, finished); !followed.is_ok()) return report(followed);
  return 0;
}

int run_stop(int argc, char** argv) {
  CLI::App app("Stop runs. A graceful stop sends the job SIGTERM, waits for it (then SIGKILL) and still saves its\n"
               "artifacts; an abort (-x) kills it at once and saves nothing.",
               argv[0]);
  std::vector<std::string> names;
  bool all = false, abort = false;
  app.add_option("runs", names, "Runs to stop (or :TAG)");
  app.add_flag("-a,--all", all, "Stop every active run of this project");
  app.add_flag("-x,--abort", abort, "Abort: kill at once, don't save artifacts");
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  auto workspace = open_workspace();
  if (!workspace.is_ok()) return report(workspace.status());
  (void)flow::reap_lost_runs(workspace->project.dir, workspace->layout, *workspace->store);
  auto runs = selected_runs(*workspace, names, all, [](const flow::RunRecord& run) { return !flow::is_finished(run.status); });
  if (!runs.is_ok()) return report(runs.status());
  for (const flow::RunRecord& run : *runs) {
    if (base::Status stopped = flow::request_stop(run, abort, *workspace->store); !stopped.is_ok()) return report(stopped);
  }
  // Wait for each to end, as `docker stop` does: the grace period plus time to save artifacts.
  int failures = 0;
  for (const flow::RunRecord& run : *runs) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
    base::Result<flow::RunRecord> now = run;
    while (std::chrono::steady_clock::now() < deadline) {
      (void)flow::reap_lost_runs(workspace->project.dir, workspace->layout, *workspace->store);
      now = workspace->store->get_run(workspace->project.dir, run.name);
      if (!now.is_ok() || flow::is_finished(now->status)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!now.is_ok()) return report(now.status());
    std::printf("%s %s\n", run.name.c_str(), std::string(flow::run_status_name(now->status)).c_str());
    if (!flow::is_finished(now->status)) failures += 1;
  }
  return failures == 0 ? 0 : kExitFailure;
}

int run_rm(int argc, char** argv) {
  CLI::App app("Delete finished runs: their records, logs, working folders and artifacts (files other runs\n"
               "still hold stay).",
               argv[0]);
  std::vector<std::string> names;
  bool all = false;
  app.add_option("runs", names, "Runs to delete (or :TAG)");
  app.add_flag("-a,--all", all, "Delete every finished run of this project");
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  auto workspace = open_workspace();
  if (!workspace.is_ok()) return report(workspace.status());
  (void)flow::reap_lost_runs(workspace->project.dir, workspace->layout, *workspace->store);
  auto runs = selected_runs(*workspace, names, all, [](const flow::RunRecord& run) { return flow::is_finished(run.status); });
  if (!runs.is_ok()) return report(runs.status());
  for (const flow::RunRecord& run : *runs) {
    if (!flow::is_finished(run.status)) {
      return report(base::invalid_argument("run " + run.name + " is " + std::string(flow::run_status_name(run.status)) +
                                           ": stop it first (`sdstack stop " + run.name + "`)"));
    }
  }
  for (const flow::RunRecord& run : *runs) {
    const std::string key = flow::artifact_key(workspace->project.dir, run.name);
    auto manifest = workspace->artifacts->manifest(key);
    if (manifest.is_ok() && *manifest) {
      if (base::Status removed = workspace->artifacts->remove(key); !removed.is_ok()) return report(removed);
    }
    if (base::Status deleted = workspace->store->delete_run(workspace->project.dir, run.name); !deleted.is_ok()) {
      return report(deleted);
    }
    std::error_code error;
    std::filesystem::remove_all(workspace->layout.run_dir(workspace->project.dir, run.name), error);
    std::printf("%s deleted\n", run.name.c_str());
  }
  if (!runs->empty()) {
    auto freed = workspace->artifacts->gc();
    if (!freed.is_ok()) return report(freed.status());
  }
  return 0;
}

}  // namespace sdstack::cli
