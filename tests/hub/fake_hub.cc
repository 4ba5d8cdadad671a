// A Hugging Face Hub for tests: HTTP/1.1 on 127.0.0.1, the endpoints sdstack uses, faults on demand.
#include "hub/fake_hub.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "base/sha256.h"
#include "testing/testing.h"

namespace sdstack::testing {
namespace {

namespace fs = std::filesystem;

std::string sha256(const std::string& bytes) {
  base::Sha256 hash;
  hash.update(bytes.data(), bytes.size());
  return hash.hex_digest();
}

std::string percent_decode(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> segments;
  std::stringstream stream(path);
  std::string segment;
  while (std::getline(stream, segment, '/')) {
    if (!segment.empty()) segments.push_back(percent_decode(segment));
  }
  return segments;
}

bool send_all(int fd, const std::string& bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

const char* reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 206:
      return "Partial Content";
    case 302:
      return "Found";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 416:
      return "Range Not Satisfiable";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

std::string head(int status, const std::vector<std::pair<std::string, std::string>>& headers, size_t length) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason(status) + "\r\n";
  for (const auto& [name, value] : headers) out += name + ": " + value + "\r\n";
  out += "Content-Length: " + std::to_string(length) + "\r\n\r\n";
  return out;
}

bool is_lfs_name(const std::string& path) {
  for (const char* extension : {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".h5"}) {
    const std::string e = extension;
    if (path.size() >= e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0) return true;
  }
  return false;
}

std::string random_bytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string bytes(size, '\0');
  for (char& byte : bytes) byte = static_cast<char>(rng() & 0xff);
  return bytes;
}

}  // namespace

struct FakeHub::Repo {
  std::string token;                                   // non-empty: gated
  std::map<std::string, std::string> refs;             // revision -> commit
  std::map<std::string, std::vector<Stored>> commits;  // commit -> files, sorted by path
};

struct FakeHub::HttpRequest {
  std::string method, target, path, query;
  std::map<std::string, std::string> headers;  // lowercase names
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

FakeHub::FakeHub() {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;  // ephemeral
  socklen_t length = sizeof address;
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::listen(listen_fd_, 64) != 0 || ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ADD_FAILURE() << "fake hub: cannot listen on 127.0.0.1: " << std::strerror(errno);
    return;
  }
  endpoint_ = "http://127.0.0.1:" + std::to_string(ntohs(address.sin_port));
  acceptor_ = std::thread([this] { accept_loop(); });
}

FakeHub::~FakeHub() {
  stopping_ = true;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
  if (acceptor_.joinable()) acceptor_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  std::vector<std::thread> connections;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);  // wakes recv()
    connections.swap(connections_);
  }
  for (std::thread& thread : connections) thread.join();
}

void FakeHub::accept_loop() {
  while (!stopping_) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      ::close(fd);
      return;
    }
    open_fds_.insert(fd);
    connections_.emplace_back([this, fd] { serve_connection(fd); });
  }
}

void FakeHub::serve_connection(int fd) {
  std::string buffer;
  char chunk[8192];
  for (bool open = true; open;) {
    size_t end;
    while ((end = buffer.find("\r\n\r\n")) == std::string::npos) {
      ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        open = false;
        break;
      }
      buffer.append(chunk, static_cast<size_t>(n));
    }
    if (!open) break;
    std::istringstream lines(buffer.substr(0, end));
    buffer.erase(0, end + 4);
    HttpRequest request;
    std::string line, version;
    std::getline(lines, line);
    std::istringstream(line) >> request.method >> request.target >> version;
    while (std::getline(lines, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string name = line.substr(0, colon), value = line.substr(colon + 1);
      std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
      value.erase(0, value.find_first_not_of(' '));
      request.headers[name] = value;
    }
    size_t question = request.target.find('?');
    request.path = request.target.substr(0, question);
    request.query = question == std::string::npos ? "" : request.target.substr(question + 1);
    open = handle(fd, request) && request.header("connection") != "close";
  }
  std::lock_guard<std::mutex> lock(mutex_);
  open_fds_.erase(fd);
  ::close(fd);  // under the lock: the destructor never shuts down a reused descriptor
}

bool FakeHub::handle(int fd, const HttpRequest& request) {
  Request record{request.method, request.target, request.header("range"), request.header("authorization"), 0, ""};
  auto respond = [&](int status, std::vector<std::pair<std::string, std::string>> headers, const std::string& body) {
    record.status = status;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      log_.push_back(record);
    }
    return send_all(fd, head(status, headers, body.size()) + (request.method == "HEAD" ? "" : body));
  };
  auto error = [&](int status, const std::string& code, const std::string& message) {
    std::vector<std::pair<std::string, std::string>> headers = {{"Content-Type", "application/json"},
                                                                {"X-Error-Message", message}};
    if (!code.empty()) headers.push_back({"X-Error-Code", code});
    return respond(status, headers, nlohmann::json{{"error", message}}.dump());
  };

  const std::vector<std::string> segments = split_path(request.path);
  std::string repo_id, revision, file_path, api;
  if (segments.size() == 2 && segments[0] == "cdn-lfs") {  // the CDN: content-addressed, no auth
    std::unique_lock<std::mutex> lock(mutex_);
    auto blob = cdn_.find(segments[1]);
    if (blob == cdn_.end()) {
      lock.unlock();
      return error(404, "", "no such object");
    }
    Stored stored = blob->second;
    lock.unlock();
    return serve_file(fd, request, stored, "", record);
  }
  if (segments.size() >= 6 && segments[0] == "api" && segments[1] == "models") {
    repo_id = segments[2] + "/" + segments[3];
    api = segments[4];
    revision = segments[5];
  } else if (segments.size() >= 5 && segments[2] == "resolve") {
    repo_id = segments[0] + "/" + segments[1];
    revision = segments[3];
    for (size_t i = 4; i < segments.size(); ++i) file_path += (i > 4 ? "/" : "") + segments[i];
  } else {
    return error(404, "", "no such endpoint");
  }

  std::unique_lock<std::mutex> lock(mutex_);
  auto repo = repos_.find(repo_id);
  if (repo == repos_.end()) {
    lock.unlock();
    return error(404, "RepoNotFound", "Repository not found");
  }
  const std::string token = repo->second->token;
  if (!token.empty()) {
    const std::string authorization = request.header("authorization");
    if (authorization.empty()) {
      lock.unlock();
      return error(401, "GatedRepo",
                   "Access to model " + repo_id + " is restricted. You must be authenticated to access it.");
    }
    if (authorization != "Bearer " + token) {
      lock.unlock();
      return error(403, "GatedRepo",
                   "Access to model " + repo_id + " is restricted and you are not in the authorized list.");
    }
  }
  std::string commit = repo->second->refs.count(revision) ? repo->second->refs[revision] : revision;
  if (repo->second->commits.count(commit) == 0) {
    lock.unlock();
    return error(404, "RevisionNotFound", "Invalid rev id: " + revision);
  }
  const std::vector<Stored> files = repo->second->commits[commit];
  lock.unlock();

  if (api == "revision") {
    nlohmann::json siblings = nlohmann::json::array();
    for (const Stored& stored : files) siblings.push_back({{"rfilename", stored.file.path}});
    return respond(200, {{"Content-Type", "application/json"}},
                   nlohmann::json{{"id", repo_id}, {"sha", commit}, {"siblings", siblings}}.dump());
  }
  if (api == "tree") {
    nlohmann::json entries = nlohmann::json::array();
    std::set<std::string> folders;
    for (const Stored& stored : files) {
      const HubFile& file = stored.file;
      for (size_t slash = file.path.find('/'); slash != std::string::npos; slash = file.path.find('/', slash + 1)) {
        if (folders.insert(file.path.substr(0, slash)).second) {
          entries.push_back({{"type", "directory"},
                             {"path", file.path.substr(0, slash)},
                             {"oid", sha256(file.path).substr(0, 40)},
                             {"size", 0}});
        }
      }
      nlohmann::json entry = {{"type", "file"}, {"path", file.path}};
      entry["oid"] = stored.oid;
      entry["size"] = file.content.size();
      if (file.lfs) entry["lfs"] = {{"oid", stored.sha256}, {"size", file.content.size()}, {"pointerSize", 134}};
      entries.push_back(entry);
    }
    size_t cursor = 0;
    if (size_t at = request.query.find("cursor="); at != std::string::npos)
      cursor = std::stoul(request.query.substr(at + 7));
    const size_t page = static_cast<size_t>(std::max(1, page_size_.load()));
    nlohmann::json slice = nlohmann::json::array();
    for (size_t i = cursor; i < entries.size() && i < cursor + page; ++i) slice.push_back(entries[i]);
    std::vector<std::pair<std::string, std::string>> headers = {{"Content-Type", "application/json"}};
    if (cursor + page < entries.size()) {
      headers.push_back({"Link", "<" + endpoint_ + request.path +
                                     "?recursive=true&cursor=" + std::to_string(cursor + page) + ">; rel=\"next\""});
    }
    return respond(200, headers, slice.dump());
  }
  if (!api.empty()) return error(404, "", "no such endpoint");

  auto found = std::find_if(files.begin(), files.end(), [&](const Stored& f) { return f.file.path == file_path; });
  if (found == files.end()) return error(404, "EntryNotFound", file_path + " does not exist on \"" + revision + "\"");
  if (found->file.lfs) {
    return respond(302,
                   {{"Location", endpoint_ + "/cdn-lfs/" + found->sha256},
                    {"X-Repo-Commit", commit},
                    {"X-Linked-Etag", "\"" + found->sha256 + "\""},
                    {"X-Linked-Size", std::to_string(found->file.content.size())},
                    {"ETag", "\"" + found->oid + "\""}},
                   "");
  }
  return serve_file(fd, request, *found, commit, record);
}

bool FakeHub::serve_file(int fd, const HttpRequest& request, const Stored& stored, const std::string& commit,
                         Request& record) {
  const HubFile& file = stored.file;
  const int64_t size = static_cast<int64_t>(file.content.size());
  int64_t begin = 0, end = size;
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers = {{"Accept-Ranges", "bytes"}};
  headers.push_back({"ETag", "\"" + (file.lfs ? stored.sha256 : stored.oid) + "\""});
  if (!commit.empty()) headers.push_back({"X-Repo-Commit", commit});
  const std::string range = request.header("range");
  if (range.rfind("bytes=", 0) == 0) {
    begin = std::stoll(range.substr(6));
    size_t dash = range.find('-');
    if (dash != std::string::npos && dash + 1 < range.size())
      end = std::min<int64_t>(size, std::stoll(range.substr(dash + 1)) + 1);
    if (begin >= size) {
      record.status = 416;
      std::lock_guard<std::mutex> lock(mutex_);
      log_.push_back(record);
      return send_all(fd, head(416, {{"Content-Range", "bytes */" + std::to_string(size)}}, 0));
    }
    status = 206;
    headers.push_back({"Content-Range",
                       "bytes " + std::to_string(begin) + "-" + std::to_string(end - 1) + "/" + std::to_string(size)});
  }
  std::string body = file.content.substr(static_cast<size_t>(begin), static_cast<size_t>(end - begin));
  int64_t drop_after = -1;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Fault& fault = faults_[file.path];
    if (fault.statuses > 0) {
      --fault.statuses;
      record.status = fault.status;
      log_.push_back(record);
      return send_all(fd, head(fault.status, {}, 0));
    }
    if (fault.corruptions != 0) {
      if (fault.corruptions > 0) --fault.corruptions;
      const int64_t middle = size / 2;
      if (middle >= begin && middle < end) body[static_cast<size_t>(middle - begin)] ^= 0x5a;
    }
    if (fault.drops > 0 && fault.drop_after < end - begin) {
      --fault.drops;
      drop_after = fault.drop_after;
    }
    record.status = status;
    record.file_body = file.path;
    log_.push_back(record);
  }
  if (drop_after >= 0) {  // the headers promise the whole body; the connection ends early
    send_all(fd, head(status, headers, body.size()) + body.substr(0, static_cast<size_t>(drop_after)));
    ::shutdown(fd, SHUT_RDWR);
    return false;
  }
  return send_all(fd, head(status, headers, body.size()) + (request.method == "HEAD" ? "" : body));
}

std::string FakeHub::publish(const std::string& repo_id, const std::vector<HubFile>& files,
                             const std::string& revision) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<Repo>& repo = repos_[repo_id];
  if (!repo) repo = std::make_unique<Repo>();
  std::string summary = repo_id + "\n" + std::to_string(++commits_);
  for (const HubFile& file : files) summary += "\n" + file.path + " " + std::to_string(file.content.size());
  const std::string commit = sha256(summary).substr(0, 40);
  std::vector<Stored> sorted;
  for (const HubFile& file : files) {
    Stored stored{file, sha256(file.content), ""};
    stored.oid = file.lfs ? sha256("pointer " + file.path + " " + stored.sha256).substr(0, 40)
                          : sha256("blob " + std::to_string(file.content.size()) + '\0' + file.content).substr(0, 40);
    if (file.lfs) cdn_[stored.sha256] = stored;
    sorted.push_back(std::move(stored));
  }
  std::sort(sorted.begin(), sorted.end(), [](const Stored& a, const Stored& b) { return a.file.path < b.file.path; });
  repo->commits[commit] = sorted;
  repo->refs[revision] = commit;
  return commit;
}

std::vector<HubFile> FakeHub::files_from_dir(const std::string& dir) {
  std::vector<HubFile> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    HubFile file;
    file.path = fs::relative(entry.path(), dir).generic_string();
    file.content.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    file.lfs = is_lfs_name(file.path);
    files.push_back(std::move(file));
  }
  std::sort(files.begin(), files.end(), [](const HubFile& a, const HubFile& b) { return a.path < b.path; });
  return files;
}

void FakeHub::require_token(const std::string& repo_id, const std::string& token) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<Repo>& repo = repos_[repo_id];
  if (!repo) repo = std::make_unique<Repo>();
  repo->token = token;
}

void FakeHub::drop_connection(const std::string& path, int64_t after_bytes, int times) {
  std::lock_guard<std::mutex> lock(mutex_);
  faults_[path].drop_after = after_bytes;
  faults_[path].drops = times;
}

void FakeHub::corrupt(const std::string& path, int times) {
  std::lock_guard<std::mutex> lock(mutex_);
  faults_[path].corruptions = times;
}

void FakeHub::fail_with_status(const std::string& path, int status, int times) {
  std::lock_guard<std::mutex> lock(mutex_);
  faults_[path].status = status;
  faults_[path].statuses = times;
}

std::vector<FakeHub::Request> FakeHub::requests() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return log_;
}

int FakeHub::file_body_requests(const std::string& path) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(std::count_if(log_.begin(), log_.end(), [&](const Request& r) {
    return !r.file_body.empty() && (path.empty() || r.file_body == path);
  }));
}

void FakeHub::clear_requests() {
  std::lock_guard<std::mutex> lock(mutex_);
  log_.clear();
}

TinyRepo make_tiny_repo(const std::string& dir) {
  TinyRepo repo;
  const std::string model = dir + "/model";
  CommandResult made = run_sdstack({"make-model", "--preset", "tiny", "--to", model});
  if (made.exit_code == 0 && fs::exists(model + "/model_index.json")) {
    repo.files = FakeHub::files_from_dir(model);
    repo.complete_model = true;
  } else {  // make-model missing or broken: made-up files of the same layout (not loadable)
    const std::vector<std::pair<std::string, size_t>> made_up = {{"scheduler/scheduler_config.json", 0},
                                                                 {"text_encoder/config.json", 0},
                                                                 {"text_encoder/model.safetensors", 90000},
                                                                 {"tokenizer/merges.txt", 0},
                                                                 {"tokenizer/vocab.json", 0},
                                                                 {"unet/config.json", 0},
                                                                 {"unet/diffusion_pytorch_model.safetensors", 400000},
                                                                 {"vae/config.json", 0},
                                                                 {"vae/diffusion_pytorch_model.safetensors", 120000}};
    nlohmann::json index = {{"_class_name", "StableDiffusionPipeline"}};
    for (const char* c : {"scheduler", "text_encoder", "tokenizer", "unet", "vae"})
      index[c] = {"diffusers", std::string(c) + "Class"};
    index["tokenizer"] = {"transformers", "CLIPTokenizer"};
    index["scheduler"] = {"diffusers", "PNDMScheduler"};
    repo.files.push_back({"model_index.json", index.dump(2), false});
    uint32_t seed = 1;
    for (const auto& [path, size] : made_up) {
      repo.files.push_back(
          {path, size > 0 ? random_bytes(size, seed++) : "{\"made_up\": \"" + path + "\"}", is_lfs_name(path)});
    }
  }
  for (HubFile& file : repo.files) {
    if (file.path != "model_index.json") continue;
    // Like runwayml/stable-diffusion-v1-5: a safety checker and feature extractor listed with classes.
    nlohmann::json index = nlohmann::json::parse(file.content);
    index["safety_checker"] = {"stable_diffusion", "StableDiffusionSafetyChecker"};
    index["feature_extractor"] = {"transformers", "CLIPImageProcessor"};
    file.content = index.dump(2);
  }
  for (const HubFile& file : repo.files) repo.expected.push_back(file.path);
  std::sort(repo.expected.begin(), repo.expected.end());
  const std::vector<HubFile> extras = {
      {"unet/diffusion_pytorch_model.fp16.safetensors", random_bytes(50000, 101), true},
      {"unet/diffusion_pytorch_model.non_ema.safetensors", random_bytes(30000, 102), true},
      {"unet/diffusion_pytorch_model.bin", random_bytes(30000, 103), true},
      {"text_encoder/pytorch_model.bin", random_bytes(20000, 104), true},
      {"safety_checker/config.json", "{\"architectures\": [\"StableDiffusionSafetyChecker\"]}", false},
      {"safety_checker/model.safetensors", random_bytes(20000, 105), true},
      {"safety_checker/pytorch_model.bin", random_bytes(20000, 106), true},
      {"feature_extractor/preprocessor_config.json", "{\"crop_size\": 224}", false},
      {"v1-5-pruned-emaonly.ckpt", random_bytes(40000, 107), true},
      {"v1-5-pruned-emaonly.safetensors", random_bytes(40000, 108), true},
      {"README.md", "# tiny\nA test model.\n", false},
      {".gitattributes", "*.safetensors filter=lfs diff=lfs merge=lfs -text\n", false}};
  repo.files.insert(repo.files.end(), extras.begin(), extras.end());
  return repo;
}

}  // namespace sdstack::testing
