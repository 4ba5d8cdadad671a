// The Hugging Face cache layout (huggingface_hub's), so that sdstack and diffusers share downloads:
//   CACHE/models--ORG--NAME/blobs/ETAG            the file, named by sha256 (LFS) or git blob id
//   CACHE/models--ORG--NAME/blobs/ETAG.incomplete a download in progress (resumable)
//   CACHE/models--ORG--NAME/snapshots/COMMIT/PATH a relative symlink to ../../blobs/ETAG
//   CACHE/models--ORG--NAME/refs/REVISION         the commit hash a branch or tag pointed to
//   CACHE/.locks/models--ORG--NAME/ETAG.lock      held while a blob is written (huggingface_hub's lock)
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace sdstack::hub {

// "org/name" -> "models--org--name".
std::string repo_folder_name(const std::string& repo_id);

// Creates `dir` and its missing parents.
base::Status make_directories(const std::string& dir);

// One repo's folder in the cache. Paths only, plus the small atomic updates below; thread-safe.
class RepoCache {
 public:
  RepoCache(std::string cache_dir, std::string repo_id);

  const std::string& cache_dir() const { return cache_dir_; }
  const std::string& repo_id() const { return repo_id_; }
  const std::string& root() const { return root_; }
  std::string blob_path(const std::string& blob_name) const;
  std::string incomplete_path(const std::string& blob_name) const;
  std::string lock_path(const std::string& blob_name) const;
  std::string snapshot_dir(const std::string& commit) const;
  std::string snapshot_path(const std::string& commit, const std::string& file) const;

  // The commit `revision` stands for: itself when it is a commit hash, else what refs/REVISION
  // holds; nullopt when the cache has no such ref.
  base::Result<std::optional<std::string>> commit_for(const std::string& revision) const;
  // Records revision -> commit in refs/ (nothing for a commit hash, or when already recorded).
  base::Status write_ref(const std::string& revision, const std::string& commit) const;
  // Points snapshots/COMMIT/FILE at blobs/BLOB with a relative symlink (the cache stays valid when
  // moved), replacing whatever was there atomically.
  base::Status link_snapshot(const std::string& commit, const std::string& file, const std::string& blob_name) const;
  // The files under snapshots/COMMIT (relative paths, sorted) whose links resolve.
  std::vector<std::string> snapshot_files(const std::string& commit) const;

 private:
  std::string cache_dir_;
  std::string repo_id_;
  std::string root_;
};

// An exclusive flock(2) on a lock file, released when destroyed. Blocks while another process
// (sdstack or huggingface_hub) holds it.
class FileLock {
 public:
  static base::Result<FileLock> acquire(const std::string& path);
  FileLock(FileLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  FileLock& operator=(FileLock&&) = delete;
  FileLock(const FileLock&) = delete;
  ~FileLock();

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace sdstack::hub
