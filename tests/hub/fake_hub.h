// A Hugging Face Hub for tests: an HTTP/1.1 server on 127.0.0.1 (ephemeral port, background threads)
// with the endpoints sdstack uses, access control, fault injection and a log of what was asked.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace sdstack::testing {

struct HubFile {
  std::string path;  // "unet/diffusion_pytorch_model.safetensors"
  std::string content;
  bool lfs = false;  // served through a redirect to /cdn-lfs/SHA256, hashed with sha256
};

// Endpoints, as huggingface.co answers them:
//   GET /api/models/ORG/NAME/revision/REV      {"id", "sha", "siblings": [{"rfilename"}]}
//   GET /api/models/ORG/NAME/tree/REV?recursive=true[&cursor=N]
//       [{"type": "file"|"directory", "path", "size", "oid", "lfs": {"oid", "size", "pointerSize"}}],
//       paged with a Link: <...>; rel="next" header
//   GET|HEAD /ORG/NAME/resolve/REV/PATH
//       LFS: 302 to /cdn-lfs/SHA256 with X-Repo-Commit, X-Linked-Etag, X-Linked-Size
//       else: 200 with the bytes, ETag (the oid) and X-Repo-Commit
//   GET /cdn-lfs/SHA256                         the bytes, ETag "SHA256"
// File bodies honour Range: bytes=N- (206 with Content-Range; 416 past the end). Errors carry
// X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) like the Hub's.
// Object ids of non-LFS files stand in for git's sha1: the first 40 hex digits of a sha256.
// Thread-safe.
class FakeHub {
 public:
  FakeHub();   // listening when constructed
  ~FakeHub();  // stops and joins every thread
  FakeHub(const FakeHub&) = delete;
  FakeHub& operator=(const FakeHub&) = delete;

  // "http://127.0.0.1:PORT": what HF_ENDPOINT is set to.
  const std::string& endpoint() const { return endpoint_; }

  // Publishes `files` as a new commit of `repo_id` and points `revision` at it; returns the commit hash.
  std::string publish(const std::string& repo_id, const std::vector<HubFile>& files,
                      const std::string& revision = "main");
  // Every file under `dir`, LFS for weights (*.safetensors, *.bin, *.ckpt, ...) as the Hub's
  // .gitattributes makes them.
  static std::vector<HubFile> files_from_dir(const std::string& dir);
  // Gates `repo_id`: without "Authorization: Bearer <token>" 401, with another token 403.
  void require_token(const std::string& repo_id, const std::string& token);
  // Files in the tree listing per page (default: 1000).
  void set_page_size(int files) { page_size_ = files; }

  // Faults on the body of the file at `path`, in any repo; each counts down per response.
  // Sends `after_bytes` bytes of the response's body, then closes the connection.
  void drop_connection(const std::string& path, int64_t after_bytes, int times = 1);
  // Flips one byte in the middle of the file (times < 0: every time).
  void corrupt(const std::string& path, int times);
  // Answers `status` (503, say) instead of the file.
  void fail_with_status(const std::string& path, int status, int times = 1);

  struct Request {
    std::string method;
    std::string target;         // as sent, query included
    std::string range;          // the Range header, or ""
    std::string authorization;  // the Authorization header, or ""
    int status = 0;
    std::string file_body;  // the path of the file whose bytes were sent, or ""
  };
  std::vector<Request> requests() const;
  // Responses that carried file bytes (200 or 206 from resolve or the CDN), for `path` when given.
  int file_body_requests(const std::string& path = "") const;
  void clear_requests();

 private:
  // A published file with its hashes computed once.
  struct Stored {
    HubFile file;
    std::string sha256;  // of the content
    std::string oid;     // the tree's "oid", and the ETag resolve sends for non-LFS files
  };
  struct Repo;
  struct Fault {
    int64_t drop_after = -1;
    int drops = 0;
    int corruptions = 0;
    int status = 0;
    int statuses = 0;
  };
  struct HttpRequest;

  void accept_loop();
  void serve_connection(int fd);
  // Writes the response; returns false when the connection must close.
  bool handle(int fd, const HttpRequest& request);
  bool serve_file(int fd, const HttpRequest& request, const Stored& stored, const std::string& commit, Request& record);

  std::string endpoint_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<int> page_size_{1000};
  std::thread acceptor_;

  mutable std::mutex mutex_;  // guards everything below
  std::map<std::string, std::unique_ptr<Repo>> repos_;
  std::map<std::string, Stored> cdn_;  // sha256 -> LFS file
  std::map<std::string, Fault> faults_;
  std::vector<Request> log_;
  std::set<int> open_fds_;
  std::vector<std::thread> connections_;
  int commits_ = 0;
};

// A tiny diffusers repo made by the project: `sdstack make-model --preset tiny` into `dir`, plus the
// extras a real repo has that a pull must skip (a fp16 variant, an EMA variant, pickles, a safety
// checker, a root checkpoint, a README). Falls back to small made-up files where make-model is
// missing. The first file set is what a default pull takes (sorted).
struct TinyRepo {
  std::vector<HubFile> files;
  std::vector<std::string> expected;  // what `sdstack pull` selects by default
  bool complete_model = false;        // made by make-model: loadable by sdstack generate
};
TinyRepo make_tiny_repo(const std::string& dir);

}  // namespace sdstack::testing
