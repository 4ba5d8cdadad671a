// What the CPU backend's files share: the oneDNN engine and stream, the compute dtype and its bf16
// scratch, the matmul primitive cache, and the own kernels that cpu_backend.cc dispatches to.
#pragma once

#include <cstdint>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>

#include "backend/backend.h"

namespace sdstack::backend::cpu {

// bf16 buffers that grow to the largest request and are then reused: the bf16 copies of f32
// activations that convolutions, linears, matmuls and attention read in bf16 compute. Shared by
// every layer of a backend rather than owned per layer, since ops run one at a time and per-layer
// copies would add up to the sum of all layers' inputs (hundreds of MB for the VAE at 512 px).
class Bf16Scratch {
 public:
  // What each op uses a slot for; an op may use several slots at once, never one twice.
  enum class Slot { kSrc, kOperand, kValues, kProbabilities };
  // At least `count` elements, 64-byte aligned; valid until the next get() of the same slot.
  uint16_t* get(Slot slot, int64_t count);
  // The same for `count` floats (f32 compute's gathered inputs): a slot holds one kind at a time.
  float* get_f32(Slot slot, int64_t count) { return reinterpret_cast<float*>(get(slot, 2 * count)); }

 private:
  Tensor buffers_[4];  // one per Slot
};

// One engine and one in-order stream, shared by the backend and the layers it makes (which may
// outlive the backend object). oneDNN runs its primitives on the OpenMP pool we use too.
struct OneDnn {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  // What convolutions, linears, matmuls and attention read their operands in: f32, or bf16 (with
  // f32 accumulation and f32 outputs). Activations in memory stay f32 either way.
  DType compute_dtype = DType::kF32;
  Bf16Scratch scratch;
};

// oneDNN's data type for ours.
dnnl::memory::data_type dnnl_type(DType dtype);
// oneDNN descriptors for plain memory of `dtype` with explicit strides (in elements) or a tag.
dnnl::memory::desc plain_desc(DType dtype, const dnnl::memory::dims& dims, const dnnl::memory::dims& strides);
dnnl::memory::desc plain_desc(DType dtype, const dnnl::memory::dims& dims, dnnl::memory::format_tag tag);

// y = x rounded to bf16 (nearest even, as tensor::f32_to_bf16), for `count` floats, in parallel.
void convert_to_bf16(const float* x, uint16_t* y, int64_t count);
// `x` (f32, or already in the compute dtype) as the compute dtype's operand: x itself when it is
// in the compute dtype, else a bf16 copy in `slot`.
const void* compute_operand(OneDnn& onednn, const Tensor& x, Bf16Scratch::Slot slot);

// Appends `activation` as a oneDNN eltwise post-op (nothing for kNone).
void append_activation(dnnl::post_ops& ops, Activation activation);

// Weights as `source` (a plain f32 or bf16 memory) reordered once into each layout a primitive asks for.
// After the first reorder the plain copy is dropped: later layouts are reordered from the first.
class PreparedWeights {
 public:
  PreparedWeights(std::shared_ptr<OneDnn> onednn, dnnl::memory source);
  // The weights in layout `desc`, reordering on first request.
  const dnnl::memory& get(const dnnl::memory::desc& desc);
  // The weights reordered (and converted) into `to`, a plain f32 copy say; nothing is kept.
  void copy_to(dnnl::memory to);

 private:
  std::shared_ptr<OneDnn> onednn_;
  dnnl::memory source_;                 // valid until the first reorder
  std::vector<dnnl::memory> prepared_;  // one per distinct layout asked for
};

// Strided batched matmuls dst = alpha * src @ weights on plain (possibly non-dense) memory whose
// dtypes the descriptors say, with the primitive created once per distinct (descriptors, alpha).
class MatmulCache {
 public:
  explicit MatmulCache(std::shared_ptr<OneDnn> onednn) : onednn_(std::move(onednn)) {}
  void run(const dnnl::memory::desc& src, const void* src_data, const dnnl::memory::desc& weights,
           const void* weights_data, const dnnl::memory::desc& dst, void* dst_data, float alpha);
  OneDnn& onednn() { return *onednn_; }

 private:
  struct Entry {
    dnnl::memory::desc src, weights, dst;
    float alpha;
    dnnl::matmul primitive;
  };
  std::shared_ptr<OneDnn> onednn_;
  std::vector<Entry> entries_;  // few distinct shapes per model: a linear search is enough
};

// Layers computing in onednn->compute_dtype.
std::unique_ptr<Conv2d> make_onednn_conv2d(std::shared_ptr<OneDnn> onednn, const Tensor& weight, const Tensor& bias,
                                           const Conv2dParams& params);
std::unique_ptr<Linear> make_onednn_linear(std::shared_ptr<OneDnn> onednn, const Tensor& weight, const Tensor& bias);

// Batched matmul through `cache` (see Backend::matmul).
void batched_matmul(MatmulCache& cache, const Tensor& a, const Tensor& b, Tensor& y, bool transpose_b, float alpha);
// Multi-head attention (see Backend::attention): flash_attention_amx in bf16 compute on AMX, else
// flash_attention on AVX-512 builds (f32, and bf16 with D <= 512, in bf16_flash_kernel()), else
// attention_matmuls through `cache`. `scores` is scratch the f32 kernels may grow.
void attention(MatmulCache& cache, const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal,
               std::vector<float>& scores, Tensor& y);
// Per tile of queries, scores and P v as oneDNN batched matmuls in the compute dtype, an own f32
// softmax between them: a score tile of up to 64 MB in memory. In bf16 the probabilities are
// rounded as flash_attention_amx rounds them.
void attention_matmuls(MatmulCache& cache, const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads,
                       bool causal, std::vector<float>& scores, Tensor& y);
// Fused (flash) attention in bf16 on AMX (attention_amx.cc says how it rounds): k and v rounded
// to bf16 into onednn's scratch, then tiles of 32 queries against chunks of 64 keys on the OpenMP
// pool. Returns false, having done nothing, where it cannot run: a build or CPU without AMX (or a
// kernel that refuses its tile state), or D > 512.
bool flash_attention_amx(OneDnn& onednn, const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal,
                         Tensor& y);
#if defined(__AVX512F__)
// The arithmetic of flash_attention's kernel:
//  - kF32: f32 FMAs on f32 q, k and v.
//  - kBf16Widened, kBf16Pairs: what flash_attention_amx computes, for CPUs without AMX (q, k, v
//    and the probabilities rounded to bf16 as there; f32 accumulation in another order), as f32
//    FMAs on the bf16 values widened, or (AVX512-BF16 builds only) as vdpbf16ps on pairs of bf16
//    values: two FMAs' work per instruction. The two give the same numbers up to the order of
//    their f32 sums.
enum class FlashKernel { kF32, kBf16Widened, kBf16Pairs };
// The bf16 kernel that runs faster on this CPU: kBf16Pairs where vdpbf16ps runs at the FMA's rate
// (AMD), else kBf16Widened.
FlashKernel bf16_flash_kernel();
// Fused (flash) attention on AVX-512: keys and values streamed in tiles past 64 queries at a time,
// an online softmax, no score matrix in memory. Runs on the OpenMP pool. `packed` is scratch it
// grows to 2 * k.numel() floats (head-major copies of k and v), plus q.numel() in bf16. In the bf16
// kernels q, k, v and y may be bf16 (y only for D <= 512).
void flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal, FlashKernel kernel,
                     std::vector<float>& packed, Tensor& y);
#endif

// Own kernels over contiguous f32 (in place where the Backend interface allows aliasing).
void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups, float eps,
                Activation activation, Tensor& y);
void layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, Tensor& y);
void softmax_rows(const float* x, float* y, int64_t rows, int64_t cols);
void activation(const Tensor& x, Activation activation, Tensor& y);
void geglu(const Tensor& x, Tensor& y);
void add(const Tensor& a, const Tensor& b, Tensor& y);
void mul(const Tensor& a, const Tensor& b, Tensor& y);
void scale(const Tensor& x, float scale, Tensor& y);
void upsample_nearest2x(const Tensor& x, Tensor& y);
void concat_last(const Tensor& a, const Tensor& b, Tensor& y);
// y = x for `bytes` bytes, in parallel.
void parallel_copy(const void* x, void* y, int64_t bytes);

}  // namespace sdstack::backend::cpu
