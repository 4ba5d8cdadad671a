// oneDNN plumbing shared by the CPU backend: plain f32 descriptors, activation post-ops, weights
// reordered once per layout, and the cache of strided matmul primitives.
#include <cassert>

#include "backend/cpu/cpu_internal.h"

namespace sdstack::backend::cpu {

using dnnl::memory;

memory::desc f32_desc(const memory::dims& dims, const memory::dims& strides) {
  return memory::desc(dims, memory::data_type::f32, strides);
}

memory::desc f32_desc(const memory::dims& dims, memory::format_tag tag) {
  return memory::desc(dims, memory::data_type::f32, tag);
}

void append_activation(dnnl::post_ops& ops, Activation activation) {
  switch (activation) {
    case Activation::kNone:
      break;
    case Activation::kSiLU:  // swish(x, alpha) = x * sigmoid(alpha x)
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_swish, 1.0f, 0.0f);
      break;
    case Activation::kGELU:
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
      break;
    case Activation::kQuickGELU:
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_swish, 1.702f, 0.0f);
      break;
  }
}

PreparedWeights::PreparedWeights(std::shared_ptr<OneDnn> onednn, memory source)
    : onednn_(std::move(onednn)), source_(std::move(source)) {}

const memory& PreparedWeights::get(const memory::desc& desc) {
  for (const memory& m : prepared_) {
    if (m.get_desc() == desc) return m;
  }
  // The plain copy if we still have it, else the first prepared layout (any layout reorders to any).
  memory from = prepared_.empty() ? source_ : prepared_.front();  // a handle, not a copy of the data
  memory to(desc, onednn_->engine);
  dnnl::reorder(from, to).execute(onednn_->stream, from, to);
  onednn_->stream.wait();
  prepared_.push_back(to);
  // Keeping the plain f32 copy would double the weights' memory (3.4 GB for SD's UNet).
  source_ = memory();
  return prepared_.back();
}

void MatmulCache::run(const memory::desc& src, const float* src_data, const memory::desc& weights,
                      const float* weights_data, const memory::desc& dst, float* dst_data, float alpha) {
  const Entry* entry = nullptr;
  for (const Entry& e : entries_) {
    if (e.alpha == alpha && e.src == src && e.weights == weights && e.dst == dst) {
      entry = &e;
      break;
    }
  }
  if (entry == nullptr) {
    dnnl::primitive_attr attr;
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights, dst), attr, onednn_->engine);
    entries_.push_back(Entry{src, weights, dst, alpha, dnnl::matmul(pd)});
    entry = &entries_.back();
  }
  // oneDNN's memory objects want non-const pointers; these inputs are only read.
  memory src_mem(src, onednn_->engine, const_cast<float*>(src_data));
  memory weights_mem(weights, onednn_->engine, const_cast<float*>(weights_data));
  memory dst_mem(dst, onednn_->engine, dst_data);
  entry->primitive.execute(onednn_->stream,
                           {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, weights_mem}, {DNNL_ARG_DST, dst_mem}});
  onednn_->stream.wait();
}

}  // namespace sdstack::backend::cpu
