// The Hugging Face Hub's HTTP API as sdstack uses it: settings from the environment, a revision's
// commit, a commit's file listing, file URLs, and errors that name the repo, revision or file.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "hub/http.h"

namespace sdstack::hub {

// Exponential backoff for transient failures (5xx, 429, dropped or stalled connections).
struct RetryPolicy {
  int max_attempts = 5;  // per file, counted since the last attempt that made progress
  std::chrono::milliseconds first_delay{500};
  std::chrono::milliseconds max_delay{8000};
  // The wait before retry number `retry` (1, 2, ...): first_delay doubled each time, capped.
  std::chrono::milliseconds delay(int retry) const;
};

// Where the Hub is, who asks, where the cache is. from_environment() reads what huggingface_hub
// reads, so both tools share settings and cache.
struct HubSettings {
  std::string endpoint = "https://huggingface.co";
  std::string token;  // a secret: sent as a bearer token, never printed or logged
  std::string cache_dir;
  bool offline = false;
  std::string user_agent = "sdstack";
  RetryPolicy retry;

  // HF_ENDPOINT; HF_TOKEN; HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub,
  // else ~/.cache/huggingface/hub; HF_HUB_OFFLINE=1; SDSTACK_HUB_RETRY_DELAY_MS (the first
  // backoff delay: tests make it small).
  static HubSettings from_environment();
};

// "org/name" (or a canonical "name"): letters, digits, '-', '_', '.'; no "--" or "..". The error
// shows the expected form.
base::Status validate_repo_id(const std::string& repo_id);
// True for a full 40-hex-digit commit hash.
bool is_commit_hash(const std::string& text);

// One file of a repo at a commit, as the Hub lists it.
struct RepoFile {
  std::string path;    // "unet/diffusion_pytorch_model.safetensors"
  int64_t size = 0;    // of the real file (for LFS, not of the pointer)
  std::string oid;     // the git blob id (sha1)
  std::string sha256;  // LFS files only: the sha256 of the content
  bool is_lfs() const { return !sha256.empty(); }
  // The name of its blob in the cache: the ETag the Hub serves it with (sha256 for LFS files, the
  // git blob id for the rest), as huggingface_hub names blobs.
  const std::string& blob_name() const { return is_lfs() ? sha256 : oid; }
};

// Talks to one Hub endpoint. Thread-safe (each call uses its own HttpClient or the caller's).
class HubClient {
 public:
  explicit HubClient(HubSettings settings);
  const HubSettings& settings() const { return settings_; }

  // The commit a revision (branch, tag, commit) points to: GET /api/models/REPO/revision/REV.
  base::Result<std::string> resolve_revision(const std::string& repo_id, const std::string& revision) const;
  // Every file at `commit`, with sizes and LFS hashes: GET /api/models/REPO/tree/COMMIT?recursive=true,
  // following the Link header's pages. Paths that would escape a folder are refused.
  base::Result<std::vector<RepoFile>> list_files(const std::string& repo_id, const std::string& commit) const;
  // ENDPOINT/REPO/resolve/REV/PATH: the file itself, possibly through a redirect to a CDN.
  std::string file_url(const std::string& repo_id, const std::string& revision, const std::string& path) const;

  // A request to this Hub with the token and user agent set.
  HttpRequest request(const std::string& url) const;
  // The error for a response with a non-2xx status: 401/403 (gated or private: set HF_TOKEN),
  // 404 (which of repo, revision, file), others with the Hub's message. `path` may be empty.
  base::Status status_error(const HttpResponse& response, const std::string& repo_id, const std::string& revision,
                            const std::string& path) const;
  // The error for a response that never completed (`response.error` set), naming `what`.
  base::Status network_error(const HttpResponse& response, const std::string& what) const;

 private:
  // GET with retries on 429/5xx and interrupted connections (not on an unreachable host: the
  // user is likely offline, and is told so at once).
  HttpResponse get_json(HttpClient& http, const std::string& url) const;

  HubSettings settings_;
};

}  // namespace sdstack::hub
