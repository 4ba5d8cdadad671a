// HTTP GET on libcurl: one easy handle per client, headers of every hop seen, errors classified.
#include "hub/http.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <mutex>

namespace sdstack::hub {
namespace {

constexpr size_t kMaxErrorBody = 64 * 1024;

// The state of one get(): libcurl's callbacks write into it.
struct Transfer {
  const HttpRequest* request = nullptr;
  HttpResponse response;
  int hops = 0;
  long hop_status = 0;
  HttpHeaders hop_headers;
  bool last_hop = false;  // the headers of the response whose body we want are in
  bool aborted_by_caller = false;
};

std::string lowercase(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

std::string trim(const std::string& text) {
  size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  size_t end = text.find_last_not_of(" \t\r\n");
  return text.substr(begin, end - begin + 1);
}

bool is_redirect(long status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

size_t on_header_line(char* data, size_t size, size_t count, void* user) {
  Transfer& t = *static_cast<Transfer*>(user);
  const size_t length = size * count;
  const std::string line = trim(std::string(data, length));
  if (line.rfind("HTTP/", 0) == 0) {  // a status line starts a new response (a redirect hop, or 100 Continue)
    ++t.hops;
    t.hop_headers.clear();
    size_t space = line.find(' ');
    t.hop_status = space == std::string::npos ? 0 : std::strtol(line.c_str() + space + 1, nullptr, 10);
    return length;
  }
  if (line.empty()) {  // the end of one response's headers
    if (t.hops == 1) t.response.first_headers = t.hop_headers;
    const bool followed = is_redirect(t.hop_status) && t.hop_headers.count("location") > 0;
    if (t.hop_status >= 200 && !followed) {
      t.last_hop = true;
      t.response.status = t.hop_status;
      t.response.headers = t.hop_headers;
      if (t.request->on_headers && !t.request->on_headers(t.response)) {
        t.aborted_by_caller = true;
        return 0;
      }
    }
    return length;
  }
  size_t colon = line.find(':');
  if (colon != std::string::npos) t.hop_headers[lowercase(line.substr(0, colon))] = trim(line.substr(colon + 1));
  return length;
}

size_t on_body_bytes(char* data, size_t size, size_t count, void* user) {
  Transfer& t = *static_cast<Transfer*>(user);
  const size_t length = size * count;
  const bool wanted = t.last_hop && t.response.status >= 200 && t.response.status < 300;
  if (wanted) {
    t.response.body_bytes += static_cast<int64_t>(length);
    if (t.request->on_body) {
      if (!t.request->on_body(data, length)) {
        t.aborted_by_caller = true;
        return 0;
      }
      return length;
    }
    t.response.body.append(data, length);
  } else if (t.response.body.size() < kMaxErrorBody) {
    t.response.body.append(data, std::min(length, kMaxErrorBody - t.response.body.size()));
  }
  return length;
}

int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  Transfer& t = *static_cast<Transfer*>(user);
  if (t.request->cancelled && t.request->cancelled()) {
    t.aborted_by_caller = true;
    return 1;
  }
  return 0;
}

NetError classify(CURLcode code, bool connected) {
  switch (code) {
    case CURLE_OK:
      return NetError::kNone;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
      return NetError::kUnreachable;
    case CURLE_OPERATION_TIMEDOUT:
      return connected ? NetError::kInterrupted : NetError::kUnreachable;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return NetError::kInterrupted;
    default:
      return NetError::kOther;
  }
}

}  // namespace

HttpClient::HttpClient() {
  static std::once_flag global_init;
  std::call_once(global_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  curl_ = curl_easy_init();
}

HttpClient::~HttpClient() { curl_easy_cleanup(static_cast<CURL*>(curl_)); }

HttpResponse HttpClient::get(const HttpRequest& request) {
  CURL* curl = static_cast<CURL*>(curl_);
  Transfer transfer;
  transfer.request = &request;
  if (curl == nullptr) {
    transfer.response.error = NetError::kOther;
    transfer.response.error_text = "cannot start libcurl";
    return transfer.response;
  }
  curl_easy_reset(curl);  // keeps the connection cache
  char error_buffer[CURL_ERROR_SIZE] = {0};
  curl_slist* headers = nullptr;
  std::string authorization;
  if (!request.bearer_token.empty()) {
    authorization = "Authorization: Bearer " + request.bearer_token;
    headers = curl_slist_append(headers, authorization.c_str());
  }
  std::string range = request.range_start > 0 ? std::to_string(request.range_start) + "-" : "";

  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, request.user_agent.c_str());
  if (!range.empty()) curl_easy_setopt(curl, CURLOPT_RANGE, range.c_str());
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 10L);
  // Plain HTTP is for mirrors and the tests' local Hub; nothing else (file://) is followed.
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // threads: no SIGALRM for timeouts
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, request.connect_timeout_ms);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, request.stall_timeout_s);
  curl_easy_setopt(curl, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);  // a proxy's CONNECT reply is no hop
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header_line);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body_bytes);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &transfer);

  CURLcode code = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  // The header list held the token; clear our copy of it too.
  std::fill(authorization.begin(), authorization.end(), '\0');

  HttpResponse& response = transfer.response;
  if (code != CURLE_OK) {
    curl_off_t connect_time = 0;
    curl_easy_getinfo(curl, CURLINFO_CONNECT_TIME_T, &connect_time);
    response.error = transfer.aborted_by_caller ? NetError::kAborted : classify(code, connect_time > 0);
    response.error_text = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(code);
  } else if (!transfer.last_hop) {
    response.error = NetError::kInterrupted;
    response.error_text = "the server sent no complete response";
  }
  return response;
}

std::string url_escape(const std::string& text, bool keep_slashes) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slashes && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  return out;
}

std::string normalize_etag(const std::string& etag) {
  std::string value = trim(etag);
  if (value.rfind("W/", 0) == 0) value = value.substr(2);
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
  return value;
}

}  // namespace sdstack::hub
