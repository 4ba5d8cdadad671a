// The Backend interface: every op Stable Diffusion 1.x needs, one implementation per device.
//
// Conventions shared by every backend:
//  - Activations are NHWC ([N, H, W, C], channels fastest); sequences are [B, L, C].
//  - Ops write into a caller-provided, preallocated, contiguous output tensor `y`, so that a model
//    can plan and reuse its buffers. Unless an op says otherwise, `y` may not alias an input.
//  - Inputs are contiguous; activations are f32 in memory. With compute_dtype bf16 (CPU backend),
//    convolutions, linears and matmuls round their inputs to bf16 and accumulate in f32.
//  - Operands: convolutions, linears and attention also take their inputs in operand_dtype(), and
//    the ops that feed them (group norm, layer norm, GEGLU, 2x upsampling, linears without a
//    residual, attention) may write y in it; GEGLU also reads x in it. In bf16 compute that is
//    bf16: the same numbers the consumer would have rounded to, without the rounding pass and at
//    half the memory traffic. A convolution or linear with a residual may also write y in it, from
//    a residual in it (a model that keeps its residual stream in bf16, as the VAE does).
//    Everything else (elementwise ops) is f32.
//  - Weights come in their checkpoint layout and dtype (torch's OIHW conv weights, [out, in]
//    linear weights, f16/bf16/f32) and are prepared once by make_conv2d/make_linear.
//  - A backend object is used by one thread at a time; it parallelises inside each op.
#pragma once

#include <memory>
#include <string>

#include "base/status.h"
#include "tensor/tensor.h"

namespace sdstack::backend {

using tensor::DType;
using tensor::Shape;
using tensor::Tensor;

// Elementwise activations, also fused into convolutions, linears and group norm.
enum class Activation {
  kNone,
  kSiLU,       // x * sigmoid(x)
  kGELU,       // x * Phi(x), the exact erf form (torch's default)
  kQuickGELU,  // x * sigmoid(1.702 x) (CLIP's)
};

struct Conv2dParams {
  int64_t stride = 1;
  int64_t padding = 0;  // zeros on all four sides (torch's Conv2d `padding`)
  // Extra zeros on single sides, added to `padding` (torch's F.pad before the conv). diffusers'
  // Downsample2D with padding 0 (the VAE encoder's) pads F.pad(x, (0, 1, 0, 1)): one more row at
  // the bottom and one more column at the right, then a stride-2 conv.
  int64_t extra_top = 0;
  int64_t extra_left = 0;
  int64_t extra_bottom = 0;
  int64_t extra_right = 0;

  int64_t pad_top() const { return padding + extra_top; }
  int64_t pad_left() const { return padding + extra_left; }
  int64_t pad_bottom() const { return padding + extra_bottom; }
  int64_t pad_right() const { return padding + extra_right; }
  // The output's height and width for an input of `height` x `width` and a `kernel` x `kernel` window.
  int64_t out_height(int64_t height, int64_t kernel) const {
    return (height + pad_top() + pad_bottom() - kernel) / stride + 1;
  }
  int64_t out_width(int64_t width, int64_t kernel) const {
    return (width + pad_left() + pad_right() - kernel) / stride + 1;
  }
};

// What a convolution adds after the convolution itself, in this order:
//   y = act( conv(x) + bias + extra_bias + residual_scale * residual )
struct Conv2dExtras {
  Tensor extra_bias;  // [Cout] f32, or undefined; e.g. the time embedding, shared by the batch
  Tensor residual;    // [N, Ho, Wo, Cout] like y and in y's dtype, or undefined; may alias y
  float residual_scale = 1.0f;
  Activation activation = Activation::kNone;
};

// A convolution whose weights a backend has prepared (reordered, converted) once.
class Conv2d {
 public:
  virtual ~Conv2d() = default;
  // x: [N, H, W, Cin], f32 or the backend's operand dtype; y: [N, Ho, Wo, Cout] with
  // Ho = params().out_height(H, k), Wo = params().out_width(W, k), f32 or the operand dtype (the
  // result, residual included, rounded once).
  virtual void run(const Tensor& x, Tensor& y, const Conv2dExtras& extras = {}) = 0;
  // y = this convolution of x upsampled 2x by nearest neighbour (each pixel repeated 2x2), as
  // diffusers' Upsample2D: x [N, H, W, Cin] (f32 or the operand dtype), y as run() gives for a
  // [N, 2H, 2W, Cin] input. `scratch` is f32 memory of y's size the backend may use during the
  // call. The CPU backend runs a 3x3, stride 1, padding 1 convolution as four 2x2 convolutions on
  // x, one per parity of the output pixel (4/9 of the work), and interleaves their outputs into y.
  virtual void run_upsampled2x(const Tensor& x, Tensor& y, Tensor& scratch) = 0;
  virtual int64_t in_channels() const = 0;
  virtual int64_t out_channels() const = 0;
  virtual int64_t kernel_size() const = 0;
  virtual const Conv2dParams& params() const = 0;
};

// What a linear layer adds after x W^T, in this order: y = act(x W^T + bias) + residual.
struct LinearExtras {
  Activation activation = Activation::kNone;
  Tensor residual;  // shaped like y and in y's dtype, or undefined; may alias y
};

// y = x W^T + b with weights prepared once.
class Linear {
 public:
  virtual ~Linear() = default;
  // x: [..., in_features], f32 or the backend's operand dtype; y: [..., out_features] (same
  // leading dims), f32 or the operand dtype (the result, residual included, rounded once).
  virtual void run(const Tensor& x, Tensor& y, const LinearExtras& extras = {}) = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // The dtype convolutions and linears read their input in without converting it (see the
  // conventions above): kF32 unless the backend computes them in bf16.
  virtual DType operand_dtype() const { return DType::kF32; }

  // weight: [Cout, Cin, k, k] (torch layout, any dtype); bias: [Cout] or undefined.
  virtual std::unique_ptr<Conv2d> make_conv2d(const Tensor& weight, const Tensor& bias, const Conv2dParams& params) = 0;
  // weight: [out, in] (torch layout, any dtype); bias: [out] or undefined.
  virtual std::unique_ptr<Linear> make_linear(const Tensor& weight, const Tensor& bias) = 0;

  // Batched matmul: y[b] = alpha * a[b] @ (transpose_b ? b[b]^T : b[b]).
  // a: [B, M, K]; b: [B, K, N] or [B, N, K] when transposed; y: [B, M, N].
  virtual void matmul(const Tensor& a, const Tensor& b, Tensor& y, bool transpose_b = false, float alpha = 1.0f) = 0;

  // Group norm over NHWC x: [N, H, W, C] (f32 or operand_dtype()), C divisible by `groups`; gamma,
  // beta: [C] f32. The activation (none or SiLU) is fused. y: f32 or operand_dtype(); it may alias
  // an x of its dtype.
  virtual void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups, float eps,
                          Activation activation, Tensor& y) = 0;
  // Layer norm over the last dim of x: [..., C]; gamma, beta: [C] f32. y: f32 (may alias x) or
  // operand_dtype().
  virtual void layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, Tensor& y) = 0;
  // Softmax over the last dim. y may alias x.
  virtual void softmax(const Tensor& x, Tensor& y) = 0;

  // Multi-head scaled dot-product attention, heads interleaved in the channel dim as a linear
  // layer produces them: q: [B, Lq, H*D], k and v: [B, Lk, H*D], y: [B, Lq, H*D];
  // y = softmax(q k^T / sqrt(D) [+ causal mask]) v per batch and head. `causal` masks key j > query i.
  // q, k and v are all f32 or all operand_dtype(); y is either.
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal, Tensor& y) = 0;

  // y = act(x), elementwise. y may alias x.
  virtual void activation(const Tensor& x, Activation activation, Tensor& y) = 0;
  // GEGLU as diffusers computes it: x: [..., 2F] split into (h, gate) along the last dim;
  // y: [..., F] = h * gelu(gate). x and y each f32 or operand_dtype().
  virtual void geglu(const Tensor& x, Tensor& y) = 0;
  // y = a + b and y = a * b. b has a's shape, or the shape of a's trailing dims (broadcast over
  // the leading ones: a bias [C] over [N, H, W, C]). y may alias a.
  virtual void add(const Tensor& a, const Tensor& b, Tensor& y) = 0;
  virtual void mul(const Tensor& a, const Tensor& b, Tensor& y) = 0;
  // y = x * scale, elementwise. y may alias x.
  virtual void scale(const Tensor& x, float scale, Tensor& y) = 0;

  // Nearest-neighbour 2x upsampling: x: [N, H, W, C] -> y: [N, 2H, 2W, C]. x f32, y f32 or
  // operand_dtype(); or both operand_dtype().
  virtual void upsample_nearest2x(const Tensor& x, Tensor& y) = 0;
  // Concatenation along the last dim: a: [..., Ca], b: [..., Cb] -> y: [..., Ca + Cb].
  virtual void concat_last(const Tensor& a, const Tensor& b, Tensor& y) = 0;
};

struct BackendOptions {
  int threads = 0;  // 0: all cores
  // What convolutions, linears, matmuls and attention's two matmuls compute in: kF32, or kBF16 as
  // torch.autocast(bfloat16) does (bf16 inputs and weights, f32 accumulation and outputs; norms,
  // softmax and elementwise ops in f32). Activations in memory stay f32 either way.
  DType compute_dtype = DType::kF32;
};

// "cpu" (oneDNN and own kernels) or "reference" (plain loops: the oracle, slow).
// Errors: an unknown name (listing the valid ones); bf16 on the reference backend, which computes
// in f32 only; bf16 on a CPU without AVX512-BF16 or AMX; any other compute dtype.
base::Result<std::unique_ptr<Backend>> make_backend(const std::string& name, const BackendOptions& options = {});

// Sets the size of the one thread pool (OpenMP, shared with oneDNN). 0 means all cores.
void set_num_threads(int threads);
int num_threads();

}  // namespace sdstack::backend
