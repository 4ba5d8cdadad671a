// The plain-loop reference ops: obviously-correct f32 implementations of every Backend op, the
// oracle the fast backends are tested against. Slow by design; do not use them in a model.
//
// Conventions (those of backend/backend.h):
//  - Activations are f32 and contiguous; NHWC for images ([N, H, W, C]), [B, L, C] for sequences.
//  - Every op writes into a caller-provided, preallocated, contiguous f32 output `y` of the exact
//    output shape; shape mismatches are programmer errors and assert.
//  - Weights and biases may be any dtype and are converted to f32 on the way in.
//  - Sums (dot products, convolutions, norms, softmax) accumulate in double and round to f32 once,
//    so that the oracle's own rounding error is far below any fast backend's.
//  - Where an op says "y may alias x", it reads everything it needs from x before writing y.
// Thread-compatible: no shared state; each call is single-threaded.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace sdstack::tensor::ref {

// Scalar activations, computed in double.
double silu(double x);        // x * sigmoid(x)
double gelu(double x);        // 0.5 x (1 + erf(x / sqrt(2))), the exact form (torch's default)
double quick_gelu(double x);  // x * sigmoid(1.702 x) (CLIP's)

// Zeros added on each side of an image before a convolution.
struct Padding2d {
  int64_t top = 0, left = 0, bottom = 0, right = 0;
};

// Convolution with zero padding, the same on all four sides or given per side.
// x: [N, H, W, Cin]; weight: [Cout, Cin, kh, kw] (torch's OIHW, any dtype); bias: [Cout] or undefined;
// y: [N, Ho, Wo, Cout] with Ho = (H + top + bottom - kh) / stride + 1, Wo = (W + left + right - kw) / stride + 1.
void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride, int64_t padding, Tensor& y);
void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride, const Padding2d& padding,
            Tensor& y);

// y = x W^T + bias. x: [..., K]; weight: [N, K] (any dtype); bias: [N] or undefined; y: [..., N].
void linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y);

// Batched matmul: y[i] = alpha * a[i] @ (transpose_b ? b[i]^T : b[i]).
// a: [B, M, K]; b: [B, K, N], or [B, N, K] when transposed; y: [B, M, N].
void matmul(const Tensor& a, const Tensor& b, Tensor& y, bool transpose_b = false, float alpha = 1.0f);

// Group norm as torch computes it (biased variance, eps inside the sqrt), then SiLU if `fuse_silu`.
// x, y: [N, H, W, C] with C divisible by `groups`; group g holds channels [g C/G, (g+1) C/G) over all
// H x W positions. gamma, beta: [C]. y may alias x.
void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups, float eps, bool fuse_silu,
                Tensor& y);

// Layer norm over the last dim (biased variance, eps inside the sqrt). x, y: [..., C]; gamma, beta: [C].
// y may alias x.
void layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, Tensor& y);

// Softmax over the last dim, max-subtracted. x, y: [..., C]. y may alias x.
void softmax(const Tensor& x, Tensor& y);

// Multi-head scaled dot-product attention with heads interleaved in the channels (head h uses
// channels [h D, (h+1) D)). q: [B, Lq, H*D]; k, v: [B, Lk, H*D]; y: [B, Lq, H*D].
// y = softmax(q k^T / sqrt(D)) v per batch and head; `causal` masks key j > query i.
void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal, Tensor& y);

// Elementwise activations; x and y of one shape. y may alias x.
void silu(const Tensor& x, Tensor& y);
void gelu(const Tensor& x, Tensor& y);
void quick_gelu(const Tensor& x, Tensor& y);

// GEGLU as diffusers computes it: x: [..., 2F] -> (h = x[..., :F], gate = x[..., F:]);
// y: [..., F] = h * gelu(gate).
void geglu(const Tensor& x, Tensor& y);

// y = a + b and y = a * b. b has a's shape or the shape of a's trailing dims (broadcast over the
// leading ones: a bias [C] over [N, H, W, C]). y has a's shape and may alias a.
void add(const Tensor& a, const Tensor& b, Tensor& y);
void mul(const Tensor& a, const Tensor& b, Tensor& y);

// y = x * factor, elementwise. y may alias x.
void scale(const Tensor& x, float factor, Tensor& y);

// Nearest-neighbour 2x upsampling: x: [N, H, W, C] -> y: [N, 2H, 2W, C].
void upsample_nearest2x(const Tensor& x, Tensor& y);

// Concatenation along the last dim: a: [..., Ca], b: [..., Cb] -> y: [..., Ca + Cb].
void concat_last(const Tensor& a, const Tensor& b, Tensor& y);

}  // namespace sdstack::tensor::ref
