// The Hub's HTTP API: revision -> commit, commit -> file listing, and the errors users see.
#include "hub/api.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <thread>

#include "base/file.h"
#include "base/log.h"

namespace sdstack::hub {
namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

bool env_true(const char* name) {
  std::string value = env(name);
  std::transform(value.begin(), value.end(), value.begin(), [](unsigned char c) { return std::tolower(c); });
  return value == "1" || value == "true" || value == "yes" || value == "on";
}

bool is_hex(const std::string& text, size_t length) {
  return text.size() == length && std::all_of(text.begin(), text.end(), [](char c) {
           return std::isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f');
         });
}

// A listed path that stays inside the folder it is written to: no "..", no absolute paths.
bool is_safe_path(const std::string& path) {
  if (path.empty() || path.front() == '/' || path.find('\\') != std::string::npos ||
      path.find('\0') != std::string::npos) {
    return false;
  }
  size_t begin = 0;
  while (begin <= path.size()) {
    size_t end = path.find('/', begin);
    if (end == std::string::npos) end = path.size();
    std::string segment = path.substr(begin, end - begin);
    if (segment.empty() || segment == "." || segment == "..") return false;
    begin = end + 1;
  }
  return true;
}

// The rel="next" URL of a Link header ("<URL>; rel=\"next\", ..."), or "".
std::string next_page(const std::string& link, const std::string& endpoint) {
  size_t at = 0;
  while ((at = link.find('<', at)) != std::string::npos) {
    size_t close = link.find('>', at);
    if (close == std::string::npos) return "";
    size_t next_link = link.find('<', close);
    std::string params =
        link.substr(close + 1, next_link == std::string::npos ? std::string::npos : next_link - close - 1);
    if (params.find("rel=\"next\"") != std::string::npos || params.find("rel=next") != std::string::npos) {
      std::string url = link.substr(at + 1, close - at - 1);
      if (!url.empty() && url.front() == '/') {  // relative to the endpoint's origin
        size_t scheme = endpoint.find("://");
        size_t path = endpoint.find('/', scheme == std::string::npos ? 0 : scheme + 3);
        url = endpoint.substr(0, path) + url;
      }
      return url;
    }
    at = close;
  }
  return "";
}

// What the Hub said about an error: its X-Error-Message header, or the "error" of its JSON body.
std::string hub_message(const HttpResponse& response) {
  auto header = response.headers.find("x-error-message");
  if (header != response.headers.end()) return header->second;
  nlohmann::json body = nlohmann::json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_object() && body.contains("error") && body["error"].is_string()) return body["error"];
  return "";
}

}  // namespace

std::chrono::milliseconds RetryPolicy::delay(int retry) const {
  auto wait = first_delay;
  for (int i = 1; i < retry && wait < max_delay; ++i) wait *= 2;
  return std::min(wait, max_delay);
}

HubSettings HubSettings::from_environment() {
  HubSettings settings;
  if (std::string endpoint = env("HF_ENDPOINT"); !endpoint.empty()) settings.endpoint = endpoint;
  while (settings.endpoint.size() > 1 && settings.endpoint.back() == '/') settings.endpoint.pop_back();
  settings.token = env("HF_TOKEN");
  if (settings.token.empty()) settings.token = env("HUGGING_FACE_HUB_TOKEN");  // the older name
  if (std::string dir = env("HF_HUB_CACHE"); !dir.empty()) {
    settings.cache_dir = dir;
  } else if (std::string legacy = env("HUGGINGFACE_HUB_CACHE"); !legacy.empty()) {
    settings.cache_dir = legacy;
  } else if (std::string home = env("HF_HOME"); !home.empty()) {
    settings.cache_dir = base::join_path(home, "hub");
  } else if (std::string xdg = env("XDG_CACHE_HOME"); !xdg.empty()) {
    settings.cache_dir = base::join_path(xdg, "huggingface/hub");
  } else {
    settings.cache_dir = base::join_path(env("HOME").empty() ? "." : env("HOME"), ".cache/huggingface/hub");
  }
  settings.offline = env_true("HF_HUB_OFFLINE");
  if (std::string delay = env("SDSTACK_HUB_RETRY_DELAY_MS"); !delay.empty()) {
    settings.retry.first_delay = std::chrono::milliseconds(std::max(0L, std::strtol(delay.c_str(), nullptr, 10)));
  }
  return settings;
}

base::Status validate_repo_id(const std::string& repo_id) {
  auto bad = [&](const std::string& why) {
    return base::invalid_argument("'" + repo_id + "' is not a Hub repository id (" + why +
                                  "); expected ORG/NAME as in the model's URL, like runwayml/stable-diffusion-v1-5");
  };
  if (repo_id.empty() || repo_id.size() > 96) return bad("it must be 1 to 96 characters");
  if (std::count(repo_id.begin(), repo_id.end(), '/') > 1) return bad("more than one '/'");
  if (repo_id.find("--") != std::string::npos || repo_id.find("..") != std::string::npos) {
    return bad("'--' and '..' are not allowed");
  }
  size_t slash = repo_id.find('/');
  for (const std::string& part :
       {repo_id.substr(0, slash), slash == std::string::npos ? "x" : repo_id.substr(slash + 1)}) {
    if (part.empty()) return bad("an empty part");
    if (part.front() == '-' || part.front() == '.' || part.back() == '-' || part.back() == '.') {
      return bad("a part starts or ends with '-' or '.'");
    }
    for (char c : part) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
        return bad(std::string("the character '") + c + "'");
      }
    }
  }
  return base::Status::ok();
}

bool is_commit_hash(const std::string& text) { return is_hex(text, 40); }

HubClient::HubClient(HubSettings settings) : settings_(std::move(settings)) {
  while (settings_.endpoint.size() > 1 && settings_.endpoint.back() == '/') settings_.endpoint.pop_back();
}

HttpRequest HubClient::request(const std::string& url) const {
  HttpRequest request;
  request.url = url;
  request.bearer_token = settings_.token;
  request.user_agent = settings_.user_agent;
  return request;
}

std::string HubClient::file_url(const std::string& repo_id, const std::string& revision,
                                const std::string& path) const {
  return settings_.endpoint + "/" + repo_id + "/resolve/" + url_escape(revision, false) + "/" + url_escape(path, true);
}

HttpResponse HubClient::get_json(HttpClient& http, const std::string& url) const {
  for (int attempt = 1;; ++attempt) {
    HttpResponse response = http.get(request(url));
    const bool transient = response.error == NetError::kInterrupted ||
                           (response.error == NetError::kNone && (response.status == 429 || response.status >= 500));
    if (!transient || attempt >= settings_.retry.max_attempts) return response;
    SD_LOG(kDebug, "retrying " << url << " ("
                               << (response.error_text.empty() ? "HTTP " + std::to_string(response.status)
                                                               : response.error_text)
                               << ")");
    std::this_thread::sleep_for(settings_.retry.delay(attempt));
  }
}

base::Result<std::string> HubClient::resolve_revision(const std::string& repo_id, const std::string& revision) const {
  HttpClient http;
  const std::string url = settings_.endpoint + "/api/models/" + repo_id + "/revision/" + url_escape(revision, false);
  HttpResponse response = get_json(http, url);
  if (response.error != NetError::kNone)
    return network_error(response, "looking up " + repo_id + " at revision '" + revision + "'");
  if (response.status != 200) return status_error(response, repo_id, revision, "");
  nlohmann::json info = nlohmann::json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (!info.is_object() || !info.contains("sha") || !info["sha"].is_string() || !is_commit_hash(info["sha"])) {
    return base::data_loss(url + ": the Hub's answer has no commit hash ('sha'); is HF_ENDPOINT (" +
                           settings_.endpoint + ") a Hugging Face Hub?");
  }
  return info["sha"].get<std::string>();
}

base::Result<std::vector<RepoFile>> HubClient::list_files(const std::string& repo_id, const std::string& commit) const {
  HttpClient http;
  std::vector<RepoFile> files;
  std::string url =
      settings_.endpoint + "/api/models/" + repo_id + "/tree/" + url_escape(commit, false) + "?recursive=true";
  for (int page = 0; !url.empty(); ++page) {
    if (page >= 10000) return base::data_loss(repo_id + ": the Hub's file listing does not end (over 10000 pages)");
    HttpResponse response = get_json(http, url);
    if (response.error != NetError::kNone) return network_error(response, "listing the files of " + repo_id);
    if (response.status != 200) return status_error(response, repo_id, commit, "");
    nlohmann::json entries = nlohmann::json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    if (!entries.is_array()) return base::data_loss(url + ": the Hub's file listing is not a JSON list");
    for (const nlohmann::json& entry : entries) {
      if (!entry.is_object() || entry.value("type", "") != "file") continue;
      RepoFile file;
      file.path = entry.value("path", "");
      if (!is_safe_path(file.path)) {
        return base::data_loss(repo_id + ": the Hub lists a file with an unsafe path '" + file.path + "'; refusing it");
      }
      file.size = entry.value("size", int64_t{0});
      file.oid = entry.value("oid", "");
      if (entry.contains("lfs") && entry["lfs"].is_object()) {
        file.sha256 = entry["lfs"].value("oid", "");
        file.size = entry["lfs"].value("size", file.size);
        if (!is_hex(file.sha256, 64)) {
          return base::data_loss(repo_id + ": " + file.path + ": the listing's LFS hash '" + file.sha256 +
                                 "' is not a sha256");
        }
      }
      if (file.oid.empty() || !std::all_of(file.oid.begin(), file.oid.end(),
                                           [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); })) {
        return base::data_loss(repo_id + ": " + file.path + ": the listing's object id '" + file.oid + "' is not hex");
      }
      if (file.size < 0) return base::data_loss(repo_id + ": " + file.path + ": negative size in the listing");
      files.push_back(std::move(file));
    }
    auto link = response.headers.find("link");
    url = link == response.headers.end() ? "" : next_page(link->second, settings_.endpoint);
  }
  std::sort(files.begin(), files.end(), [](const RepoFile& a, const RepoFile& b) { return a.path < b.path; });
  return files;
}

base::Status HubClient::status_error(const HttpResponse& response, const std::string& repo_id,
                                     const std::string& revision, const std::string& path) const {
  const long status = response.status;
  const std::string code = response.headers.count("x-error-code") ? response.headers.at("x-error-code") : "";
  const std::string http = " (HTTP " + std::to_string(status) + ")";
  const bool have_token = !settings_.token.empty();
  const std::string what = path.empty() ? repo_id : repo_id + ": " + path;
  if (status == 401) {
    if (!have_token) {
      return base::invalid_argument(what + ": the Hub asks for a token" + http +
                                    ": the repository is gated or private. Set HF_TOKEN (or pass --token) to a token "
                                    "of an account with access (" +
                                    settings_.endpoint + "/settings/tokens)");
    }
    return base::invalid_argument(what + ": the Hub refused the token" + http +
                                  ": it is invalid or expired, or has no access to this repository; check HF_TOKEN "
                                  "(or --token)");
  }
  if (status == 403) {
    return base::invalid_argument(what + ": access denied" + http + ": the repository is gated or private; " +
                                  (have_token
                                       ? "this token's account has no access: accept the repository's conditions at " +
                                             settings_.endpoint + "/" + repo_id + ", or use a token that has access"
                                       : "set HF_TOKEN (or pass --token) to a token of an account with access"));
  }
  if (status == 404) {
    if (code == "RepoNotFound" || (code.empty() && revision.empty() && path.empty())) {
      return base::not_found(repo_id + ": repository not found on " + settings_.endpoint + http +
                             "; check the id (ORG/NAME, as in the model's URL)" +
                             (have_token ? "" : ", or set HF_TOKEN if it is private"));
    }
    if (code == "RevisionNotFound") {
      return base::not_found(repo_id + ": revision '" + revision + "' not found" + http +
                             "; check --revision (a branch, tag or commit hash)");
    }
    if (code == "EntryNotFound" || !path.empty()) {
      return base::not_found(repo_id + ": file '" + path + "' not found at revision '" + revision + "'" + http);
    }
    return base::not_found(repo_id + ": repository or revision '" + revision + "' not found on " + settings_.endpoint +
                           http + "; check the id and --revision");
  }
  std::string message = hub_message(response);
  if (message.size() > 300) message = message.substr(0, 300) + "...";
  return base::io_error(what + ": the Hub answered HTTP " + std::to_string(status) +
                        (message.empty() ? "" : ": " + message) +
                        (status >= 500 || status == 429 ? "; the Hub is busy or down: try again later" : ""));
}

base::Status HubClient::network_error(const HttpResponse& response, const std::string& what) const {
  if (response.error == NetError::kUnreachable) {
    return base::io_error("cannot reach the Hugging Face Hub at " + settings_.endpoint + " (" + response.error_text +
                          ") while " + what +
                          "; check the network connection (or HF_ENDPOINT), or pass --offline (HF_HUB_OFFLINE=1) "
                          "to use only what is already in the cache");
  }
  if (response.error == NetError::kInterrupted) {
    return base::io_error(what + ": the connection to " + settings_.endpoint + " broke (" + response.error_text +
                          "); run the command again: downloads resume where they stopped");
  }
  return base::io_error(what + ": " + response.error_text);
}

}  // namespace sdstack::hub
