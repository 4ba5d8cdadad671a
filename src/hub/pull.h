// `sdstack pull` as a library call: a diffusers pipeline from the Hub into the Hugging Face cache
// (and optionally a plain folder), or from the cache alone when offline.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "hub/api.h"
#include "hub/select.h"

namespace sdstack::hub {

struct PullRequest {
  std::string repo_id;            // "runwayml/stable-diffusion-v1-5"
  std::string revision = "main";  // branch, tag or commit hash
  SelectOptions select;           // variant, --include, --exclude
  std::string to_dir;             // non-empty: also copy the files here as plain files
  int jobs = 4;                   // files transferred at once
  bool show_progress = true;      // on a terminal only
};

struct PullResult {
  std::string commit;
  std::string folder;              // the snapshot folder, or to_dir
  std::vector<std::string> files;  // repo paths, sorted
  int downloaded_files = 0;
  int cached_files = 0;
  int64_t downloaded_bytes = 0;
  bool offline = false;  // served from the cache without asking the Hub
};

// Online: resolves the revision to a commit, lists its files, fetches model_index.json, selects
// what the pipeline needs (select_pipeline_files) and downloads what the cache lacks; then records
// refs/REVISION, last, so that a pull that failed half-way never looks complete to readers of refs
// (sdstack generate, diffusers' local_files_only).
// Offline (settings.offline): the same selection over the cached snapshot; an error naming the
// cache and telling to pull while online when the revision or a needed file is missing.
// With to_dir, the selected files are then copied there (plain files, each renamed into place;
// ones already there with the blob's size and time are left as they are).
base::Result<PullResult> pull(const HubSettings& settings, const PullRequest& request);

// The snapshot folder of `repo_id` at `revision` in the cache, without the network: refs/REVISION
// -> snapshots/COMMIT, which must hold model_index.json. The error says to `sdstack pull`.
base::Result<std::string> find_cached_pipeline(const std::string& cache_dir, const std::string& repo_id,
                                               const std::string& revision = "main");

}  // namespace sdstack::hub
