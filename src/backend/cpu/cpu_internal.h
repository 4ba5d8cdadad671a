// What the CPU backend's files share: the oneDNN engine and stream, the matmul primitive cache,
// and the own kernels that cpu_backend.cc dispatches to.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "backend/backend.h"

namespace sdstack::backend::cpu {

// One engine and one in-order stream, shared by the backend and the layers it makes (which may
// outlive the backend object). oneDNN runs its primitives on the OpenMP pool we use too.
struct OneDnn {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};

// oneDNN descriptors for plain f32 memory with explicit strides (in elements).
dnnl::memory::desc f32_desc(const dnnl::memory::dims& dims, const dnnl::memory::dims& strides);
dnnl::memory::desc f32_desc(const dnnl::memory::dims& dims, dnnl::memory::format_tag tag);

// Appends `activation` as a oneDNN eltwise post-op (nothing for kNone).
void append_activation(dnnl::post_ops& ops, Activation activation);

// Weights as `source` (a plain f32 memory) reordered once into each layout a primitive asks for.
// After the first reorder the plain copy is dropped: later layouts are reordered from the first.
class PreparedWeights {
 public:
  PreparedWeights(std::shared_ptr<OneDnn> onednn, dnnl::memory source);
  // The weights in layout `desc`, reordering on first request.
  const dnnl::memory& get(const dnnl::memory::desc& desc);

 private:
  std::shared_ptr<OneDnn> onednn_;
  dnnl::memory source_;                 // valid until the first reorder
  std::vector<dnnl::memory> prepared_;  // one per distinct layout asked for
};

// Strided batched matmuls dst = alpha * src @ weights on plain (possibly non-dense) f32 memory,
// with the primitive created once per distinct (descriptors, alpha) and reused.
class MatmulCache {
 public:
  explicit MatmulCache(std::shared_ptr<OneDnn> onednn) : onednn_(std::move(onednn)) {}
  void run(const dnnl::memory::desc& src, const float* src_data, const dnnl::memory::desc& weights,
           const float* weights_data, const dnnl::memory::desc& dst, float* dst_data, float alpha);

 private:
  struct Entry {
    dnnl::memory::desc src, weights, dst;
    float alpha;
    dnnl::matmul primitive;
  };
  std::shared_ptr<OneDnn> onednn_;
  std::vector<Entry> entries_;  // few distinct shapes per model: a linear search is enough
};

std::unique_ptr<Conv2d> make_onednn_conv2d(std::shared_ptr<OneDnn> onednn, const Tensor& weight, const Tensor& bias,
                                           const Conv2dParams& params);
std::unique_ptr<Linear> make_onednn_linear(std::shared_ptr<OneDnn> onednn, const Tensor& weight, const Tensor& bias);

// Batched matmul through `cache` (see Backend::matmul).
void batched_matmul(MatmulCache& cache, const Tensor& a, const Tensor& b, Tensor& y, bool transpose_b, float alpha);
// Multi-head attention through `cache` (see Backend::attention); `scores` is scratch it may grow.
void attention(MatmulCache& cache, const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal,
               std::vector<float>& scores, Tensor& y);

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
// y = x for `count` floats, in parallel.
void parallel_copy(const float* x, float* y, int64_t count);

}  // namespace sdstack::backend::cpu
