// The S3 client: libcurl does the SigV4 signing; this file builds canonical URLs and queries (which
// libcurl 7.88 signs as given), streams bodies, retries what is worth retrying, and turns S3's error
// documents into messages that say which object failed and what to check.
#include "flow/s3.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "base/file.h"
#include "base/sha256.h"

namespace sdstack::flow {

using base::Result;
using base::Status;

namespace {

constexpr int kMaxAttempts = 4;       // a request and three retries
constexpr int kFirstBackoffMs = 250;  // doubled after each failed try
constexpr size_t kMaxErrorBodyBytes = 64 << 10;
constexpr size_t kHashChunkBytes = 1 << 20;
constexpr int64_t kMaxSinglePutBytes = int64_t{5} << 30;  // S3's (and Swift's) limit for one PUT
const char kEmptySha256[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

std::string os_error(const std::string& what, const std::string& path) {
  return path + ": " + what + ": " + std::strerror(errno);
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

std::string trim(std::string_view s) {
  size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return "";
  size_t end = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(begin, end - begin + 1));
}

void append_utf8(uint32_t code_point, std::string* out) {
  if (code_point < 0x80) {
    out->push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

// The text of the first element `name` at or after *pos ("" for <name/>), moving *pos past it;
// nullopt when there is none. S3's documents never nest an element inside one of the same name,
// so the first closing tag ends it. "<Key>" does not match "<KeyCount>".
std::optional<std::string_view> next_element(std::string_view xml, std::string_view name, size_t* pos) {
  const std::string open = "<" + std::string(name);
  for (size_t at = xml.find(open, *pos); at != std::string_view::npos; at = xml.find(open, at + 1)) {
    const size_t after = at + open.size();
    if (after >= xml.size()) return std::nullopt;
    const char next = xml[after];
    if (next != '>' && next != '/' && next != ' ' && next != '\t' && next != '\r' && next != '\n') continue;
    const size_t tag_end = xml.find('>', after);
    if (tag_end == std::string_view::npos) return std::nullopt;
    if (xml[tag_end - 1] == '/') {  // <name/>
      *pos = tag_end + 1;
      return std::string_view();
    }
    const std::string close = "</" + std::string(name) + ">";
    const size_t close_at = xml.find(close, tag_end + 1);
    if (close_at == std::string_view::npos) return std::nullopt;
    *pos = close_at + close.size();
    return xml.substr(tag_end + 1, close_at - tag_end - 1);
  }
  return std::nullopt;
}

std::optional<std::string_view> element(std::string_view xml, std::string_view name) {
  size_t pos = 0;
  return next_element(xml, name, &pos);
}

std::string hex_sha256(std::string_view bytes) {
  base::Sha256 hasher;
  hasher.update(bytes.data(), bytes.size());
  return hasher.hex_digest();
}

// The endpoint without a trailing '/', split at "://".
struct Endpoint {
  std::string scheme;  // "http"
  std::string rest;    // "host:port[/path]"
};

Endpoint split_endpoint(const std::string& endpoint) {
  std::string text = endpoint;
  while (!text.empty() && text.back() == '/') text.pop_back();
  const size_t colon = text.find("://");
  if (colon == std::string::npos) return {"https", text};
  return {text.substr(0, colon), text.substr(colon + 3)};
}

std::string getenv_string(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

// An AWS-style INI file: section -> key -> value.
using IniFile = std::map<std::string, std::map<std::string, std::string>>;

IniFile parse_ini(std::istream& in) {
  IniFile ini;
  std::string section, line;
  while (std::getline(in, line)) {
    const std::string text = trim(line);
    if (text.empty() || text[0] == '#' || text[0] == ';') continue;
    if (text.front() == '[' && text.back() == ']') {
      section = trim(std::string_view(text).substr(1, text.size() - 2));
      // ~/.aws/config spells them "[profile NAME]"; the credentials file "[NAME]".
      if (starts_with(section, "profile ")) section = trim(std::string_view(section).substr(8));
      ini[section];
      continue;
    }
    const size_t equals = text.find('=');
    if (equals == std::string::npos || section.empty()) continue;
    ini[section][trim(std::string_view(text).substr(0, equals))] = trim(std::string_view(text).substr(equals + 1));
  }
  return ini;
}

void global_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

bool is_retryable(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
      return true;
    default:
      return false;
  }
}


// Hashes the open file `fd` from offset 0 and returns its digest and size.
Result<std::pair<std::string, int64_t>> hash_file(int fd, const std::string& name) {
  base::Sha256 hasher;
  std::vector<char> buffer(kHashChunkBytes);
  int64_t size = 0;
  for (;;) {
    ssize_t n = ::pread(fd, buffer.data(), buffer.size(), size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return base::io_error(os_error("cannot read", name));
    }
    if (n == 0) break;
    hasher.update(buffer.data(), static_cast<size_t>(n));
    size += n;
  }
  return std::make_pair(hasher.hex_digest(), size);
}

}  // namespace

// ---- Credentials, XML, URLs -------------------------------------------------------------------

S3Config s3_config_of(const S3StoreConfig& store) {
  S3Config config;
  config.endpoint = store.endpoint;
  config.region = store.region;
  config.bucket = store.bucket;
  config.prefix = store.prefix;
  config.path_style = store.path_style;
  return config;
}

Status load_s3_credentials(S3Config& config, const std::string& credentials_file, const std::string& profile) {
  if (!config.access_key.empty() && !config.secret_key.empty()) return Status::ok();
  const std::string env_access = getenv_string("AWS_ACCESS_KEY_ID");
  const std::string env_secret = getenv_string("AWS_SECRET_ACCESS_KEY");
  if (!env_access.empty() && !env_secret.empty()) {
    config.access_key = env_access;
    config.secret_key = env_secret;
    return Status::ok();
  }
  std::string file = credentials_file;
  if (file.empty()) file = getenv_string("AWS_SHARED_CREDENTIALS_FILE");
  if (file.empty()) file = base::join_path(getenv_string("HOME"), ".aws/credentials");
  std::string section = profile;
  if (section.empty()) section = getenv_string("AWS_PROFILE");
  if (section.empty()) section = "default";

  std::string env_problem = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set";
  if (!env_access.empty()) env_problem = "AWS_SECRET_ACCESS_KEY is not set (AWS_ACCESS_KEY_ID is)";
  if (!env_secret.empty()) env_problem = "AWS_ACCESS_KEY_ID is not set (AWS_SECRET_ACCESS_KEY is)";
  std::string file_problem;
  std::ifstream in(file);
  if (!in) {
    file_problem = file + " cannot be read (" + std::strerror(errno) + ")";
  } else {
    const IniFile ini = parse_ini(in);
    auto found = ini.find(section);
    if (found == ini.end()) {
      file_problem = file + " has no [" + section + "] profile";
      if (!ini.empty()) {
        file_problem += " (it has:";
        for (const auto& [name, keys] : ini) file_problem += " [" + name + "]";
        file_problem += ")";
      }
    } else {
      auto access = found->second.find("aws_access_key_id");
      auto secret = found->second.find("aws_secret_access_key");
      if (access != found->second.end() && secret != found->second.end() && !access->second.empty() &&
          !secret->second.empty()) {
        config.access_key = access->second;
        config.secret_key = secret->second;
        return Status::ok();
      }
      file_problem = file + "'s [" + section + "] profile lacks aws_access_key_id or aws_secret_access_key";
    }
  }
  const std::string fix = "set both variables, or write the keys aws_access_key_id and aws_secret_access_key under [" +
                          section + "] in " + file;
  return base::not_found("no S3 credentials for s3://" + config.bucket + ": " + env_problem + ", and " + file_problem +
                         "; " + fix);
}

std::string xml_unescape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] != '&') {
      out.push_back(text[i++]);
      continue;
    }
    const size_t semicolon = text.find(';', i);
    if (semicolon == std::string_view::npos || semicolon - i > 12) {
      out.push_back(text[i++]);
      continue;
    }
    const std::string_view entity = text.substr(i + 1, semicolon - i - 1);
    static const std::map<std::string_view, char> kNamed = {
        {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}};
    auto named = kNamed.find(entity);
    if (named != kNamed.end()) {
      out.push_back(named->second);
      i = semicolon + 1;
      continue;
    }
    if (entity.size() >= 2 && entity[0] == '#') {
      const bool hex = entity[1] == 'x' || entity[1] == 'X';
      const std::string digits(entity.substr(hex ? 2 : 1));
      char* end = nullptr;
      const unsigned long code_point = digits.empty() ? 0 : std::strtoul(digits.c_str(), &end, hex ? 16 : 10);
      if (!digits.empty() && end != nullptr && *end == '\0' && code_point > 0 && code_point <= 0x10FFFF) {
        append_utf8(static_cast<uint32_t>(code_point), &out);
        i = semicolon + 1;
        continue;
      }
    }
    out.push_back(text[i++]);  // not an entity: keep the '&'
  }
  return out;
}

Result<S3ListPage> parse_s3_list_page(const std::string& xml, const std::string& source) {
  auto corrupt = [&](const std::string& why) {
    return base::data_loss(source + ": not a ListObjectsV2 answer: " + why);
  };
  std::optional<std::string_view> result = element(xml, "ListBucketResult");
  if (!result) return corrupt("no <ListBucketResult> element");
  S3ListPage page;
  size_t pos = 0;
  while (std::optional<std::string_view> contents = next_element(*result, "Contents", &pos)) {
    std::optional<std::string_view> key = element(*contents, "Key");
    if (!key) return corrupt("a <Contents> without a <Key>");
    page.keys.push_back(xml_unescape(*key));
  }
  std::optional<std::string_view> truncated = element(*result, "IsTruncated");
  page.truncated = truncated && trim(*truncated) == "true";
  if (page.truncated) {
    std::optional<std::string_view> token = element(*result, "NextContinuationToken");
    if (!token || trim(*token).empty()) return corrupt("truncated, but without a <NextContinuationToken>");
    page.next_continuation_token = xml_unescape(trim(*token));
  }
  return page;
}

S3ErrorDocument parse_s3_error(const std::string& xml) {
  S3ErrorDocument error;
  std::optional<std::string_view> body = element(xml, "Error");
  if (!body) return error;
  if (auto code = element(*body, "Code")) error.code = xml_unescape(trim(*code));
  if (auto message = element(*body, "Message")) error.message = xml_unescape(trim(*message));
  return error;
}

std::string s3_uri_encode(std::string_view text, bool keep_slashes) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : text) {
    const unsigned char byte = static_cast<unsigned char>(c);
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                            c == '.' || c == '_' || c == '~' || (keep_slashes && c == '/');
    if (unreserved) {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[byte >> 4]);
      out.push_back(kHex[byte & 15]);
    }
  }
  return out;
}

std::string s3_url(const S3Config& config, const std::string& key, const std::string& query) {
  const Endpoint endpoint = split_endpoint(config.endpoint);
  const std::string object = key.empty() ? std::string() : s3_uri_encode(config.prefix + key, /*keep_slashes=*/true);
  std::string url;
  if (config.path_style) {
    url = endpoint.scheme + "://" + endpoint.rest + "/" + s3_uri_encode(config.bucket, false);
    if (!object.empty()) url += "/" + object;
  } else {
    url = endpoint.scheme + "://" + config.bucket + "." + endpoint.rest + "/" + object;
  }
  if (!query.empty()) url += "?" + query;
  return url;
}

std::string s3_object_key(const std::string& sha256) { return "objects/sha256/" + sha256.substr(0, 2) + "/" + sha256; }

std::string s3_manifest_key(const std::string& key) { return "manifests/" + key + ".json"; }

// ---- The client -------------------------------------------------------------------------------

struct S3Client::Request {
  const char* method = "GET";  // GET, PUT, HEAD, DELETE
  std::string key;             // relative to config.prefix; "" for the bucket itself
  std::string query;           // canonical: sorted and encoded
  // A PUT's body: `upload_path`'s bytes when it is set, else `data`.
  std::string upload_path;
  std::string_view data;
  int64_t upload_size = 0;
  std::string payload_sha256 = kEmptySha256;
  // A 2xx GET's body goes to the new file `download_path` when set, else to Response::body.
  std::string download_path;
};

struct S3Client::Response {
  long status = 0;
  std::string body;  // the 2xx body (when not downloaded to a file), or an error document
  int64_t content_length = -1;
  int attempts = 0;
};

namespace {

// The state libcurl's callbacks share during one attempt.
struct Transfer {
  CURL* curl = nullptr;
  std::string* body = nullptr;
  int download_fd = -1;
  std::string download_name;
  Status write_status;
  int upload_fd = -1;
  std::string_view upload_data;
  int64_t upload_offset = 0;
  int64_t received = 0;
};

size_t on_write(char* data, size_t size, size_t count, void* user) {
  Transfer* transfer = static_cast<Transfer*>(user);
  const size_t bytes = size * count;
  long status = 0;
  curl_easy_getinfo(transfer->curl, CURLINFO_RESPONSE_CODE, &status);
  if (status >= 200 && status < 300 && transfer->download_fd >= 0) {
    transfer->write_status = base::write_all(transfer->download_fd, std::string_view(data, bytes), transfer->download_name);
    if (!transfer->write_status.is_ok()) return 0;  // aborts the transfer
  } else if (status >= 200 && status < 300) {
    transfer->body->append(data, bytes);
  } else if (transfer->body->size() < kMaxErrorBodyBytes) {
    transfer->body->append(data, std::min(bytes, kMaxErrorBodyBytes - transfer->body->size()));
  }
  transfer->received += static_cast<int64_t>(bytes);
  return bytes;
}

size_t on_read(char* buffer, size_t size, size_t count, void* user) {
  Transfer* transfer = static_cast<Transfer*>(user);
  const size_t wanted = size * count;
  if (transfer->upload_fd >= 0) {
    for (;;) {
      ssize_t n = ::pread(transfer->upload_fd, buffer, wanted, transfer->upload_offset);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return CURL_READFUNC_ABORT;
      transfer->upload_offset += n;
      return static_cast<size_t>(n);
    }
  }
  const size_t left = transfer->upload_data.size() - static_cast<size_t>(transfer->upload_offset);
  const size_t n = std::min(wanted, left);
  std::memcpy(buffer, transfer->upload_data.data() + transfer->upload_offset, n);
  transfer->upload_offset += static_cast<int64_t>(n);
  return n;
}

// libcurl rewinds the body when it must send it again (a 100-continue refused, a reconnect).
int on_seek(void* user, curl_off_t offset, int origin) {
  Transfer* transfer = static_cast<Transfer*>(user);
  if (origin != SEEK_SET) return CURL_SEEKFUNC_CANTSEEK;
  transfer->upload_offset = offset;
  return CURL_SEEKFUNC_OK;
}

}  // namespace

S3Client::S3Client(S3Config config) : config_(std::move(config)) {
  global_init_once();
  curl_ = curl_easy_init();
}

S3Client::~S3Client() { curl_easy_cleanup(static_cast<CURL*>(curl_)); }

std::string S3Client::uri(const std::string& key) const {
  return "s3://" + config_.bucket + "/" + config_.prefix + key;
}

Result<S3Client::Response> S3Client::perform(const Request& request) {
  CURL* curl = static_cast<CURL*>(curl_);
  const std::string what = uri(request.key) + ": " + request.method;
  if (curl == nullptr) return base::internal_error(what + " failed: libcurl could not make a handle");
  if (config_.access_key.empty() || config_.secret_key.empty()) {
    return base::invalid_argument(what +
                                  ": no S3 credentials are set (load_s3_credentials() finds them in "
                                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)");
  }
  const std::string url = s3_url(config_, request.key, request.query);
  const std::string sigv4 = "aws:amz:" + config_.region + ":s3";
  // S3 requires this header, and libcurl 7.88 neither sends it nor hashes a streamed body; it signs
  // the header's value as the payload hash. The server checks the body against it (Swift answers
  // BadDigest), so a real digest makes uploads verified end to end.
  const std::string content_sha256 = "x-amz-content-sha256: " + request.payload_sha256;

  Response response;
  int backoff_ms = kFirstBackoffMs;
  for (int attempt = 1;; ++attempt) {
    response = Response();
    response.attempts = attempt;
    Transfer transfer;
    transfer.curl = curl;
    transfer.body = &response.body;

    int upload_fd = -1;
    if (!request.upload_path.empty()) {
      upload_fd = ::open(request.upload_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (upload_fd < 0) return base::io_error(os_error("cannot open", request.upload_path));
    }
    transfer.upload_fd = upload_fd;
    transfer.upload_data = request.data;
    int download_fd = -1;
    if (!request.download_path.empty()) {
      download_fd = ::open(request.download_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (download_fd < 0) {
        if (upload_fd >= 0) ::close(upload_fd);
        return base::io_error(os_error("cannot create", request.download_path));
      }
    }
    transfer.download_fd = download_fd;
    transfer.download_name = request.download_path;

    curl_easy_reset(curl);
    char error_buffer[CURL_ERROR_SIZE] = {0};
    curl_slist* headers = curl_slist_append(nullptr, content_sha256.c_str());
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "sdstack");
    curl_easy_setopt(curl, CURLOPT_AWS_SIGV4, sigv4.c_str());
    // USERNAME and PASSWORD, not USERPWD "access:secret": access keys may hold a ':' (Swift's
    // tempauth ones are "account:user") and USERPWD splits at the first one.
    curl_easy_setopt(curl, CURLOPT_USERNAME, config_.access_key.c_str());
    curl_easy_setopt(curl, CURLOPT_PASSWORD, config_.secret_key.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);  // slower than 1 kB/s for a minute: stalled
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);
    const std::string_view method = request.method;
    if (method == "HEAD") {
      curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (method == "PUT") {
      curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(curl, CURLOPT_READDATA, &transfer);
      curl_easy_setopt(curl, CURLOPT_SEEKFUNCTION, on_seek);
      curl_easy_setopt(curl, CURLOPT_SEEKDATA, &transfer);
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(request.upload_size));
    } else if (method == "DELETE") {
      curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "DELETE");
    }

    const CURLcode code = curl_easy_perform(curl);
    ++stats_.requests;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
    curl_off_t length = -1;
    curl_easy_getinfo(curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
    response.content_length = length;
    curl_slist_free_all(headers);
    if (upload_fd >= 0) ::close(upload_fd);
    Status closed;
    if (download_fd >= 0 && ::close(download_fd) != 0) {
      closed = base::io_error(os_error("cannot write", request.download_path));
    }
    if (!transfer.write_status.is_ok()) return transfer.write_status;
    if (code == CURLE_OK && !closed.is_ok()) return closed;

    const bool server_failed = code == CURLE_OK && response.status >= 500;
    if ((code == CURLE_OK && !server_failed) || attempt == kMaxAttempts || (code != CURLE_OK && !is_retryable(code))) {
      if (code == CURLE_OK) return response;
      std::string message = what + " failed: " + (error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(code));
      if (attempt > 1) message += " (tried " + std::to_string(attempt) + " times)";
      switch (code) {
        case CURLE_COULDNT_CONNECT:
          message += "; check the endpoint " + config_.endpoint + ": is the S3 server running there?";
          break;
        case CURLE_COULDNT_RESOLVE_HOST:
          message += "; check the endpoint " + config_.endpoint;
          if (!config_.path_style) {
            message += " (virtual-host style needs DNS for " + config_.bucket + ".<host>; try path style)";
          }
          break;
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
          message += "; check the endpoint's TLS certificate and the scheme of " + config_.endpoint;
          break;
        default:
          break;
      }
      return base::io_error(message);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
    backoff_ms *= 2;
  }
}

Status S3Client::error_for(const Request& request, const Response& response) const {
  const S3ErrorDocument error = parse_s3_error(response.body);
  std::string message = uri(request.key) + ": " + request.method + " failed: HTTP " + std::to_string(response.status);
  if (!error.code.empty()) message += " " + error.code;
  if (!error.message.empty()) message += " (" + error.message + ")";
  if (response.attempts > 1) message += " (tried " + std::to_string(response.attempts) + " times)";
  const std::string& code = error.code;
  if (code == "SignatureDoesNotMatch" || code == "InvalidAccessKeyId" || code == "AuthorizationHeaderMalformed" ||
      code == "InvalidToken" || response.status == 401 || (response.status == 403 && code.empty())) {
    message +=
        "; check the credentials (the S3 access key and secret key: AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or the credentials file) and the region '" +
        config_.region + "'";
  } else if (code == "AccessDenied") {
    message += "; check the credentials and that they may use the bucket '" + config_.bucket + "'";
  } else if (code == "NoSuchBucket") {
    message += "; create the bucket '" + config_.bucket + "' or check the bucket name";
  } else if (code == "BadDigest" || code == "XAmzContentSHA256Mismatch") {
    // The server checks the body against the sha256 the request was signed with.
    message += "; the bytes sent differ from their sha256 taken before: did the file change during the upload?";
  } else if (code == "RequestTimeTooSkewed") {
    message += "; check this machine's clock";
  } else if (response.status == 301 || response.status == 307 || code == "PermanentRedirect") {
    message += "; the bucket answers elsewhere: check the endpoint " + config_.endpoint + " and the region";
  } else if (response.status >= 500) {
    message += "; the S3 server failed: try again later";
  }
  if (response.status == 404) return base::not_found(message);
  return base::io_error(message);
}

Status S3Client::put_file(const std::string& key, const std::string& path, const std::string& expected_sha256) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return base::io_error(os_error("cannot open", path));
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    Status status = base::io_error(os_error("cannot stat", path));
    ::close(fd);
    return status;
  }
  if (info.st_size > kMaxSinglePutBytes) {
    ::close(fd);
    return base::unsupported(path + ": cannot upload to " + uri(key) + ": it has " + std::to_string(info.st_size) +
                             " bytes, more than the 5 GiB one S3 PUT takes, and multipart uploads are not "
                             "implemented yet");
  }
  Result<std::pair<std::string, int64_t>> hashed = hash_file(fd, path);
  ::close(fd);
  if (!hashed.is_ok()) return hashed.status();
  if (!expected_sha256.empty() && hashed->first != expected_sha256) {
    return base::data_loss(path + ": not uploaded to " + uri(key) + ": its sha256 is " + hashed->first + ", expected " +
                           expected_sha256 + " (a corrupt object in the local store?)");
  }
  Request request;
  request.method = "PUT";
  request.key = key;
  request.upload_path = path;
  request.upload_size = hashed->second;
  request.payload_sha256 = hashed->first;
  SD_ASSIGN_OR_RETURN(Response response, perform(request));
  if (response.status < 200 || response.status >= 300) return error_for(request, response);
  ++stats_.objects_put;
  stats_.bytes_put += request.upload_size;
  return Status::ok();
}

Status S3Client::put_data(const std::string& key, std::string_view bytes) {
  Request request;
  request.method = "PUT";
  request.key = key;
  request.data = bytes;
  request.upload_size = static_cast<int64_t>(bytes.size());
  request.payload_sha256 = hex_sha256(bytes);
  SD_ASSIGN_OR_RETURN(Response response, perform(request));
  if (response.status < 200 || response.status >= 300) return error_for(request, response);
  ++stats_.objects_put;
  stats_.bytes_put += request.upload_size;
  return Status::ok();
}

Status S3Client::get_to_file(const std::string& key, const std::string& path) {
  Request request;
  request.key = key;
  request.download_path = base::temporary_path(path);
  Result<Response> response = perform(request);
  Status status;
  if (!response.is_ok()) {
    status = response.status();
  } else if (response->status < 200 || response->status >= 300) {
    status = error_for(request, *response);
  } else {
    struct stat info;
    if (::stat(request.download_path.c_str(), &info) != 0) {
      status = base::io_error(os_error("cannot stat", request.download_path));
    } else if (response->content_length >= 0 && info.st_size != response->content_length) {
      status = base::io_error(uri(key) + ": GET returned " + std::to_string(info.st_size) + " bytes of " +
                              std::to_string(response->content_length));
    } else if (::rename(request.download_path.c_str(), path.c_str()) != 0) {
      status = base::io_error(os_error("cannot rename into place", path));
    } else {
      ++stats_.objects_got;
      stats_.bytes_got += info.st_size;
    }
  }
  if (!status.is_ok()) ::unlink(request.download_path.c_str());
  return status;
}

Result<std::optional<std::string>> S3Client::get_data(const std::string& key) {
  Request request;
  request.key = key;
  SD_ASSIGN_OR_RETURN(Response response, perform(request));
  if (response.status == 404 && parse_s3_error(response.body).code != "NoSuchBucket") {
    return std::optional<std::string>();
  }
  if (response.status < 200 || response.status >= 300) return error_for(request, response);
  ++stats_.objects_got;
  stats_.bytes_got += static_cast<int64_t>(response.body.size());
  return std::optional<std::string>(std::move(response.body));
}

Result<std::optional<int64_t>> S3Client::head(const std::string& key) {
  Request request;
  request.method = "HEAD";
  request.key = key;
  SD_ASSIGN_OR_RETURN(Response response, perform(request));
  // A HEAD answer has no body, so a missing bucket reads as a missing key here; the PUT that
  // follows says which.
  if (response.status == 404) return std::optional<int64_t>();
  if (response.status < 200 || response.status >= 300) return error_for(request, response);
  return std::optional<int64_t>(response.content_length);
}

Result<std::vector<std::string>> S3Client::list(const std::string& prefix, int page_size) {
  std::vector<std::string> keys;
  std::string token;
  const std::string full_prefix = config_.prefix + prefix;
  for (;;) {
    // libcurl 7.88 signs the query as it is, so it is built in canonical order: sorted by name.
    std::string query;
    if (!token.empty()) query += "continuation-token=" + s3_uri_encode(token, false) + "&";
    query += "list-type=2&max-keys=" + std::to_string(page_size) + "&prefix=" + s3_uri_encode(full_prefix, false);
    Request request;
    request.query = query;
    SD_ASSIGN_OR_RETURN(Response response, perform(request));
    if (response.status < 200 || response.status >= 300) {
      Request named = request;
      named.key = prefix;  // names the listed prefix in the message
      return error_for(named, response);
    }
    SD_ASSIGN_OR_RETURN(S3ListPage page, parse_s3_list_page(response.body, uri(prefix) + " (list)"));
    for (std::string& key : page.keys) {
      if (starts_with(key, config_.prefix)) keys.push_back(key.substr(config_.prefix.size()));
    }
    if (!page.truncated) return keys;
    token = std::move(page.next_continuation_token);
  }
}

Status S3Client::remove(const std::string& key) {
  Request request;
  request.method = "DELETE";
  request.key = key;
  SD_ASSIGN_OR_RETURN(Response response, perform(request));
  if (response.status == 404 && parse_s3_error(response.body).code != "NoSuchBucket") return Status::ok();
  if (response.status < 200 || response.status >= 300) return error_for(request, response);
  return Status::ok();
}

Status S3Client::create_bucket_if_missing() {
  Request head;
  head.method = "HEAD";
  SD_ASSIGN_OR_RETURN(Response exists, perform(head));
  if (exists.status >= 200 && exists.status < 300) return Status::ok();
  if (exists.status != 404) return error_for(head, exists);
  Request create;
  create.method = "PUT";
  SD_ASSIGN_OR_RETURN(Response response, perform(create));
  const std::string code = parse_s3_error(response.body).code;
  // Made meanwhile by someone else: as good as made here.
  if (code == "BucketAlreadyOwnedByYou") return Status::ok();
  if (response.status < 200 || response.status >= 300) return error_for(create, response);
  return Status::ok();
}

// ---- The artifact store in a bucket -----------------------------------------------------------

Status push_to_s3(const ArtifactStore& local, const std::string& key, S3Client& s3) {
  SD_RETURN_IF_ERROR(check_artifact_key(key));
  return local.with_shared_lock([&]() -> Status {
    const std::string file = local.manifest_path(key);
    Result<std::string> text = base::read_file(file);
    if (!text.is_ok()) {
      if (text.status().code() == base::StatusCode::kNotFound) {
        return base::not_found("no artifacts are saved under '" + key + "' in " + local.root() +
                               ", so there is nothing to push to " + s3.uri(""));
      }
      return text.status();
    }
    // The manifest's own text goes up, so the bucket holds what the local store holds, byte for byte.
    SD_ASSIGN_OR_RETURN(ArtifactManifest manifest, parse_artifact_manifest(*text, file, key));
    std::set<std::string> seen;
    for (const ArtifactEntry& entry : manifest.entries) {
      if (entry.type != ArtifactEntry::Type::kFile || !seen.insert(entry.sha256).second) continue;
      const std::string object = s3_object_key(entry.sha256);
      SD_ASSIGN_OR_RETURN(std::optional<int64_t> size, s3.head(object));
      if (size && *size == entry.size) continue;  // named by its digest: the same bytes
      SD_RETURN_IF_ERROR(s3.put_file(object, local.object_path(entry.sha256), entry.sha256)
                             .with_context("artifact '" + entry.path + "' of '" + key + "'"));
    }
    return s3.put_data(s3_manifest_key(key), *text);
  });
}

Result<std::optional<ArtifactManifest>> s3_manifest(S3Client& s3, const std::string& key) {
  SD_RETURN_IF_ERROR(check_artifact_key(key));
  const std::string manifest_key = s3_manifest_key(key);
  SD_ASSIGN_OR_RETURN(std::optional<std::string> text, s3.get_data(manifest_key));
  if (!text) return std::optional<ArtifactManifest>();
  SD_ASSIGN_OR_RETURN(ArtifactManifest manifest, parse_artifact_manifest(*text, s3.uri(manifest_key), key));
  return std::optional<ArtifactManifest>(std::move(manifest));
}

Status pull_from_s3(S3Client& s3, const std::string& key, ArtifactStore& local) {
  SD_ASSIGN_OR_RETURN(std::optional<ArtifactManifest> manifest, s3_manifest(s3, key));
  if (!manifest) {
    return base::not_found("no artifacts are saved under '" + key + "' in " + s3.uri("") + " (there is no " +
                           s3.uri(s3_manifest_key(key)) + ")");
  }
  auto fetch = [&](const ArtifactEntry& entry, const std::string& path) {
    return s3.get_to_file(s3_object_key(entry.sha256), path);
  };
  return local.import_manifest(*manifest, s3.uri(""), fetch).status();
}

}  // namespace sdstack::flow
