// HTTP GET on libcurl for the Hub client: redirects, Range, streamed bodies, transport errors
// classified so that callers know what is worth retrying.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>

namespace sdstack::hub {

// Header names are lowercased (HTTP header names are case-insensitive).
using HttpHeaders = std::map<std::string, std::string>;

// Why a request got no complete response.
enum class NetError {
  kNone,
  kUnreachable,  // name not resolved, connection refused, TLS handshake failed: no server answered
  kInterrupted,  // the connection broke or stalled mid-response: worth retrying, resuming with Range
  kAborted,      // a callback of the caller's stopped the transfer (disk full, cancelled)
  kOther,
};

struct HttpResponse {
  NetError error = NetError::kNone;
  std::string error_text;  // libcurl's description of `error`
  long status = 0;         // of the last response (after redirects)
  HttpHeaders headers;     // of the last response
  // Of the first response: the Hub's own answer (X-Repo-Commit, X-Linked-Etag) when it
  // redirected to a CDN.
  HttpHeaders first_headers;
  std::string body;        // error bodies (capped), and 2xx bodies when the request has no on_body
  int64_t body_bytes = 0;  // 2xx body bytes received
};

struct HttpRequest {
  std::string url;
  // Sent as "Authorization: Bearer <token>" to the URL's host only (libcurl drops it on a
  // redirect to another host). Never logged.
  std::string bearer_token;
  std::string user_agent = "sdstack";
  int64_t range_start = 0;  // > 0: "Range: bytes=<range_start>-"
  // Called once the last response's headers are in, before its body; returning false aborts.
  std::function<bool(const HttpResponse&)> on_headers;
  // Gets the body of a 2xx last response as it arrives; returning false aborts.
  std::function<bool(const char* data, size_t size)> on_body;
  // Polled while the transfer runs; returning true aborts.
  std::function<bool()> cancelled;
  long connect_timeout_ms = 10000;
  // A transfer slower than 1 kB/s for this long counts as interrupted.
  long stall_timeout_s = 30;
};

// One libcurl handle: its connections are kept alive between requests. Not thread-safe: use one
// client per thread.
class HttpClient {
 public:
  HttpClient();
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // GET `request.url`, following redirects. HTTP error statuses are responses, not errors:
  // `error` is set only when no complete response arrived.
  HttpResponse get(const HttpRequest& request);

 private:
  void* curl_;  // CURL*, kept out of this header
};

// "%2F"-style escaping of one path segment (a revision like refs/pr/1), or of a file path that
// keeps its slashes.
std::string url_escape(const std::string& text, bool keep_slashes);

// 'W/"abc"' or '"abc"' -> 'abc'.
std::string normalize_etag(const std::string& etag);

}  // namespace sdstack::hub
