// The runner commands' shared setup and printing.
#include "cli/workspace.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>

namespace sdstack::cli {

base::Result<Workspace> open_workspace(bool require_init) {
  Workspace workspace;
  std::error_code error;
  std::string cwd = std::filesystem::current_path(error).string();
  if (error) return base::io_error("cannot read the current directory: " + error.message());
  SD_ASSIGN_OR_RETURN(workspace.project, flow::find_project(cwd));
  workspace.layout = flow::StoreLayout::from_environment();
  std::filesystem::create_directories(workspace.layout.root, error);
  if (error) return base::io_error(workspace.layout.root + ": cannot create sdstack's store: " + error.message());
  chmod(workspace.layout.root.c_str(), 0700);  // it holds secrets and run logs
  SD_ASSIGN_OR_RETURN(workspace.store, flow::RunStore::open(workspace.layout.database()));
  workspace.artifacts = std::make_unique<flow::ArtifactStore>(workspace.layout.artifacts());
  if (require_init) {
    SD_ASSIGN_OR_RETURN(auto repo, workspace.store->find_repo(workspace.project.dir));
    if (!repo) {
      return base::not_found("project " + workspace.project.dir +
                             " is not initialized: run `sdstack init` in it first");
    }
  }
  return workspace;
}

base::Result<flow::RunRecord> find_run(Workspace& workspace, const std::string& reference) {
  const std::string& dir = workspace.project.dir;
  if (!reference.empty() && reference[0] == ':') {
    std::string tag = reference.substr(1);
    SD_ASSIGN_OR_RETURN(std::optional<std::string> run, workspace.store->tagged_run(dir, tag));
    if (!run) return base::not_found("no tag '" + tag + "' in this project (see `sdstack tags list`)");
    return workspace.store->get_run(dir, *run);
  }
  return workspace.store->get_run(dir, reference);
}

std::string self_executable() {
  std::error_code error;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? std::string("sdstack") : self.string();
}

void print_log_line(const flow::LogLine& line, bool timestamps) {
  std::string prefix;
  if (timestamps) {
    flow::LogLine stamp = line;
    stamp.text.clear();
    prefix = flow::format_log_line(stamp);
    prefix = prefix.substr(0, prefix.find(' ')) + " ";
  }
  switch (line.stream) {
    case flow::LogStream::kOut:
      std::fprintf(stdout, "%s%s\n", prefix.c_str(), line.text.c_str());
      std::fflush(stdout);
      break;
    case flow::LogStream::kErr:
      std::fprintf(stderr, "%s%s\n", prefix.c_str(), line.text.c_str());
      break;
    case flow::LogStream::kSys:
      std::fprintf(stderr, "%s%s\n", prefix.c_str(), line.text.c_str());  // "sdstack: ..." as written
      break;
  }
}

std::string time_ago(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  int64_t seconds = std::max<int64_t>(0, (now - unix_ms) / 1000);
  if (seconds < 60) return std::to_string(seconds) + "s ago";
  if (seconds < 3600) return std::to_string(seconds / 60) + " min ago";
  if (seconds < 86400) return std::to_string(seconds / 3600) + " h ago";
  std::time_t time = static_cast<std::time_t>(unix_ms / 1000);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%d", std::localtime(&time));
  return text;
}

}  // namespace sdstack::cli
