// Tensor: a shape, strides and dtype over shared storage that is owned (aligned heap) or borrowed
// (a memory-mapped weight file kept alive by the tensor).
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace sdstack::tensor {

using Shape = std::vector<int64_t>;

// The bytes behind one or more tensors. Owning storage is 64-byte aligned (what AVX-512 and
// oneDNN like); borrowed storage points into memory kept alive by `keepalive`.
class Storage {
 public:
  static std::shared_ptr<Storage> allocate(size_t bytes);
  static std::shared_ptr<Storage> borrow(std::shared_ptr<const void> keepalive, const void* data, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  bool is_owned() const { return owned_; }

 private:
  Storage() = default;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  bool owned_ = false;
  std::shared_ptr<const void> keepalive_;
};

// A view of storage. Copying a Tensor copies the view, not the data (like torch.Tensor).
// Strides are in elements. Activations use NHWC ([N, H, W, C], C fastest), the layout the
// convolutions want; weights keep their checkpoint layout until a backend prepares them.
// Not thread-safe to mutate the same tensor from several threads without coordination.
class Tensor {
 public:
  Tensor() = default;

  // New contiguous tensor, uninitialised / zero-filled.
  static Tensor empty(const Shape& shape, DType dtype = DType::kF32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::kF32);
  // Contiguous f32 tensor holding `values` (its size must equal the shape's element count).
  static Tensor from_vector(const Shape& shape, const std::vector<float>& values);
  // A contiguous view of borrowed memory (an mmap'd file, say); read-only by contract.
  static Tensor borrow(std::shared_ptr<const void> keepalive, const void* data, const Shape& shape, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim(int i) const { return shape_[static_cast<size_t>(i < 0 ? i + rank() : i)]; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const;
  DType dtype() const { return dtype_; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  std::string shape_string() const;

  // Inline: kernels take these inside loops, where a call would clobber every vector register.
  void* raw_data() {
    assert(defined());
    return static_cast<uint8_t*>(storage_->data()) + offset_;
  }
  const void* raw_data() const {
    assert(defined());
    return static_cast<const uint8_t*>(storage_->data()) + offset_;
  }
  // Typed pointers; the dtype must match (f32 for float, f16/bf16 for uint16_t).
  template <typename T> T* data() { return static_cast<T*>(raw_data()); }
  template <typename T> const T* data() const { return static_cast<const T*>(raw_data()); }

  // A view with another shape over the same contiguous data (one dim may be -1).
  Tensor reshape(const Shape& shape) const;
  // The sub-tensor [start, start+length) along dim 0, sharing storage.
  Tensor slice0(int64_t start, int64_t length) const;
  // A contiguous copy (of any view).
  Tensor contiguous() const;
  // A contiguous copy converted to `dtype` (a plain copy when it already is that dtype).
  Tensor to(DType dtype) const;
  // The values as f32, in row-major order of the shape (any dtype, any strides).
  std::vector<float> to_vector() const;
  // Element at a multi-index, converted to f32 (for tests and debugging, not hot paths).
  float at(const Shape& index) const;

  // Copies `src` (same shape; any dtype and strides) into this tensor.
  void copy_from(const Tensor& src);
  void fill(float value);

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // in bytes
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::kF32;
};

// Contiguous strides for a shape.
Shape contiguous_strides(const Shape& shape);
int64_t shape_numel(const Shape& shape);

}  // namespace sdstack::tensor
