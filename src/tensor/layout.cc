// Layout changes between NCHW and NHWC.
#include "tensor/layout.h"

#include <cassert>

namespace sdstack::tensor {
namespace {

// out[n, a, b] = in[n, b, a] for 2-byte or 4-byte elements: the transpose of each [A, B] matrix.
template <typename T>
void transpose_batched(const T* in, T* out, int64_t batch, int64_t rows, int64_t cols) {
  for (int64_t n = 0; n < batch; ++n) {
    const T* src = in + n * rows * cols;
    T* dst = out + n * rows * cols;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
    }
  }
}

Tensor transpose_inner(const Tensor& x, const Shape& out_shape, int64_t rows, int64_t cols) {
  Tensor src = x.is_contiguous() ? x : x.contiguous();
  Tensor out = Tensor::empty(out_shape, x.dtype());
  if (dtype_size(x.dtype()) == 4) {
    transpose_batched(src.data<float>(), out.data<float>(), x.dim(0), rows, cols);
  } else {
    transpose_batched(src.data<uint16_t>(), out.data<uint16_t>(), x.dim(0), rows, cols);
  }
  return out;
}

}  // namespace

Tensor nchw_to_nhwc(const Tensor& x) {
  assert(x.rank() == 4);
  // Each image is a [C, H*W] matrix; NHWC is its transpose [H*W, C].
  return transpose_inner(x, {x.dim(0), x.dim(2), x.dim(3), x.dim(1)}, x.dim(1), x.dim(2) * x.dim(3));
}

Tensor nhwc_to_nchw(const Tensor& x) {
  assert(x.rank() == 4);
  return transpose_inner(x, {x.dim(0), x.dim(3), x.dim(1), x.dim(2)}, x.dim(1) * x.dim(2), x.dim(3));
}

}  // namespace sdstack::tensor
