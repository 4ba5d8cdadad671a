// Finding the project and snapshotting its files with git's own view of what belongs to the repo.
#include "flow/project.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "base/file.h"
#include "base/subprocess.h"

namespace sdstack::flow {
namespace {

namespace fs = std::filesystem;

// Runs `git ARGS` in `dir`; the error names the command and what git said.
base::Result<std::string> git(const std::string& dir, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"git"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto output = base::run_process(argv, dir);
  if (!output.is_ok()) {
    if (output.status().code() == base::StatusCode::kNotFound) {
      return base::not_found("git is not installed: sdstack needs it to find the project (apt-get install git)");
    }
    return output.status();
  }
  if (output->exit_code != 0) {
    std::string command = "git";
    for (const std::string& arg : args) command += " " + arg;
    std::string said = output->err;
    while (!said.empty() && (said.back() == '\n' || said.back() == ' ')) said.pop_back();
    return base::io_error(dir + ": `" + command + "` failed: " + said);
  }
  return std::move(output->out);
}

std::string trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  return text;
}

bool has_workflow_folder(const fs::path& dir) {
  std::error_code error;
  return fs::is_directory(dir / ".sdstack", error) || fs::is_directory(dir / ".dstack", error);
}

base::Status copy_entry(const std::string& from, const std::string& to) {
  struct stat info;
  if (lstat(from.c_str(), &info) != 0) return base::io_error(from + ": " + std::strerror(errno));
  std::error_code error;
  fs::create_directories(fs::path(to).parent_path(), error);
  if (error) return base::io_error(to + ": cannot create its folder: " + error.message());
  if (S_ISLNK(info.st_mode)) {
    fs::path target = fs::read_symlink(from, error);
    if (!error) fs::create_symlink(target, to, error);
  } else if (S_ISREG(info.st_mode)) {
    fs::copy_file(from, to, fs::copy_options::overwrite_existing, error);
    if (!error) fs::permissions(to, static_cast<fs::perms>(info.st_mode & 07777), error);
  }
  if (error) return base::io_error(from + ": cannot copy into the run's folder: " + error.message());
  return base::Status::ok();
}

}  // namespace

base::Result<Project> find_project(const std::string& start_dir) {
  std::error_code error;
  fs::path start = fs::weakly_canonical(fs::absolute(start_dir), error);
  if (error) return base::io_error(start_dir + ": " + error.message());
  auto top = git(start.string(), {"rev-parse", "--show-toplevel"});
  if (!top.is_ok()) {
    if (top.status().code() == base::StatusCode::kNotFound) return top.status();
    return base::not_found(start.string() + " is not in a git repository: sdstack runs a project's committed and "
                           "uncommitted files, so it needs one (run `git init` there first)");
  }
  Project project;
  project.git_root = fs::weakly_canonical(trimmed(*top)).string();
  project.dir = project.git_root;
  for (fs::path dir = start;; dir = dir.parent_path()) {
    if (has_workflow_folder(dir)) {
      project.dir = dir.string();
      break;
    }
    if (dir.string() == project.git_root || dir == dir.parent_path()) break;
  }
  auto head = git(project.dir, {"rev-parse", "--verify", "-q", "HEAD"});
  project.head = head.is_ok() ? trimmed(*head) : "";
  auto branch = git(project.dir, {"symbolic-ref", "-q", "--short", "HEAD"});
  project.branch = branch.is_ok() ? trimmed(*branch) : "";
  auto remote = git(project.dir, {"config", "--get", "remote.origin.url"});
  project.remote_url = remote.is_ok() ? trimmed(*remote) : "";
  SD_ASSIGN_OR_RETURN(std::string status, git(project.dir, {"status", "--porcelain", "--untracked-files=normal", "."}));
  project.dirty = !status.empty();
  return project;
}

base::Result<SnapshotStats> snapshot_project(const Project& project, const std::string& dest) {
  std::error_code error;
  fs::create_directories(dest, error);
  if (error) return base::io_error(dest + ": cannot create the run's folder: " + error.message());
  // -z: names verbatim; --cached --others --exclude-standard: tracked plus untracked-not-ignored,
  // relative to project.dir because git runs there.
  SD_ASSIGN_OR_RETURN(std::string listing,
                      git(project.dir, {"ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."}));
  SnapshotStats stats;
  size_t begin = 0;
  std::string previous;
  while (begin < listing.size()) {
    size_t end = listing.find('\0', begin);
    if (end == std::string::npos) end = listing.size();
    std::string relative = listing.substr(begin, end - begin);
    begin = end + 1;
    if (relative.empty() || relative == previous) continue;  // a conflicted file is listed once per stage
    previous = relative;
    std::string from = base::join_path(project.dir, relative);
    struct stat info;
    if (lstat(from.c_str(), &info) != 0) continue;  // tracked but deleted in the working tree
    if (S_ISDIR(info.st_mode)) continue;            // a submodule
    SD_RETURN_IF_ERROR(copy_entry(from, base::join_path(dest, relative)));
    stats.files += 1;
    if (S_ISREG(info.st_mode)) stats.bytes += info.st_size;
  }
  return stats;
}

}  // namespace sdstack::flow
