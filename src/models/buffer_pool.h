// Large activation buffers reused across the ops of a model's calls (the VAE decoder's 67-268 MB
// tensors at 512 px), so that each is page-faulted once rather than once per op.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tensor/tensor.h"

namespace sdstack::models {

// Hands out tensors (f32, or bf16 operands) over pooled buffers; a buffer is free again once no tensor handed out
// over it is alive (the tensors keep it alive themselves, so they may outlive a use, never the
// data). Small tensors, under kMinPooledBytes, come from Tensor::empty: the heap reuses those
// already, while glibc maps each allocation above 32 MB fresh and the kernel then faults in and
// zeroes every page of it on first touch (~35 ms per 134 MB on the build machine, a third
// of a group norm's time). The buffers are freed with the pool. Not thread-safe.
class BufferPool {
 public:
  static constexpr size_t kMinPooledBytes = size_t{16} << 20;

  // An uninitialised contiguous tensor of `shape` and `dtype`: over the smallest free buffer that
  // holds it, else over a new buffer of exactly its size (freeing the free buffers smaller than it).
  tensor::Tensor empty(const tensor::Shape& shape, tensor::DType dtype = tensor::DType::kF32);

  size_t pooled_bytes() const;

 private:
  std::vector<std::shared_ptr<tensor::Tensor>> buffers_;  // 1-D f32, each owned by the pool
};

// pool->empty(shape, dtype) with a pool, else Tensor::empty(shape, dtype): what blocks shared with
// models that run without a pool call.
tensor::Tensor empty_activation(BufferPool* pool, const tensor::Shape& shape,
                                tensor::DType dtype = tensor::DType::kF32);

}  // namespace sdstack::models
