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

// An open safetensors file. open() validates the whole header before any tensor data is touched:
// header length within the file and under 100 MB, valid JSON, known dtypes (F32, F16, BF16;
// others are refused by name), non-negative shapes, offsets inside the data section, in order,
// not overlapping, and each tensor's byte size equal to numel * dtype size. Every error names
// the file and, where there is one, the tensor. Thread-safe once open.
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

 private:
  SafetensorsFile() = default;
  std::shared_ptr<base::MappedFile> file_;
  size_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes the named tensors (any dtype, any strides) as a safetensors file, atomically.
base::Status write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

}  // namespace sdstack::io
