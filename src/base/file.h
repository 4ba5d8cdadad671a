// Files: whole-file reads, atomic writes, read-only memory maps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "base/status.h"

namespace sdstack::base {

// Reads the whole file. The error names the path and the OS reason.
Result<std::string> read_file(const std::string& path);

// A fresh name beside `path` for a temporary that will be renamed over it ("PATH.tmp.PID.RANDOM").
std::string temporary_path(const std::string& path);

// Writes a file under a temporary name in the same folder and renames it into place on commit(),
// so a reader sees the old file or the complete new one; abandoning it (destroying it before
// commit) removes the temporary. Not thread-safe.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path) : path_(std::move(path)) {}
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  Status open();
  Status write(const void* data, size_t size);
  // Flushes to disk and renames into place.
  Status commit();

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
};

// Writes all of `bytes` to `fd`, retrying short writes and EINTR. An error reads
// "NAME: cannot write: <OS reason>".
Status write_all(int fd, std::string_view bytes, const std::string& name);

// Writes `contents` to `path` atomically: a temporary file in the same folder is written,
// flushed to disk and renamed over `path`, so readers never see a half-written file.
Status write_file_atomic(const std::string& path, std::string_view contents);

// A read-only memory map of a whole file. Thread-safe to read from; the mapping lives as long
// as the object (share it with std::shared_ptr to keep views into it alive).
class MappedFile {
 public:
  static Result<std::shared_ptr<MappedFile>> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

bool file_exists(const std::string& path);
bool is_directory(const std::string& path);

// "a/b" joined with "c" -> "a/b/c" (no doubled slash).
std::string join_path(const std::string& a, const std::string& b);

}  // namespace sdstack::base
