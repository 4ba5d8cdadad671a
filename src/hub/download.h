// Downloads a commit's files into the Hugging Face cache: several at once, each resumable (HTTP
// Range onto blobs/ETAG.incomplete), verified (sha256 for LFS files, size for the rest), and
// renamed into place only once verified, then linked from snapshots/COMMIT/.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "hub/api.h"
#include "hub/cache.h"

namespace sdstack::hub {

struct DownloadOptions {
  int jobs = 4;               // files transferred at once
  bool show_progress = true;  // a bar with bytes/s and ETA, drawn only when stderr is a terminal
};

struct DownloadReport {
  int downloaded_files = 0;
  int cached_files = 0;          // already in the cache: not transferred
  int64_t downloaded_bytes = 0;  // transferred in this run (a resumed file counts its rest only)
};

// Fetches `files` of `repo_id` at `commit` (a full commit hash) into `cache`, and links each from
// snapshots/COMMIT/. A blob already in the cache with the listed size is not fetched again.
//
// Failures: transient ones (5xx, 429, dropped or stalled connections) are retried with
// `hub.settings().retry`'s backoff, resuming with Range; a sha256 or size mismatch discards the
// partial file and downloads it once more, then fails. The first failure stops the other transfers
// and is returned, naming the file; a partial download is kept as .incomplete for the next run
// to resume (disk full included: the message names it so it can be deleted), never under the
// blob's name.
base::Result<DownloadReport> download_files(const HubClient& hub, const RepoCache& cache, const std::string& commit,
                                            const std::vector<RepoFile>& files, const DownloadOptions& options);

}  // namespace sdstack::hub
