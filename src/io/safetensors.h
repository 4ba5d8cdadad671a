// safetensors: a validated, memory-mapped reader (tensors are views into the mapping) and a writer.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/file.h"
#include "base/status.h"
#include "tensor/tensor.h"

namespace sdstack::io {

using tensor::DType;
using tensor::Shape;
using tensor::Tensor;

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  size_t begin = 0;  // byte offsets into the data section (after the header)
  size_t end = 0;
};

// A tensor stored in a dtype that safetensors defines but sdstack does not compute with (the I64
// `position_ids` buffer that transformers saves in CLIP text encoders, say). Its header entry is
// validated like any other so the file's layout is known to be sound, but it is not exposed as a
// Tensor: asking for it by name (WeightSet::get) is an error naming the tensor and its dtype.
struct UnreadableTensor {
  std::string name;
  std::string dtype;  // as written in the file: "I64", "F64", "BOOL", ...
  Shape shape;
  size_t begin = 0;
  size_t end = 0;
};

// An open safetensors file. open() validates the whole header before any tensor data is touched:
// header length within the file and under 100 MB, valid JSON, known dtypes (F32, F16, BF16;
// others are refused by name), non-negative shapes, offsets inside the data section, in order,
// not overlapping, and each tensor's byte size equal to numel * dtype size. Every error names
// the file and, where there is one, the tensor. Thread-safe once open.
//
// "Refused by name" in detail: a dtype string safetensors does not define is an error at open();
// a defined one sdstack does not read (I64, F64, U8, BOOL, F8_*, ...) is validated and listed in
// unreadable_tensors(), and refused when a caller asks for that tensor (see
// unreadable_tensor_error), because real checkpoints carry such buffers next to the weights.
class SafetensorsFile {
 public:
  static base::Result<std::shared_ptr<SafetensorsFile>> open(const std::string& path);

  const std::string& path() const;
  // In the order of their offsets in the file.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // nullptr when absent.
  const TensorInfo* find(const std::string& name) const;
  // A read-only view into the mapping; it keeps the file mapped while it lives.
  Tensor tensor(const TensorInfo& info) const;
  // Drops the pages holding this tensor's bytes from the process's memory (madvise DONTNEED),
  // for a caller that has copied the tensor into its own buffers. Views stay valid: a later read
  // faults the pages back in from the file. Pages shared with a neighbouring tensor go too (they
  // come back the same way). Without it every mapped page read while loading stays resident, next
  // to its converted copy, until the file is unmapped.
  void release(const TensorInfo& info) const;

  // Tensors in dtypes sdstack does not read, in the order of their offsets.
  const std::vector<UnreadableTensor>& unreadable_tensors() const { return unreadable_; }
  // nullptr when absent (or when the tensor is readable).
  const UnreadableTensor* find_unreadable(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::shared_ptr<base::MappedFile> file_;
  size_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::vector<UnreadableTensor> unreadable_;
  std::map<std::string, size_t> unreadable_index_;
  std::map<std::string, std::string> metadata_;
};

// "FILE: tensor 'x' has dtype I64; sdstack reads F32, F16 and BF16 tensors only" (kUnsupported).
// `file` is how the caller names the file in messages.
base::Status unreadable_tensor_error(const std::string& file, const UnreadableTensor& info);

// Writes the named tensors (any dtype, any strides) as a safetensors file, atomically: the
// data is streamed to a temporary file in the same folder, flushed and renamed over `path`.
// Each tensor keeps its dtype. As the reference writer does, the header is padded with spaces
// to a multiple of 8 bytes and the data is laid out contiguously, larger dtypes first and then
// by name, so every tensor is aligned to its element size. Duplicate names are an error.
base::Status write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

}  // namespace sdstack::io
