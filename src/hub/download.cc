// Parallel, resumable, verified downloads into the Hugging Face cache.
#include "hub/download.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "base/file.h"
#include "base/log.h"
#include "base/progress.h"
#include "base/sha256.h"

namespace sdstack::hub {
namespace {

int64_t file_size(const std::string& path) {
  struct stat info;
  if (::stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) return -1;
  return static_cast<int64_t>(info.st_size);
}

// 0, or the errno of a failed write.
int write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}

class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() { ::close(fd_); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

// "bytes 100-199/1000" -> 100, or -1.
int64_t content_range_start(const HttpHeaders& headers) {
  auto it = headers.find("content-range");
  if (it == headers.end()) return -1;
  const std::string& value = it->second;
  size_t space = value.find(' ');
  if (space == std::string::npos) return -1;
  return std::strtoll(value.c_str() + space + 1, nullptr, 10);
}

const base::Status kCancelled = base::internal_error("cancelled");

enum class Outcome { kComplete, kRetry, kMismatch };

struct Attempt {
  Outcome outcome = Outcome::kComplete;
  bool progressed = false;  // bytes were added to the partial file
  std::string why;          // for kRetry / kMismatch
  NetError net = NetError::kNone;
};

// Fetches one file onto its .incomplete, attempt after attempt, and renames it into place.
class FileFetcher {
 public:
  FileFetcher(const HubClient& hub, const RepoCache& cache, const std::string& commit, const RepoFile& file,
              HttpClient& http, std::atomic<int64_t>& done, std::atomic<int64_t>& run_bytes,
              const std::atomic<bool>& cancel)
      : hub_(hub),
        cache_(cache),
        commit_(commit),
        file_(file),
        http_(http),
        done_(done),
        run_bytes_(run_bytes),
        cancel_(cancel),
        partial_(cache.incomplete_path(file.blob_name())) {}

  base::Status run() {
    const RetryPolicy& retry = hub_.settings().retry;
    int failures = 0, mismatches = 0;
    for (int attempts = 1;; ++attempts) {
      if (cancel_) return kCancelled;
      SD_ASSIGN_OR_RETURN(Attempt attempt, attempt_once());
      if (attempt.outcome == Outcome::kComplete) {
        const std::string blob = cache_.blob_path(file_.blob_name());
        if (::rename(partial_.c_str(), blob.c_str()) != 0) {
          return base::io_error(blob + ": cannot rename the verified download into place: " + std::strerror(errno));
        }
        return cache_.link_snapshot(commit_, file_.path, file_.blob_name());
      }
      if (attempt.outcome == Outcome::kMismatch) {
        ::unlink(partial_.c_str());  // nothing unverified stays behind
        done_ = 0;
        if (++mismatches >= 2) {
          return base::data_loss(
              cache_.repo_id() + ": " + file_.path + ": " + attempt.why +
              ", twice; the download was discarded. The file is corrupted on its way here (a proxy?) "
              "or on the server: try again later");
        }
        SD_LOG(kWarning, file_.path << ": " << attempt.why << "; discarded it, downloading it again");
        continue;
      }
      failures = attempt.progressed ? 1 : failures + 1;
      if (failures >= retry.max_attempts || attempts >= 100) {
        const int64_t kept = std::max<int64_t>(0, file_size(partial_));
        if (attempt.net == NetError::kUnreachable) {
          HttpResponse response;
          response.error = attempt.net;
          response.error_text = attempt.why;
          return hub_.network_error(response, "downloading " + file_.path);
        }
        return base::io_error(cache_.repo_id() + ": " + file_.path + ": download failed after " +
                              std::to_string(attempts) + (attempts == 1 ? " attempt (" : " attempts (") + attempt.why +
                              "); run the command again to resume (" + base::format_bytes(kept) + " of " +
                              base::format_bytes(file_.size) + " kept in " + partial_ + ")");
      }
      SD_LOG(kDebug, file_.path << ": " << attempt.why << "; retrying");
      // Sleep in slices so that a failure elsewhere stops this file quickly.
      auto until = std::chrono::steady_clock::now() + retry.delay(failures);
      while (!cancel_ && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
            std::chrono::milliseconds(20), until - std::chrono::steady_clock::now()));
      }
    }
  }

 private:
  base::Status write_error(int error, int64_t written) const {
    if (error == ENOSPC || error == EDQUOT || error == EFBIG) {
      return base::io_error("disk full: cannot write " + partial_ + " (" + cache_.repo_id() + ": " + file_.path + ", " +
                            base::format_bytes(written) + " of " + base::format_bytes(file_.size) +
                            " written): " + std::strerror(error) + ". Free some space in " + cache_.cache_dir() +
                            " and run the command again: the download resumes from this partial file (delete it to "
                            "get its space back instead)");
    }
    return base::io_error(partial_ + ": cannot write: " + std::strerror(error));
  }

  base::Result<Attempt> attempt_once() {
    int fd = ::open(partial_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return base::io_error(partial_ + ": cannot open: " + std::strerror(errno));
    FdCloser closer(fd);
    struct stat info;
    if (::fstat(fd, &info) != 0) return base::io_error(partial_ + ": cannot stat: " + std::strerror(errno));
    int64_t start = static_cast<int64_t>(info.st_size);
    if (start > file_.size) {  // not a prefix of this file: start over
      if (::ftruncate(fd, 0) != 0) return base::io_error(partial_ + ": cannot truncate: " + std::strerror(errno));
      start = 0;
    }
    base::Sha256 hash;
    if (file_.is_lfs() && start > 0) SD_RETURN_IF_ERROR(hash_prefix(fd, start, hash));
    if (::lseek(fd, start, SEEK_SET) < 0) return base::io_error(partial_ + ": cannot seek: " + std::strerror(errno));
    const int64_t resumed_from = start;
    int64_t written = start;
    done_ = written;

    Attempt attempt;
    if (start < file_.size) {
      int write_errno = 0;
      bool overflow = false, restart = false;
      base::Status header_problem;
      HttpRequest request = hub_.request(hub_.file_url(cache_.repo_id(), commit_, file_.path));
      request.range_start = start;
      request.on_headers = [&](const HttpResponse& response) {
        // The Hub's own answer names the commit and the content; if they disagree with the
        // listing, the bytes that follow are not the file we mean to verify.
        auto commit = response.first_headers.find("x-repo-commit");
        if (commit != response.first_headers.end() && commit->second != commit_) {
          header_problem = base::data_loss(cache_.repo_id() + ": " + file_.path + ": the Hub serves commit " +
                                           commit->second + ", not " + commit_ + " as listed");
          return false;
        }
        auto etag = response.first_headers.find("x-linked-etag");
        if (file_.is_lfs() && etag != response.first_headers.end() && normalize_etag(etag->second) != file_.sha256) {
          header_problem = base::data_loss(cache_.repo_id() + ": " + file_.path + ": the Hub serves content " +
                                           normalize_etag(etag->second) + ", not " + file_.sha256 + " as listed");
          return false;
        }
        if (response.status == 206 && content_range_start(response.headers) != start) {
          restart = true;  // a range we did not ask for
          return false;
        }
        if (response.status == 200 && start > 0) {  // the server ignored Range: take the whole file
          if (::ftruncate(fd, 0) != 0 || ::lseek(fd, 0, SEEK_SET) != 0) {
            write_errno = errno;
            return false;
          }
          hash.reset();
          written = start = 0;
          done_ = 0;
        }
        return true;
      };
      request.on_body = [&](const char* data, size_t size) {
        if (written + static_cast<int64_t>(size) > file_.size) {
          overflow = true;
          return false;
        }
        if ((write_errno = write_all(fd, data, size)) != 0) return false;
        if (file_.is_lfs()) hash.update(data, size);
        written += static_cast<int64_t>(size);
        done_ = written;
        run_bytes_ += static_cast<int64_t>(size);
        return true;
      };
      request.cancelled = [&] { return cancel_.load(); };
      HttpResponse response = http_.get(request);

      if (write_errno != 0) return write_error(write_errno, written);
      if (!header_problem.is_ok()) return header_problem;
      attempt.progressed = written > resumed_from;
      if (overflow) {
        return Attempt{Outcome::kMismatch, false,
                       "the server sent more than the listed " + std::to_string(file_.size) + " bytes"};
      }
      if (restart) {
        if (::ftruncate(fd, 0) != 0) return base::io_error(partial_ + ": cannot truncate: " + std::strerror(errno));
        return Attempt{Outcome::kRetry, false, "the server answered another byte range than asked"};
      }
      if (response.error == NetError::kAborted) return kCancelled;
      if (response.error == NetError::kOther) return hub_.network_error(response, "downloading " + file_.path);
      if (response.error != NetError::kNone) {
        attempt.outcome = Outcome::kRetry;
        attempt.why = response.error_text;
        attempt.net = response.error;
        return attempt;
      }
      if (response.status == 416) {  // our partial file is longer than the server's: not its prefix
        if (::ftruncate(fd, 0) != 0) return base::io_error(partial_ + ": cannot truncate: " + std::strerror(errno));
        return Attempt{Outcome::kRetry, false, "HTTP 416 (range not satisfiable)"};
      }
      if (response.status == 429 || response.status >= 500) {
        attempt.outcome = Outcome::kRetry;
        attempt.why = "HTTP " + std::to_string(response.status);
        return attempt;
      }
      if (response.status < 200 || response.status >= 300) {
        return hub_.status_error(response, cache_.repo_id(), commit_, file_.path);
      }
      if (written < file_.size) {
        attempt.outcome = Outcome::kRetry;
        attempt.why = "the server sent " + std::to_string(written) + " of " + std::to_string(file_.size) + " bytes";
        return attempt;
      }
    }
    if (::fsync(fd) != 0) return write_error(errno, written);
    if (file_.is_lfs()) {
      std::string digest = hash.hex_digest();
      if (digest != file_.sha256) {
        return Attempt{Outcome::kMismatch, false,
                       "sha256 mismatch (expected " + file_.sha256 + ", got " + digest + ")"};
      }
    }
    return Attempt{};
  }

  base::Status hash_prefix(int fd, int64_t length, base::Sha256& hash) const {
    std::vector<char> buffer(1 << 20);
    for (int64_t offset = 0; offset < length;) {
      size_t want = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(buffer.size()), length - offset));
      ssize_t n = ::pread(fd, buffer.data(), want, offset);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return base::io_error(partial_ + ": cannot read back the partial download: " + std::strerror(errno));
      hash.update(buffer.data(), static_cast<size_t>(n));
      offset += n;
    }
    return base::Status::ok();
  }

  const HubClient& hub_;
  const RepoCache& cache_;
  const std::string& commit_;
  const RepoFile& file_;
  HttpClient& http_;
  std::atomic<int64_t>& done_;
  std::atomic<int64_t>& run_bytes_;
  const std::atomic<bool>& cancel_;
  const std::string partial_;
};

}  // namespace

base::Result<DownloadReport> download_files(const HubClient& hub, const RepoCache& cache, const std::string& commit,
                                            const std::vector<RepoFile>& files, const DownloadOptions& options) {
  DownloadReport report;
  std::vector<const RepoFile*> todo;
  for (const RepoFile& file : files) {
    if (file_size(cache.blob_path(file.blob_name())) == file.size) {
      SD_RETURN_IF_ERROR(cache.link_snapshot(commit, file.path, file.blob_name()));
      ++report.cached_files;
    } else {
      todo.push_back(&file);
    }
  }
  if (todo.empty()) return report;
  SD_RETURN_IF_ERROR(make_directories(cache.root() + "/blobs"));
  // Largest first: the long transfers start early and the small ones fill the gaps.
  std::stable_sort(todo.begin(), todo.end(), [](const RepoFile* a, const RepoFile* b) { return a->size > b->size; });

  int64_t total = 0, already = 0;
  for (const RepoFile* file : todo) {
    total += file->size;
    already += std::clamp<int64_t>(file_size(cache.incomplete_path(file->blob_name())), 0, file->size);
  }
  std::unique_ptr<std::atomic<int64_t>[]> done(new std::atomic<int64_t>[todo.size()]);
  for (size_t i = 0; i < todo.size(); ++i) done[i] = 0;
  std::atomic<int64_t> run_bytes{0};
  std::atomic<size_t> next{0};
  std::atomic<int> finished{0}, downloaded{0}, running{0};
  std::atomic<bool> cancel{false};
  std::mutex error_mutex;
  base::Status first_error;

  auto worker = [&] {
    HttpClient http;  // one connection pool per thread
    for (;;) {
      const size_t i = next++;
      if (i >= todo.size() || cancel) break;
      const RepoFile& file = *todo[i];
      base::Status status = [&]() -> base::Status {
        SD_ASSIGN_OR_RETURN(FileLock lock, FileLock::acquire(cache.lock_path(file.blob_name())));
        // Another process may have finished it while we waited for the lock.
        const std::string blob = cache.blob_path(file.blob_name());
        int64_t size = file_size(blob);
        if (size == file.size) return cache.link_snapshot(commit, file.path, file.blob_name());
        if (size >= 0) {
          SD_LOG(kWarning, blob << ": " << size << " bytes, expected " << file.size << "; downloading it again");
          ::unlink(blob.c_str());
        }
        SD_RETURN_IF_ERROR(FileFetcher(hub, cache, commit, file, http, done[i], run_bytes, cancel).run());
        ++downloaded;
        SD_LOG(kDebug, "downloaded " << file.path);
        return base::Status::ok();
      }();
      if (!status.is_ok()) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (first_error.is_ok() && !(cancel && status.message() == kCancelled.message())) first_error = status;
        cancel = true;
        break;
      }
      done[i] = file.size;
      ++finished;
    }
    --running;
  };

  const int jobs = std::max(1, std::min<int>(options.jobs, static_cast<int>(todo.size())));
  running = jobs;
  std::vector<std::thread> threads;
  for (int j = 0; j < jobs; ++j) threads.emplace_back(worker);

  std::optional<base::ProgressBar> bar;
  if (options.show_progress) {
    bar.emplace("downloading", total);
    bar->set_unit(base::ProgressUnit::kBytes);
    bar->set_baseline(already);
  }
  while (running > 0) {
    if (bar && bar->enabled()) {
      int64_t sum = 0;
      for (size_t i = 0; i < todo.size(); ++i) sum += done[i];
      bar->set_detail(std::to_string(finished.load()) + "/" + std::to_string(todo.size()) + " files");
      bar->update(std::max<int64_t>(0, std::min(sum, total - 1)));  // complete only once all are verified
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (std::thread& thread : threads) thread.join();
  if (bar && first_error.is_ok()) {
    bar->set_detail(std::to_string(finished.load()) + "/" + std::to_string(todo.size()) + " files");
    bar->update(total);
  }
  bar.reset();  // ends the bar's line before any message
  if (!first_error.is_ok()) return first_error;
  report.downloaded_files = downloaded;
  report.cached_files += static_cast<int>(todo.size()) - downloaded;
  report.downloaded_bytes = run_bytes;
  return report;
}

}  // namespace sdstack::hub
