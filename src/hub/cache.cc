// The Hugging Face cache layout: paths, refs, snapshot symlinks, blob locks.
#include "hub/cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "base/file.h"
#include "hub/api.h"

namespace sdstack::hub {
namespace {

std::string parent_dir(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::string os_error(const std::string& path, const std::string& what) {
  return path + ": " + what + ": " + std::strerror(errno) +
         (errno == ENOSPC || errno == EDQUOT ? " (the disk is full: free some space)" : "");
}

}  // namespace

std::string repo_folder_name(const std::string& repo_id) {
  std::string name = "models";
  size_t begin = 0;
  for (;;) {
    size_t slash = repo_id.find('/', begin);
    name += "--" + repo_id.substr(begin, slash == std::string::npos ? std::string::npos : slash - begin);
    if (slash == std::string::npos) break;
    begin = slash + 1;
  }
  return name;
}

base::Status make_directories(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error && !base::is_directory(dir)) return base::io_error(dir + ": cannot create folder: " + error.message());
  return base::Status::ok();
}

RepoCache::RepoCache(std::string cache_dir, std::string repo_id)
    : cache_dir_(std::move(cache_dir)),
      repo_id_(std::move(repo_id)),
      root_(base::join_path(cache_dir_, repo_folder_name(repo_id_))) {}

std::string RepoCache::blob_path(const std::string& blob_name) const { return root_ + "/blobs/" + blob_name; }

std::string RepoCache::incomplete_path(const std::string& blob_name) const {
  return blob_path(blob_name) + ".incomplete";
}

std::string RepoCache::lock_path(const std::string& blob_name) const {
  return base::join_path(cache_dir_, ".locks/" + repo_folder_name(repo_id_) + "/" + blob_name + ".lock");
}

std::string RepoCache::snapshot_dir(const std::string& commit) const { return root_ + "/snapshots/" + commit; }

std::string RepoCache::snapshot_path(const std::string& commit, const std::string& file) const {
  return snapshot_dir(commit) + "/" + file;
}

base::Result<std::optional<std::string>> RepoCache::commit_for(const std::string& revision) const {
  if (is_commit_hash(revision)) return std::optional<std::string>(revision);
  if (revision.find("..") != std::string::npos)
    return base::invalid_argument("'" + revision + "': not a revision name");
  const std::string ref = root_ + "/refs/" + revision;
  if (!base::file_exists(ref)) return std::optional<std::string>();
  SD_ASSIGN_OR_RETURN(std::string commit, base::read_file(ref));
  while (!commit.empty() && std::isspace(static_cast<unsigned char>(commit.back()))) commit.pop_back();
  if (!is_commit_hash(commit)) return base::data_loss(ref + ": not a commit hash; delete it and pull again");
  return std::optional<std::string>(commit);
}

base::Status RepoCache::write_ref(const std::string& revision, const std::string& commit) const {
  if (revision == commit) return base::Status::ok();
  if (revision.find("..") != std::string::npos)
    return base::invalid_argument("'" + revision + "': not a revision name");
  const std::string ref = root_ + "/refs/" + revision;
  auto current = base::read_file(ref);
  if (current.is_ok() && *current == commit) return base::Status::ok();  // a read-only cache stays usable
  SD_RETURN_IF_ERROR(make_directories(parent_dir(ref)));
  return base::write_file_atomic(ref, commit);  // no newline, as huggingface_hub writes it
}

base::Status RepoCache::link_snapshot(const std::string& commit, const std::string& file,
                                      const std::string& blob_name) const {
  const std::string link = snapshot_path(commit, file);
  // snapshots/COMMIT/a/b -> ../../../blobs/X: one ".." per folder between the link and the repo root.
  std::string target;
  for (size_t i = 0; i < 2 + static_cast<size_t>(std::count(file.begin(), file.end(), '/')); ++i) target += "../";
  target += "blobs/" + blob_name;
  char existing[4096];
  ssize_t length = ::readlink(link.c_str(), existing, sizeof existing);
  if (length > 0 && std::string(existing, static_cast<size_t>(length)) == target) return base::Status::ok();
  SD_RETURN_IF_ERROR(make_directories(parent_dir(link)));
  const std::string temp = base::temporary_path(link);
  if (::symlink(target.c_str(), temp.c_str()) != 0) return base::io_error(os_error(temp, "cannot create symlink"));
  if (::rename(temp.c_str(), link.c_str()) != 0) {
    base::Status status = base::io_error(os_error(link, "cannot put symlink in place"));
    ::unlink(temp.c_str());
    return status;
  }
  return base::Status::ok();
}

std::vector<std::string> RepoCache::snapshot_files(const std::string& commit) const {
  std::vector<std::string> files;
  const std::filesystem::path dir = snapshot_dir(commit);
  std::error_code error;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, error);
       !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
    std::error_code status_error;
    if (std::filesystem::is_regular_file(it->path(), status_error)) {  // follows the symlink: dangling ones drop out
      // Not std::filesystem::relative: it resolves the symlink into blobs/.
      files.push_back(it->path().generic_string().substr(dir.generic_string().size() + 1));
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

base::Result<FileLock> FileLock::acquire(const std::string& path) {
  SD_RETURN_IF_ERROR(make_directories(parent_dir(path)));
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return base::io_error(os_error(path, "cannot open lock file"));
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    base::Status status = base::io_error(os_error(path, "cannot lock"));
    ::close(fd);
    return status;
  }
  return FileLock(fd);
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

}  // namespace sdstack::hub
