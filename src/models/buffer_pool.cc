// BufferPool: best-fit reuse of large buffers (held as f32, lent in any dtype).
#include "models/buffer_pool.h"

#include <vector>

namespace sdstack::models {

using tensor::DType;
using tensor::Shape;
using tensor::Tensor;

Tensor BufferPool::empty(const Shape& shape, DType dtype) {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  const size_t bytes = static_cast<size_t>(count) * tensor::dtype_size(dtype);
  if (bytes < kMinPooledBytes) return Tensor::empty(shape, dtype);
  std::shared_ptr<Tensor> best;
  for (const std::shared_ptr<Tensor>& buffer : buffers_) {
    // use_count 1: only the pool holds it, no tensor over it is alive.
    if (buffer.use_count() == 1 && buffer->nbytes() >= bytes &&
        (best == nullptr || buffer->nbytes() < best->nbytes())) {
      best = buffer;
    }
  }
  if (best == nullptr) {
    // Free buffers too small for this request go first: the decoder's activations only grow, so
    // those of a coarser level would never be used again and would add to the peak memory.
    std::erase_if(buffers_, [bytes](const std::shared_ptr<Tensor>& buffer) {
      return buffer.use_count() == 1 && buffer->nbytes() < bytes;
    });
    best = std::make_shared<Tensor>(Tensor::empty({static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))}));
    buffers_.push_back(best);
  }
  // The tensor borrows the pool's (writable) buffer and keeps it alive, which marks it in use.
  return Tensor::borrow(best, best->raw_data(), shape, dtype);
}

size_t BufferPool::pooled_bytes() const {
  size_t bytes = 0;
  for (const std::shared_ptr<Tensor>& buffer : buffers_) bytes += buffer->nbytes();
  return bytes;
}

Tensor empty_activation(BufferPool* pool, const Shape& shape, DType dtype) {
  return pool != nullptr ? pool->empty(shape, dtype) : Tensor::empty(shape, dtype);
}

}  // namespace sdstack::models
