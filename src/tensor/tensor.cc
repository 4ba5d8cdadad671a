// Tensor and Storage.
#include "tensor/tensor.h"

#include <cassert>
#include <cstdlib>
#include <cstring>
#include <new>

#include "base/strings.h"

namespace sdstack::tensor {

std::shared_ptr<Storage> Storage::allocate(size_t bytes) {
  std::shared_ptr<Storage> storage(new Storage());
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  storage->data_ = std::aligned_alloc(64, rounded);
  if (storage->data_ == nullptr) throw std::bad_alloc();
  storage->bytes_ = bytes;
  storage->owned_ = true;
  return storage;
}

std::shared_ptr<Storage> Storage::borrow(std::shared_ptr<const void> keepalive, const void* data, size_t bytes) {
  std::shared_ptr<Storage> storage(new Storage());
  storage->data_ = const_cast<void*>(data);
  storage->bytes_ = bytes;
  storage->owned_ = false;
  storage->keepalive_ = std::move(keepalive);
  return storage;
}

Storage::~Storage() {
  if (owned_) std::free(data_);
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  for ([[maybe_unused]] int64_t d : shape) assert(d >= 0);
  Tensor t;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.storage_ = Storage::allocate(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& values) {
  assert(static_cast<int64_t>(values.size()) == shape_numel(shape));
  Tensor t = empty(shape, DType::kF32);
  std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::borrow(std::shared_ptr<const void> keepalive, const void* data, const Shape& shape, DType dtype) {
  Tensor t;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.storage_ = Storage::borrow(std::move(keepalive), data, static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
  return t;
}

int64_t Tensor::numel() const { return shape_numel(shape_); }

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

std::string Tensor::shape_string() const { return base::shape_to_string(shape_); }

Tensor Tensor::reshape(const Shape& shape) const {
  assert(is_contiguous());
  Shape resolved = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < resolved.size(); ++i) {
    if (resolved[i] == -1) {
      assert(infer < 0);
      infer = static_cast<int>(i);
    } else {
      known *= resolved[i];
    }
  }
  if (infer >= 0) resolved[static_cast<size_t>(infer)] = known == 0 ? 0 : numel() / known;
  assert(shape_numel(resolved) == numel());
  Tensor t = *this;
  t.shape_ = resolved;
  t.strides_ = contiguous_strides(resolved);
  return t;
}

Tensor Tensor::slice0(int64_t start, int64_t length) const {
  assert(rank() >= 1 && start >= 0 && length >= 0 && start + length <= shape_[0]);
  Tensor t = *this;
  t.offset_ += static_cast<size_t>(start * strides_[0]) * dtype_size(dtype_);
  t.shape_[0] = length;
  return t;
}

namespace {

// Calls fn(element_offset_in_src, linear_index) for every element of a strided view, in row-major order.
template <typename Fn>
void for_each_offset(const Shape& shape, const Shape& strides, Fn fn) {
  int64_t total = shape_numel(shape);
  if (total == 0) return;
  Shape index(shape.size(), 0);
  int64_t offset = 0;
  for (int64_t linear = 0; linear < total; ++linear) {
    fn(offset, linear);
    for (size_t d = shape.size(); d-- > 0;) {
      ++index[d];
      offset += strides[d];
      if (index[d] < shape[d]) break;
      offset -= strides[d] * shape[d];
      index[d] = 0;
    }
  }
}

float load_as_f32(const void* base, DType dtype, int64_t offset) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(base)[offset];
    case DType::kF16: return f16_to_f32(static_cast<const uint16_t*>(base)[offset]);
    case DType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[offset]);
  }
  return 0.0f;
}

}  // namespace

Tensor Tensor::contiguous() const {
  Tensor out = empty(shape_, dtype_);
  out.copy_from(*this);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  Tensor out = empty(shape_, dtype);
  out.copy_from(*this);
  return out;
}

std::vector<float> Tensor::to_vector() const {
  std::vector<float> values(static_cast<size_t>(numel()));
  if (is_contiguous()) {
    convert_to_f32(raw_data(), dtype_, values.data(), values.size());
    return values;
  }
  const void* base = raw_data();
  for_each_offset(shape_, strides_, [&](int64_t offset, int64_t linear) {
    values[static_cast<size_t>(linear)] = load_as_f32(base, dtype_, offset);
  });
  return values;
}

float Tensor::at(const Shape& index) const {
  assert(index.size() == shape_.size());
  int64_t offset = 0;
  for (size_t d = 0; d < index.size(); ++d) offset += index[d] * strides_[d];
  return load_as_f32(raw_data(), dtype_, offset);
}

void Tensor::copy_from(const Tensor& src) {
  assert(src.shape_ == shape_);
  assert(is_contiguous());
  if (src.is_contiguous()) {  // a copy where the dtypes match
    convert(src.raw_data(), src.dtype_, raw_data(), dtype_, static_cast<size_t>(numel()));
    return;
  }
  std::vector<float> values = src.to_vector();
  convert_from_f32(values.data(), raw_data(), dtype_, values.size());
}

void Tensor::fill(float value) {
  assert(is_contiguous());
  size_t n = static_cast<size_t>(numel());
  if (dtype_ == DType::kF32) {
    float* out = data<float>();
    for (size_t i = 0; i < n; ++i) out[i] = value;
    return;
  }
  uint16_t bits = dtype_ == DType::kF16 ? f32_to_f16(value) : f32_to_bf16(value);
  uint16_t* out = data<uint16_t>();
  for (size_t i = 0; i < n; ++i) out[i] = bits;
}

}  // namespace sdstack::tensor
