// SHA-256 (FIPS 180-4): verifies downloaded files against the Hub's LFS hashes, fed as bytes arrive.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "base/status.h"

namespace sdstack::base {

// An incremental SHA-256. Not thread-safe: one object per stream of bytes.
class Sha256 {
 public:
  Sha256() { reset(); }
  void reset();
  void update(const void* data, size_t size);
  // The digest as 64 lowercase hex digits. Ends the stream: call reset() before reusing the object.
  std::string hex_digest();

 private:
  void compress(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// The SHA-256 of a whole file, as 64 lowercase hex digits; the error names the path.
Result<std::string> sha256_file(const std::string& path);

}  // namespace sdstack::base
