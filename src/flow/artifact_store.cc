// The local artifact store: content-addressed objects and one JSON manifest per key, written so that
// a crash or a failed save never leaves anything that looks complete and is not.
#include "flow/artifact_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/fs.h>
#include <sys/ioctl.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "base/file.h"
#include "base/sha256.h"

namespace sdstack::flow {

using base::Result;
using base::Status;

namespace {

constexpr size_t kCopyChunkBytes = 1 << 20;
constexpr int64_t kStaleTemporarySeconds = 3600;
constexpr int kManifestVersion = 1;
const char kManifestSuffix[] = ".json";

std::string os_error(const std::string& what, const std::string& path) {
  return path + ": " + what + ": " + std::strerror(errno);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string parent_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    parts.push_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  return parts;
}

// Owns a file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Fd& operator=(Fd&&) = delete;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// A file written under a temporary name: commit() renames it into place, destruction without a
// commit removes it.
class TemporaryFile {
 public:
  TemporaryFile() = default;
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  ~TemporaryFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }

  // Creates the fresh file `path`, open for reading and writing, with `mode` once it is closed.
  Status create(const std::string& path, mode_t mode) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd_ < 0) return base::io_error(os_error("cannot create", path));
    path_ = path;
    return Status::ok();
  }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

  // Closes the file, after flushing it to disk when `flush` is set, and renames it to `final_path`.
  Status commit(const std::string& final_path, bool flush) {
    int fd = fd_;
    fd_ = -1;
    if (flush && ::fsync(fd) != 0) {
      Status status = base::io_error(os_error("cannot flush", path_));
      ::close(fd);
      return status;
    }
    if (::close(fd) != 0) return base::io_error(os_error("cannot write", path_));
    if (::rename(path_.c_str(), final_path.c_str()) != 0) {
      return base::io_error(os_error("cannot rename into place", final_path));
    }
    path_.clear();
    return Status::ok();
  }

 private:
  std::string path_;
  int fd_ = -1;
};


// Feeds all of the open file `fd` to `hasher`, reading from offset 0 without moving the file offset.
Status hash_whole_file(int fd, const std::string& name, base::Sha256* hasher) {
  std::vector<char> buffer(kCopyChunkBytes);
  off_t offset = 0;
  for (;;) {
    ssize_t n = ::pread(fd, buffer.data(), buffer.size(), offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return base::io_error(os_error("cannot read", name));
    }
    if (n == 0) return Status::ok();
    hasher->update(buffer.data(), static_cast<size_t>(n));
    offset += n;
  }
}

// Copies all of the open file `from` into the empty file `to` (open read-write) and returns the
// bytes copied. A FICLONE reflink is tried first (instant on btrfs and XFS); other file systems get
// a read/write loop. `hasher`, when given, sees the bytes as `to` holds them: after a clone they
// are read back from `to`, so a source changing meanwhile cannot make the digest lie.
Result<int64_t> copy_contents(int from, const std::string& from_name, int to, const std::string& to_name,
                              base::Sha256* hasher) {
#if defined(__linux__) && defined(FICLONE)
  if (::ioctl(to, FICLONE, from) == 0) {
    struct stat info;
    if (::fstat(to, &info) != 0) return base::io_error(os_error("cannot stat", to_name));
    if (hasher != nullptr) SD_RETURN_IF_ERROR(hash_whole_file(to, to_name, hasher));
    return static_cast<int64_t>(info.st_size);
  }
#endif
  std::vector<char> buffer(kCopyChunkBytes);
  int64_t copied = 0;
  for (;;) {
    ssize_t n = ::read(from, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return base::io_error(os_error("cannot read", from_name));
    }
    if (n == 0) return copied;
    if (hasher != nullptr) hasher->update(buffer.data(), static_cast<size_t>(n));
    SD_RETURN_IF_ERROR(base::write_all(to, std::string_view(buffer.data(), static_cast<size_t>(n)), to_name));
    copied += n;
  }
}

Status make_directory(const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) return base::io_error(path + ": cannot create directory: " + error.message());
  return Status::ok();
}

// Deletes whatever is at `path` (a whole tree for a directory; links themselves, not their targets).
Status remove_path(const std::string& path) {
  std::error_code error;
  std::filesystem::remove_all(path, error);
  if (error) return base::io_error(path + ": cannot remove: " + error.message());
  return Status::ok();
}

// Renames `temp` onto `path`, first deleting a directory there, which rename() cannot replace.
Status move_into_place(const std::string& temp, const std::string& path) {
  struct stat info;
  if (::lstat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode)) SD_RETURN_IF_ERROR(remove_path(path));
  if (::rename(temp.c_str(), path.c_str()) != 0) return base::io_error(os_error("cannot rename into place", path));
  return Status::ok();
}

Result<std::string> read_link(const std::string& path) {
  std::vector<char> buffer(256);
  for (;;) {
    ssize_t n = ::readlink(path.c_str(), buffer.data(), buffer.size());
    if (n < 0) return base::io_error(os_error("cannot read link", path));
    if (static_cast<size_t>(n) < buffer.size()) return std::string(buffer.data(), static_cast<size_t>(n));
    buffer.resize(buffer.size() * 2);
  }
}

// An flock() on the store's lock file, released when the object dies.
Result<Fd> lock_store(const std::string& root, int operation) {
  const std::string path = base::join_path(root, "lock");
  Fd fd(::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0644));
  if (fd.get() < 0) return base::io_error(os_error("cannot open", path));
  while (::flock(fd.get(), operation) != 0) {
    if (errno != EINTR) return base::io_error(os_error("cannot lock", path));
  }
  return fd;
}

Status make_store_layout(const std::string& root) {
  for (const char* dir : {"objects/sha256", "manifests", "tmp"})
    SD_RETURN_IF_ERROR(make_directory(base::join_path(root, dir)));
  return Status::ok();
}

bool is_sha256_hex(const std::string& text) {
  if (text.size() != 64) return false;
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string mode_to_octal(uint32_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", mode & 07777);
  return text;
}

// "0755" -> 0755: one to four octal digits.
bool parse_mode(const std::string& text, uint32_t* mode) {
  if (text.empty() || text.size() > 4) return false;
  *mode = 0;
  for (char c : text) {
    if (c < '0' || c > '7') return false;
    *mode = *mode * 8 + static_cast<uint32_t>(c - '0');
  }
  return true;
}

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

// A stored object: its digest (its name) and size.
struct ObjectId {
  std::string sha256;
  int64_t size = 0;
};

bool have_object(const ArtifactStore& store, const ObjectId& id) {
  struct stat info;
  return ::lstat(store.object_path(id.sha256).c_str(), &info) == 0 && S_ISREG(info.st_mode) && info.st_size == id.size;
}

// Copies the open file `source` into `store` as an object, hashing it on the way, and returns its
// digest and size. The copy goes to tmp/, is flushed to disk and renamed to its digest's name; when
// an object of that digest and size is already there it is kept and the copy dropped (one of
// another size, from a damaged store, is replaced). When the bytes do not match `expected`, if
// given, nothing is stored and the result is DataLoss.
Result<ObjectId> store_object(const ArtifactStore& store, int source, const std::string& source_name,
                              const ObjectId* expected) {
  TemporaryFile temp;
  SD_RETURN_IF_ERROR(temp.create(base::temporary_path(base::join_path(store.root(), "tmp/object")), 0444));
  base::Sha256 hasher;
  ObjectId id;
  SD_ASSIGN_OR_RETURN(id.size, copy_contents(source, source_name, temp.fd(), temp.path(), &hasher));
  id.sha256 = hasher.hex_digest();
  if (expected != nullptr && (id.sha256 != expected->sha256 || id.size != expected->size)) {
    return base::data_loss(source_name + ": object is corrupt: it holds " + std::to_string(id.size) +
                           " bytes with sha256 " + id.sha256 + ", not " + std::to_string(expected->size) +
                           " bytes with sha256 " + expected->sha256);
  }
  if (have_object(store, id)) return id;  // the temporary goes
  const std::string object = store.object_path(id.sha256);
  if (::mkdir(parent_of(object).c_str(), 0755) != 0 && errno != EEXIST) {
    return base::io_error(os_error("cannot create directory", parent_of(object)));
  }
  SD_RETURN_IF_ERROR(temp.commit(object, /*flush=*/true));
  return id;
}

// Opens an object for reading; `which` names it and its artifact in messages. A missing object is
// DataLoss: a manifest names it.
Result<Fd> open_object(const std::string& object, const std::string& which) {
  Fd fd(::open(object.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() >= 0) return fd;
  if (errno == ENOENT) return base::data_loss(which + ": object is missing");
  return base::io_error(os_error("cannot open", which));
}

// Makes `path` a writable directory, keeping one that is there and replacing anything else.
Status restore_directory(const std::string& path) {
  struct stat info;
  if (::lstat(path.c_str(), &info) == 0) {
    if (S_ISDIR(info.st_mode)) {
      if ((info.st_mode & 0700) != 0700 && ::chmod(path.c_str(), (info.st_mode & 07777) | 0700) != 0) {
        return base::io_error(os_error("cannot make writable", path));
      }
      return Status::ok();
    }
    SD_RETURN_IF_ERROR(remove_path(path));
  }
  if (::mkdir(path.c_str(), 0700) != 0) return base::io_error(os_error("cannot create directory", path));
  return Status::ok();
}

// Makes `path` a symlink holding `target`, replacing what is there in one rename.
Status restore_symlink(const std::string& target, const std::string& path) {
  const std::string temp = base::temporary_path(path);
  if (::symlink(target.c_str(), temp.c_str()) != 0) return base::io_error(os_error("cannot create link", temp));
  Status moved = move_into_place(temp, path);
  if (!moved.is_ok()) ::unlink(temp.c_str());
  return moved;
}

// Copies `object` to `path` under a temporary name, checking its size (and digest when `verify`)
// before renaming it into place.
Status restore_file(const std::string& object, const ArtifactEntry& entry, const std::string& key,
                    const std::string& path, bool verify) {
  const std::string which = object + " (artifact '" + entry.path + "' of '" + key + "')";
  SD_ASSIGN_OR_RETURN(Fd source, open_object(object, which));
  struct stat info;
  if (::fstat(source.get(), &info) != 0) return base::io_error(os_error("cannot stat", which));
  if (info.st_size != entry.size) {
    return base::data_loss(which + ": object has " + std::to_string(info.st_size) + " bytes, expected " +
                           std::to_string(entry.size));
  }
  TemporaryFile temp;
  SD_RETURN_IF_ERROR(temp.create(base::temporary_path(path), 0600));
  base::Sha256 hasher;
  SD_ASSIGN_OR_RETURN(int64_t copied,
                      copy_contents(source.get(), object, temp.fd(), temp.path(), verify ? &hasher : nullptr));
  if (copied != entry.size) {
    return base::data_loss(which + ": read " + std::to_string(copied) + " bytes, expected " +
                           std::to_string(entry.size));
  }
  if (verify) {
    const std::string digest = hasher.hex_digest();
    if (digest != entry.sha256) return base::data_loss(which + ": object is corrupt: its sha256 is " + digest);
  }
  if (::fchmod(temp.fd(), entry.mode) != 0) return base::io_error(os_error("cannot set the mode of", temp.path()));
  struct stat existing;
  if (::lstat(path.c_str(), &existing) == 0 && S_ISDIR(existing.st_mode)) SD_RETURN_IF_ERROR(remove_path(path));
  // A restored copy can be made again from the store, so it is not flushed to disk file by file.
  return temp.commit(path, /*flush=*/false);
}

// Walks a working directory's declared paths into entries, storing each regular file as an object.
class Saver {
 public:
  Saver(const ArtifactStore& store, std::string work_dir) : store_(store), work_dir_(std::move(work_dir)) {}

  // Adds the declared, normalised `path`, or notes it missing.
  Status add_declared(const std::string& path, std::vector<std::string>* missing) {
    if (path == ".") {
      struct stat info;
      if (::stat(work_dir_.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {  // work_dir itself may be a link
        missing->push_back(path);
        return Status::ok();
      }
      return add_children(work_dir_, "");
    }
    // Each folder on the way must be a real folder: going through a link would save what lies
    // outside the working dir and restore it as a folder.
    std::string prefix;
    for (const std::string& part : split_path(path)) {
      prefix = prefix.empty() ? part : prefix + "/" + part;
      struct stat info;
      if (::lstat(base::join_path(work_dir_, prefix).c_str(), &info) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
          missing->push_back(path);
          return Status::ok();
        }
        return base::io_error(os_error("cannot stat", base::join_path(work_dir_, prefix)));
      }
      if (prefix == path) return add_entry(path, info);
      if (S_ISLNK(info.st_mode)) {
        return base::invalid_argument("artifact path '" + path + "' goes through the symbolic link '" + prefix +
                                      "'; declare '" + prefix + "' to save the link itself");
      }
    }
    return Status::ok();
  }

  std::map<std::string, ArtifactEntry>& entries() { return entries_; }

 private:
  Status add_entry(const std::string& relative, const struct stat& info) {
    if (entries_.count(relative) != 0) return Status::ok();  // declared twice, or inside another declared path
    const std::string full = base::join_path(work_dir_, relative);
    ArtifactEntry entry;
    entry.path = relative;
    entry.mode = info.st_mode & 07777;
    if (S_ISLNK(info.st_mode)) {
      entry.type = ArtifactEntry::Type::kSymlink;
      SD_ASSIGN_OR_RETURN(entry.link_target, read_link(full));
      entries_[relative] = std::move(entry);
      return Status::ok();
    }
    if (S_ISDIR(info.st_mode)) {
      entry.type = ArtifactEntry::Type::kDirectory;
      entries_[relative] = std::move(entry);
      return add_children(full, relative);
    }
    if (!S_ISREG(info.st_mode)) return Status::ok();  // fifos, sockets, devices: not artifacts
    Status stored = store_file(full, &entry);
    if (!stored.is_ok()) return stored.with_context("saving artifact '" + relative + "'");
    entries_[relative] = std::move(entry);
    return Status::ok();
  }

  Status add_children(const std::string& dir, const std::string& relative) {
    // O_NOFOLLOW: a directory swapped for a link since lstat() is not walked; work_dir itself may be one.
    const int no_follow = relative.empty() ? 0 : O_NOFOLLOW;
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | no_follow | O_CLOEXEC);
    if (fd < 0) return base::io_error(os_error("cannot open directory", dir));
    DIR* listing = ::fdopendir(fd);
    if (listing == nullptr) {
      Status status = base::io_error(os_error("cannot list", dir));
      ::close(fd);
      return status;
    }
    std::vector<std::string> names;
    errno = 0;
    while (const dirent* child = ::readdir(listing)) {
      const std::string name = child->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    const int read_error = errno;
    ::closedir(listing);
    if (read_error != 0) {
      errno = read_error;
      return base::io_error(os_error("cannot list", dir));
    }
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      const std::string child_relative = relative.empty() ? name : relative + "/" + name;
      struct stat info;
      if (::lstat(base::join_path(dir, name).c_str(), &info) != 0) {
        if (errno == ENOENT) continue;  // deleted since it was listed
        return base::io_error(os_error("cannot stat", base::join_path(dir, name)));
      }
      SD_RETURN_IF_ERROR(add_entry(child_relative, info));
    }
    return Status::ok();
  }

  // Stores the file's bytes as an object (read once, hashed as they are copied).
  Status store_file(const std::string& path, ArtifactEntry* entry) {
    // O_NONBLOCK: a fifo swapped in since lstat() must not hang the save; regular files ignore it.
    Fd source(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (source.get() < 0) return base::io_error(os_error("cannot open", path));
    struct stat info;
    if (::fstat(source.get(), &info) != 0) return base::io_error(os_error("cannot stat", path));
    if (!S_ISREG(info.st_mode)) return base::io_error(path + ": changed from a file to something else while saving");
    entry->mode = info.st_mode & 07777;
    SD_ASSIGN_OR_RETURN(ObjectId id, store_object(store_, source.get(), path, nullptr));
    entry->sha256 = std::move(id.sha256);
    entry->size = id.size;
    return Status::ok();
  }

  const ArtifactStore& store_;
  const std::string work_dir_;
  std::map<std::string, ArtifactEntry> entries_;  // by path: a directory sorts before its contents
};

nlohmann::json manifest_to_json(const ArtifactManifest& manifest) {
  nlohmann::json entries = nlohmann::json::array();
  for (const ArtifactEntry& entry : manifest.entries) {
    nlohmann::json item = {{"path", entry.path},
                           {"type", std::string(artifact_type_name(entry.type))},
                           {"mode", mode_to_octal(entry.mode)}};
    if (entry.type == ArtifactEntry::Type::kFile) {
      item["size"] = entry.size;
      item["sha256"] = entry.sha256;
    }
    if (entry.type == ArtifactEntry::Type::kSymlink) item["target"] = entry.link_target;
    entries.push_back(std::move(item));
  }
  return {{"version", kManifestVersion},   {"key", manifest.key},         {"saved_ms", manifest.saved_ms},
          {"declared", manifest.declared}, {"missing", manifest.missing}, {"total_bytes", manifest.total_bytes},
          {"entries", std::move(entries)}};
}

// Why `entry` cannot be a true entry ("" when it can); `types` holds the entries sorted before it.
std::string entry_problem(const ArtifactEntry& entry, const std::map<std::string, ArtifactEntry::Type>& types) {
  Result<std::string> normal = normalise_artifact_path(entry.path);
  if (!normal.is_ok() || *normal != entry.path || entry.path == ".") return "bad path '" + entry.path + "'";
  if (types.count(entry.path) != 0) return "'" + entry.path + "' is listed twice";
  for (size_t slash = entry.path.find('/'); slash != std::string::npos; slash = entry.path.find('/', slash + 1)) {
    auto parent = types.find(entry.path.substr(0, slash));
    if (parent != types.end() && parent->second != ArtifactEntry::Type::kDirectory) {
      return "'" + entry.path + "' lies under the " + std::string(artifact_type_name(parent->second)) + " '" +
             parent->first + "'";
    }
  }
  if (entry.type == ArtifactEntry::Type::kFile && (!is_sha256_hex(entry.sha256) || entry.size < 0)) {
    return "'" + entry.path + "' has a bad sha256 or size";
  }
  return "";
}

// Parses a manifest file's text; every error is DataLoss naming `file`.
Result<ArtifactManifest> parse_manifest(const std::string& text, const std::string& file, const std::string& key) {
  auto corrupt = [&](const std::string& why) { return base::data_loss(file + ": corrupt artifact manifest: " + why); };
  const nlohmann::json root = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return corrupt("not valid JSON (a partly written file?)");
  if (!root.is_object()) return corrupt("not a JSON object");
  ArtifactManifest manifest;
  manifest.key = key;
  try {
    const int version = root.at("version").get<int>();
    if (version > kManifestVersion) {
      return base::unsupported(file + ": artifact manifest version " + std::to_string(version) +
                               " is newer than this sdstack reads (" + std::to_string(kManifestVersion) + ")");
    }
    manifest.saved_ms = root.at("saved_ms").get<int64_t>();
    manifest.declared = root.at("declared").get<std::vector<std::string>>();
    manifest.missing = root.at("missing").get<std::vector<std::string>>();
    manifest.total_bytes = root.at("total_bytes").get<int64_t>();
    for (const nlohmann::json& item : root.at("entries")) {
      ArtifactEntry entry;
      entry.path = item.at("path").get<std::string>();
      const std::string type = item.at("type").get<std::string>();
      const std::string mode = item.at("mode").get<std::string>();
      if (!parse_mode(mode, &entry.mode)) return corrupt("'" + entry.path + "' has a bad mode '" + mode + "'");
      if (type == "file") {
        entry.type = ArtifactEntry::Type::kFile;
        entry.size = item.at("size").get<int64_t>();
        entry.sha256 = item.at("sha256").get<std::string>();
      } else if (type == "directory") {
        entry.type = ArtifactEntry::Type::kDirectory;
      } else if (type == "symlink") {
        entry.type = ArtifactEntry::Type::kSymlink;
        entry.link_target = item.at("target").get<std::string>();
      } else {
        return corrupt("'" + entry.path + "' has an unknown type '" + type + "'");
      }
      manifest.entries.push_back(std::move(entry));
    }
  } catch (const nlohmann::json::exception& e) {  // a missing key or a value of the wrong type
    return corrupt(e.what());
  }
  std::sort(manifest.entries.begin(), manifest.entries.end(),
            [](const ArtifactEntry& a, const ArtifactEntry& b) { return a.path < b.path; });
  std::map<std::string, ArtifactEntry::Type> types;
  for (const ArtifactEntry& entry : manifest.entries) {
    const std::string problem = entry_problem(entry, types);
    if (!problem.empty()) return corrupt(problem);
    types[entry.path] = entry.type;
  }
  return manifest;
}

// Calls `visit` with each regular file under `dir` (not following links) and its lstat.
template <typename Visit>
void for_each_file(const std::string& dir, Visit visit) {
  std::error_code error;
  for (std::filesystem::recursive_directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    std::error_code status_error;
    if (!it->is_regular_file(status_error) || it->is_symlink(status_error)) continue;
    struct stat info;
    if (::lstat(it->path().c_str(), &info) == 0) visit(it->path().string(), info);
  }
}

// Checks that the open file `fd` holds the object `id`, reading it whole; `which` names it.
Status check_object_contents(int fd, const ObjectId& id, const std::string& which) {
  struct stat info;
  if (::fstat(fd, &info) != 0) return base::io_error(os_error("cannot stat", which));
  base::Sha256 hasher;
  SD_RETURN_IF_ERROR(hash_whole_file(fd, which, &hasher));
  const std::string digest = hasher.hex_digest();
  if (info.st_size != id.size || digest != id.sha256) {
    return base::data_loss(which + ": object is corrupt: it holds " + std::to_string(info.st_size) +
                           " bytes with sha256 " + digest + ", not " + std::to_string(id.size) + " bytes with sha256 " +
                           id.sha256);
  }
  return Status::ok();
}

}  // namespace

std::string artifact_manifest_json(const ArtifactManifest& manifest) {
  return manifest_to_json(manifest).dump(1) + "\n";
}

Result<ArtifactManifest> parse_artifact_manifest(const std::string& text, const std::string& source,
                                                 const std::string& key) {
  return parse_manifest(text, source, key);
}

std::string_view artifact_type_name(ArtifactEntry::Type type) {
  switch (type) {
    case ArtifactEntry::Type::kFile:
      return "file";
    case ArtifactEntry::Type::kDirectory:
      return "directory";
    case ArtifactEntry::Type::kSymlink:
      return "symlink";
  }
  return "?";
}

Result<std::string> normalise_artifact_path(const std::string& path) {
  const std::string quoted = "artifact path '" + path + "'";
  if (path.empty()) return base::invalid_argument("an artifact path is empty");
  if (path[0] == '/') {
    return base::invalid_argument(quoted + " is absolute; artifact paths are relative to the working directory");
  }
  std::string normal;
  for (const std::string& part : split_path(path)) {
    if (part.empty() || part == ".") continue;
    if (part == "..") return base::invalid_argument(quoted + " leaves the working directory ('..' is not allowed)");
    normal = normal.empty() ? part : normal + "/" + part;
  }
  return normal.empty() ? std::string(".") : normal;
}

Status check_artifact_key(const std::string& key) {
  const std::string quoted = "artifact key '" + key + "'";
  for (char c : key) {
    const bool allowed = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                         c == '_' || c == '-' || c == '/';
    if (!allowed) return base::invalid_argument(quoted + " may hold only letters, digits, '.', '_', '-' and '/'");
  }
  for (const std::string& part : split_path(key)) {
    if (part.empty() || part == "." || part == "..") {
      return base::invalid_argument(quoted + " must be a relative path without empty, '.' or '..' parts");
    }
  }
  return Status::ok();
}

ArtifactStore::ArtifactStore(std::string root) : root_(std::move(root)) {}

std::string ArtifactStore::object_path(const std::string& sha256) const {
  return base::join_path(root_, "objects/sha256/" + sha256.substr(0, 2) + "/" + sha256);
}

std::string ArtifactStore::manifest_path(const std::string& key) const {
  return base::join_path(root_, "manifests/" + key + kManifestSuffix);
}

Result<ArtifactManifest> ArtifactStore::save(const std::string& key, const std::string& work_dir,
                                             const std::vector<std::string>& paths) {
  SD_RETURN_IF_ERROR(check_artifact_key(key));
  ArtifactManifest manifest;
  manifest.key = key;
  for (const std::string& path : paths) {
    SD_ASSIGN_OR_RETURN(std::string normal, normalise_artifact_path(path));
    manifest.declared.push_back(std::move(normal));
  }
  SD_RETURN_IF_ERROR(make_store_layout(root_));
  SD_ASSIGN_OR_RETURN(Fd lock, lock_store(root_, LOCK_SH));

  Saver saver(*this, work_dir);
  for (const std::string& path : manifest.declared) SD_RETURN_IF_ERROR(saver.add_declared(path, &manifest.missing));
  for (auto& [path, entry] : saver.entries()) {
    manifest.total_bytes += entry.size;
    manifest.entries.push_back(std::move(entry));
  }
  manifest.saved_ms = now_ms();

  const std::string file = manifest_path(key);
  SD_RETURN_IF_ERROR(make_directory(parent_of(file)));
  SD_RETURN_IF_ERROR(base::write_file_atomic(file, manifest_to_json(manifest).dump(1) + "\n"));
  return manifest;
}

Result<std::optional<ArtifactManifest>> ArtifactStore::manifest(const std::string& key) const {
  SD_RETURN_IF_ERROR(check_artifact_key(key));
  const std::string file = manifest_path(key);
  Result<std::string> text = base::read_file(file);
  if (!text.is_ok()) {
    if (text.status().code() == base::StatusCode::kNotFound) return std::optional<ArtifactManifest>();
    return text.status();
  }
  SD_ASSIGN_OR_RETURN(ArtifactManifest manifest, parse_manifest(*text, file, key));
  return std::optional<ArtifactManifest>(std::move(manifest));
}

Result<std::vector<std::string>> ArtifactStore::keys() const {
  const std::string dir = base::join_path(root_, "manifests");
  std::vector<std::string> keys;
  for_each_file(dir, [&](const std::string& path, const struct stat&) {
    if (!ends_with(path, kManifestSuffix)) return;  // temporaries being written, or left by a crash
    std::string key = path.substr(dir.size() + 1, path.size() - dir.size() - 1 - std::strlen(kManifestSuffix));
    if (check_artifact_key(key).is_ok()) keys.push_back(std::move(key));
  });
  std::sort(keys.begin(), keys.end());
  return keys;
}

Status ArtifactStore::restore(const std::string& key, const std::string& dest, bool verify) const {
  SD_ASSIGN_OR_RETURN(std::optional<ArtifactManifest> found, manifest(key));
  if (!found) return base::not_found("no artifacts are saved under '" + key + "' in " + root_);
  SD_ASSIGN_OR_RETURN(Fd lock, lock_store(root_, LOCK_SH));
  SD_RETURN_IF_ERROR(make_directory(dest));

  // Directories are made writable (0700) while they are filled and get their modes last, deepest
  // first, even when an entry fails, so a 0555 directory can be filled and nothing stays 0700.
  std::vector<const ArtifactEntry*> directories;
  Status status;
  for (const ArtifactEntry& entry : found->entries) {
    const std::string path = base::join_path(dest, entry.path);
    if (entry.path.find('/') != std::string::npos) status = make_directory(parent_of(path));
    if (!status.is_ok()) break;
    switch (entry.type) {
      case ArtifactEntry::Type::kDirectory:
        status = restore_directory(path);
        directories.push_back(&entry);
        break;
      case ArtifactEntry::Type::kSymlink:
        status = restore_symlink(entry.link_target, path);
        break;
      case ArtifactEntry::Type::kFile:
        status = restore_file(object_path(entry.sha256), entry, key, path, verify);
        break;
    }
    if (!status.is_ok()) break;
  }
  for (auto it = directories.rbegin(); it != directories.rend(); ++it) {
    const std::string path = base::join_path(dest, (*it)->path);
    if (::chmod(path.c_str(), (*it)->mode) != 0 && status.is_ok()) {
      status = base::io_error(os_error("cannot set the mode of", path));
    }
  }
  return status;
}

Status ArtifactStore::remove(const std::string& key) {
  SD_RETURN_IF_ERROR(check_artifact_key(key));
  const std::string file = manifest_path(key);
  if (::unlink(file.c_str()) != 0) {
    if (errno == ENOENT) return base::not_found("no artifacts are saved under '" + key + "' in " + root_);
    return base::io_error(os_error("cannot delete", file));
  }
  return Status::ok();
}

Result<int64_t> ArtifactStore::gc() {
  struct stat root_info;
  if (::stat(root_.c_str(), &root_info) != 0) return int64_t{0};  // nothing saved yet
  SD_ASSIGN_OR_RETURN(Fd lock, lock_store(root_, LOCK_EX));

  std::set<std::string> referenced;
  SD_ASSIGN_OR_RETURN(std::vector<std::string> all_keys, keys());
  for (const std::string& key : all_keys) {
    SD_ASSIGN_OR_RETURN(std::optional<ArtifactManifest> found, manifest(key));
    if (!found) continue;  // removed since it was listed
    for (const ArtifactEntry& entry : found->entries) {
      if (entry.type == ArtifactEntry::Type::kFile) referenced.insert(entry.sha256);
    }
  }

  int64_t freed = 0;
  Status status;
  auto remove_file = [&](const std::string& path, const struct stat& info) {
    if (::unlink(path.c_str()) == 0) {
      freed += info.st_size;
    } else if (errno != ENOENT && status.is_ok()) {
      status = base::io_error(os_error("cannot delete", path));
    }
  };
  for_each_file(base::join_path(root_, "objects/sha256"), [&](const std::string& path, const struct stat& info) {
    const std::string name = std::filesystem::path(path).filename().string();
    if (referenced.count(name) == 0) remove_file(path, info);
  });
  const int64_t stale_before = now_ms() / 1000 - kStaleTemporarySeconds;
  for_each_file(base::join_path(root_, "tmp"), [&](const std::string& path, const struct stat& info) {
    if (info.st_mtime < stale_before) remove_file(path, info);
  });
  for_each_file(base::join_path(root_, "manifests"), [&](const std::string& path, const struct stat& info) {
    if (!ends_with(path, kManifestSuffix) && path.find(".tmp.") != std::string::npos && info.st_mtime < stale_before) {
      remove_file(path, info);
    }
  });
  if (!status.is_ok()) return status;
  return freed;
}

Status ArtifactStore::push(const std::string& key, ArtifactStore& other) const {
  SD_ASSIGN_OR_RETURN(std::optional<ArtifactManifest> found, manifest(key));
  if (!found) return base::not_found("no artifacts are saved under '" + key + "' in " + root_);
  SD_RETURN_IF_ERROR(make_store_layout(other.root()));
  SD_ASSIGN_OR_RETURN(Fd lock, lock_store(root_, LOCK_SH));
  SD_ASSIGN_OR_RETURN(Fd other_lock, lock_store(other.root(), LOCK_SH));

  std::set<std::string> copied;
  for (const ArtifactEntry& entry : found->entries) {
    const ObjectId id{entry.sha256, entry.size};
    if (entry.type != ArtifactEntry::Type::kFile || !copied.insert(id.sha256).second || have_object(other, id)) {
      continue;
    }
    const std::string object = object_path(id.sha256);
    const std::string which = object + " (artifact '" + entry.path + "' of '" + key + "')";
    SD_ASSIGN_OR_RETURN(Fd source, open_object(object, which));
    SD_RETURN_IF_ERROR(store_object(other, source.get(), which, &id).status());
  }
  const std::string file = other.manifest_path(key);
  SD_RETURN_IF_ERROR(make_directory(parent_of(file)));
  return base::write_file_atomic(file, manifest_to_json(*found).dump(1) + "\n");
}

Result<int64_t> ArtifactStore::import_manifest(const ArtifactManifest& manifest, const std::string& source,
                                               const FetchObject& fetch) {
  SD_RETURN_IF_ERROR(check_artifact_key(manifest.key));
  // The manifest names the objects' files: a digest that is not one could point anywhere.
  std::map<std::string, ArtifactEntry::Type> types;
  for (const ArtifactEntry& entry : manifest.entries) {
    const std::string problem = entry_problem(entry, types);
    if (!problem.empty()) return base::data_loss(source + ": corrupt artifact manifest: " + problem);
    types[entry.path] = entry.type;
  }
  SD_RETURN_IF_ERROR(make_store_layout(root_));
  SD_ASSIGN_OR_RETURN(Fd lock, lock_store(root_, LOCK_SH));

  int64_t fetched = 0;
  std::set<std::string> seen;
  for (const ArtifactEntry& entry : manifest.entries) {
    const ObjectId id{entry.sha256, entry.size};
    if (entry.type != ArtifactEntry::Type::kFile || !seen.insert(id.sha256).second || have_object(*this, id)) {
      continue;
    }
    const std::string which =
        "object " + id.sha256 + " from " + source + " (artifact '" + entry.path + "' of '" + manifest.key + "')";
    const std::string temp = base::temporary_path(base::join_path(root_, "tmp/object"));
    Status status = fetch(entry, temp);
    if (status.is_ok()) {
      Fd fd(::open(temp.c_str(), O_RDONLY | O_CLOEXEC));
      if (fd.get() < 0) {
        status = base::io_error(os_error("cannot open the fetched object", temp));
      } else {
        status = check_object_contents(fd.get(), id, which);
      }
      // Objects are read-only and flushed before they get their name, as store_object() leaves them.
      if (status.is_ok() && (::fchmod(fd.get(), 0444) != 0 || ::fsync(fd.get()) != 0)) {
        status = base::io_error(os_error("cannot flush", temp));
      }
      const std::string object = object_path(id.sha256);
      if (status.is_ok() && ::mkdir(parent_of(object).c_str(), 0755) != 0 && errno != EEXIST) {
        status = base::io_error(os_error("cannot create directory", parent_of(object)));
      }
      if (status.is_ok() && ::rename(temp.c_str(), object.c_str()) != 0) {
        status = base::io_error(os_error("cannot rename into place", object));
      }
    }
    if (!status.is_ok()) {
      ::unlink(temp.c_str());
      return status;
    }
    ++fetched;
  }
  const std::string file = manifest_path(manifest.key);
  SD_RETURN_IF_ERROR(make_directory(parent_of(file)));
  SD_RETURN_IF_ERROR(base::write_file_atomic(file, artifact_manifest_json(manifest)));
  return fetched;
}

Status ArtifactStore::with_shared_lock(const std::function<Status()>& work) const {
  struct stat root_info;
  if (::stat(root_.c_str(), &root_info) != 0) return work();  // nothing saved yet, nothing for gc() to delete
  SD_ASSIGN_OR_RETURN(Fd lock, lock_store(root_, LOCK_SH));
  return work();
}

}  // namespace sdstack::flow
