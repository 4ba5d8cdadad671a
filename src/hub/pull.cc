// `sdstack pull` as a library call: revision -> commit -> listing -> selection -> downloads -> refs.
#include "hub/pull.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "base/file.h"
#include "base/log.h"
#include "hub/cache.h"
#include "hub/download.h"

namespace sdstack::hub {
namespace {

std::string parent_dir(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::string pull_hint(const std::string& repo_id) { return "run `sdstack pull " + repo_id + "` while online"; }

base::Result<nlohmann::json> read_model_index(const std::string& path) {
  SD_ASSIGN_OR_RETURN(std::string text, base::read_file(path));
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return base::data_loss(path + ": model_index.json is not a JSON object");
  return json;
}

// Components whose class is a model (weights expected), not a tokenizer, scheduler or processor.
bool expects_weights(const nlohmann::json& value) {
  if (!value.is_array() || value.size() != 2 || !value[1].is_string()) return false;
  const std::string cls = value[1];
  for (const char* suffix :
       {"Scheduler", "Tokenizer", "TokenizerFast", "FeatureExtractor", "ImageProcessor", "Processor"}) {
    const std::string s = suffix;
    if (cls.size() >= s.size() && cls.compare(cls.size() - s.size(), s.size(), s) == 0) return false;
  }
  return true;
}

// Copies `from` to `to` as a plain file: a temporary beside it, flushed, given `from`'s times, renamed.
base::Status copy_plain(const std::string& from, const std::string& to) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return base::io_error(from + ": cannot open: " + std::strerror(errno));
  struct stat info;
  ::fstat(in, &info);
  const std::string temp = base::temporary_path(to);
  int out = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) {
    base::Status status = base::io_error(temp + ": cannot create: " + std::strerror(errno));
    ::close(in);
    return status;
  }
  auto fail = [&](const std::string& what) {
    const int error = errno;
    ::close(in);
    ::close(out);
    ::unlink(temp.c_str());  // nothing half-copied stays behind
    return base::io_error(to + ": " + what + ": " + std::strerror(error) +
                          (error == ENOSPC || error == EDQUOT ? " (the disk is full: free some space)" : ""));
  };
  bool kernel_copy = true;
  for (;;) {
    ssize_t n = 0;
    if (kernel_copy) {
      n = ::copy_file_range(in, nullptr, out, nullptr, 1 << 30, 0);
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
        kernel_copy = false;  // another file system or an old kernel: copy through a buffer
        continue;
      }
    } else {
      char buffer[1 << 16];
      n = ::read(in, buffer, sizeof buffer);
      for (ssize_t off = 0; n > 0 && off < n;) {
        ssize_t w = ::write(out, buffer + off, static_cast<size_t>(n - off));
        if (w < 0 && errno != EINTR) return fail("cannot write");
        if (w > 0) off += w;
      }
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("cannot copy");
    if (n == 0) break;
  }
  const struct timespec times[2] = {info.st_atim, info.st_mtim};
  if (::fsync(out) != 0) return fail("cannot flush");
  ::futimens(out, times);
  ::close(in);
  if (::close(out) != 0) {
    ::unlink(temp.c_str());
    return base::io_error(to + ": cannot close: " + std::strerror(errno));
  }
  if (::rename(temp.c_str(), to.c_str()) != 0) {
    base::Status status = base::io_error(to + ": cannot rename into place: " + std::strerror(errno));
    ::unlink(temp.c_str());
    return status;
  }
  return base::Status::ok();
}

base::Status copy_to_folder(const RepoCache& cache, const std::string& commit, const std::vector<std::string>& files,
                            const std::string& dir) {
  for (const std::string& file : files) {
    const std::string from = cache.snapshot_path(commit, file), to = base::join_path(dir, file);
    struct stat source, existing;
    if (::stat(from.c_str(), &source) != 0) {
      return base::not_found(from + ": missing from the cache: " + pull_hint(cache.repo_id()));
    }
    // Already copied by an earlier pull: same size and time as the blob (it gets the blob's time).
    if (::lstat(to.c_str(), &existing) == 0 && S_ISREG(existing.st_mode) && existing.st_size == source.st_size &&
        existing.st_mtim.tv_sec == source.st_mtim.tv_sec && existing.st_mtim.tv_nsec == source.st_mtim.tv_nsec) {
      continue;
    }
    SD_RETURN_IF_ERROR(make_directories(parent_dir(to)));
    SD_RETURN_IF_ERROR(copy_plain(from, to));
  }
  return base::Status::ok();
}

base::Result<PullResult> pull_offline(const HubSettings& settings, const PullRequest& request, const RepoCache& cache) {
  const std::string where = request.repo_id + " at revision '" + request.revision + "'";
  SD_ASSIGN_OR_RETURN(std::optional<std::string> commit, cache.commit_for(request.revision));
  if (!commit) {
    return base::not_found(where + " is not in the Hugging Face cache (" + settings.cache_dir +
                           ") and offline mode (--offline or HF_HUB_OFFLINE) forbids downloading it; " +
                           pull_hint(request.repo_id));
  }
  const std::vector<std::string> files = cache.snapshot_files(*commit);
  const std::string snapshot = cache.snapshot_dir(*commit);
  auto incomplete = [&](const std::string& why) {
    return base::not_found(
        where + " is incomplete in the Hugging Face cache (" + snapshot + "): " + why +
        "; offline mode (--offline or HF_HUB_OFFLINE) forbids downloading the rest: " + pull_hint(request.repo_id));
  };
  if (std::find(files.begin(), files.end(), "model_index.json") == files.end())
    return incomplete("no model_index.json");
  SD_ASSIGN_OR_RETURN(nlohmann::json model_index, read_model_index(base::join_path(snapshot, "model_index.json")));
  auto selected = select_pipeline_files(request.repo_id, model_index, files, request.select);
  if (!selected.is_ok()) return incomplete(selected.status().message());
  // Without the Hub's listing, a component folder without weights can only be told apart from a
  // tokenizer by its class.
  for (auto it = model_index.begin(); it != model_index.end(); ++it) {
    if (it.key() == "safety_checker" || it.key() == "feature_extractor" || !expects_weights(it.value())) continue;
    const std::string folder = it.key() + "/";
    bool has_weights = std::any_of(selected->begin(), selected->end(), [&](const std::string& path) {
      return path.rfind(folder, 0) == 0 && path.size() > 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0;
    });
    if (!has_weights) return incomplete("no weights in " + folder);
  }
  PullResult result;
  result.commit = *commit;
  result.folder = snapshot;
  result.files = *selected;
  result.cached_files = static_cast<int>(selected->size());
  result.offline = true;
  return result;
}

base::Result<PullResult> pull_online(const HubSettings& settings, const PullRequest& request, const RepoCache& cache) {
  HubClient hub(settings);
  auto commit = hub.resolve_revision(request.repo_id, request.revision);
  if (!commit.is_ok()) {
    // Offline by accident: say what the cache could serve.
    auto cached = cache.commit_for(request.revision);
    if (commit.status().message().rfind("cannot reach", 0) == 0 && cached.is_ok() && cached->has_value() &&
        base::is_directory(cache.snapshot_dir(**cached))) {
      return base::Status(commit.status().code(), commit.status().message() + " (the cache has " + request.repo_id +
                                                      " at '" + request.revision + "', commit " +
                                                      (*cached)->substr(0, 7) + ")");
    }
    return commit.status();
  }
  SD_ASSIGN_OR_RETURN(std::vector<RepoFile> listing, hub.list_files(request.repo_id, *commit));
  std::map<std::string, const RepoFile*> by_path;
  std::vector<std::string> paths;
  for (const RepoFile& file : listing) {
    by_path[file.path] = &file;
    paths.push_back(file.path);
  }
  DownloadOptions quiet{.jobs = 1, .show_progress = false};
  DownloadReport index_report;
  nlohmann::json model_index;
  auto index = by_path.find("model_index.json");
  if (index != by_path.end()) {
    SD_ASSIGN_OR_RETURN(index_report, download_files(hub, cache, *commit, {*index->second}, quiet));
    SD_ASSIGN_OR_RETURN(model_index, read_model_index(cache.blob_path(index->second->blob_name())));
  } else if (request.select.include.empty()) {
    return base::not_found(
        request.repo_id + " at revision '" + request.revision +
        "' has no model_index.json: it is not a diffusers pipeline. Pull single files with --include GLOB");
  }
  SD_ASSIGN_OR_RETURN(std::vector<std::string> selected,
                      select_pipeline_files(request.repo_id, model_index, paths, request.select));
  if (selected.empty()) {
    return base::not_found(request.repo_id + " at revision '" + request.revision + "': no file matches --include");
  }
  std::vector<RepoFile> wanted;
  for (const std::string& path : selected) wanted.push_back(*by_path.at(path));
  DownloadOptions options{.jobs = request.jobs, .show_progress = request.show_progress};
  SD_ASSIGN_OR_RETURN(DownloadReport report, download_files(hub, cache, *commit, wanted, options));
  // Last: refs/REVISION is what tells readers of the cache that this commit is the revision's.
  SD_RETURN_IF_ERROR(cache.write_ref(request.revision, *commit));

  PullResult result;
  result.commit = *commit;
  result.folder = cache.snapshot_dir(*commit);
  result.files = std::move(selected);
  // model_index.json was fetched first, so the second round found it cached.
  result.downloaded_files = report.downloaded_files + index_report.downloaded_files;
  result.cached_files = std::max(0, static_cast<int>(result.files.size()) - result.downloaded_files);
  result.downloaded_bytes = report.downloaded_bytes + index_report.downloaded_bytes;
  return result;
}

}  // namespace

base::Result<PullResult> pull(const HubSettings& settings, const PullRequest& request) {
  SD_RETURN_IF_ERROR(validate_repo_id(request.repo_id));
  if (request.revision.empty() || request.revision.find("..") != std::string::npos) {
    return base::invalid_argument("'" + request.revision + "' is not a revision (a branch, tag or commit hash)");
  }
  RepoCache cache(settings.cache_dir, request.repo_id);
  base::Result<PullResult> result =
      settings.offline ? pull_offline(settings, request, cache) : pull_online(settings, request, cache);
  if (!result.is_ok() || request.to_dir.empty()) return result;
  SD_RETURN_IF_ERROR(make_directories(request.to_dir));
  SD_RETURN_IF_ERROR(copy_to_folder(cache, result->commit, result->files, request.to_dir));
  result->folder = request.to_dir;
  return result;
}

base::Result<std::string> find_cached_pipeline(const std::string& cache_dir, const std::string& repo_id,
                                               const std::string& revision) {
  SD_RETURN_IF_ERROR(validate_repo_id(repo_id));
  RepoCache cache(cache_dir, repo_id);
  SD_ASSIGN_OR_RETURN(std::optional<std::string> commit, cache.commit_for(revision));
  if (!commit) {
    return base::not_found(repo_id + " is not in the Hugging Face cache (" + cache_dir +
                           "); download it with `sdstack pull " + repo_id + "`");
  }
  const std::string snapshot = cache.snapshot_dir(*commit);
  if (!base::file_exists(base::join_path(snapshot, "model_index.json"))) {
    return base::not_found(repo_id + " is incomplete in the Hugging Face cache (no model_index.json in " + snapshot +
                           "); download it with `sdstack pull " + repo_id + "`");
  }
  return snapshot;
}

}  // namespace sdstack::hub
