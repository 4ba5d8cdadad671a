// Files: whole-file reads, atomic writes, read-only memory maps.
#include "base/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

namespace sdstack::base {
namespace {

std::string os_error(const std::string& what, const std::string& path) {
  return path + ": " + what + ": " + std::strerror(errno);
}

}  // namespace

Result<std::string> read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return not_found(path + ": no such file");
    return io_error(os_error("cannot open", path));
  }
  std::string contents;
  char buffer[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      Status status = io_error(os_error("cannot read", path));
      ::close(fd);
      return status;
    }
    if (n == 0) break;
    contents.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return contents;
}

std::string temporary_path(const std::string& path) {
  std::random_device random;
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(random());
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

Status AtomicFileWriter::open() {
  std::string temp = temporary_path(path_);
  fd_ = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) return io_error(os_error("cannot create", path_));
  temp_path_ = temp;
  return Status::ok();
}

Status AtomicFileWriter::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error(os_error("cannot write", path_));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return Status::ok();
}

Status AtomicFileWriter::commit() {
  int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0) {
    Status status = io_error(os_error("cannot flush", path_));
    ::close(fd);
    return status;
  }
  if (::close(fd) != 0) return io_error(os_error("cannot flush", path_));
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) return io_error(os_error("cannot rename into place", path_));
  temp_path_.clear();
  return Status::ok();
}

Status write_all(int fd, std::string_view bytes, const std::string& name) {
  const char* data = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(fd, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error(name + ": cannot write: " + std::strerror(errno));
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
  return Status::ok();
}

Status write_file_atomic(const std::string& path, std::string_view contents) {
  AtomicFileWriter file(path);
  SD_RETURN_IF_ERROR(file.open());
  SD_RETURN_IF_ERROR(file.write(contents.data(), contents.size()));
  return file.commit();
}

Result<std::shared_ptr<MappedFile>> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return not_found(path + ": no such file");
    return io_error(os_error("cannot open", path));
  }
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    Status status = io_error(os_error("cannot stat", path));
    ::close(fd);
    return status;
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    return invalid_argument(path + ": not a regular file");
  }
  size_t size = static_cast<size_t>(info.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) {
      Status status = io_error(os_error("cannot mmap", path));
      ::close(fd);
      return status;
    }
    data = static_cast<const uint8_t*>(mapped);
  }
  ::close(fd);  // the mapping keeps the file alive
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

bool file_exists(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

std::string join_path(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

}  // namespace sdstack::base
