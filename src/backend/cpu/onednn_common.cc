// oneDNN plumbing shared by the CPU backend: plain descriptors, bf16 operands and their scratch,
// activation post-ops, weights reordered once per layout, and the cache of strided matmul primitives.
#include <cassert>

#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/vec_math.h"

namespace sdstack::backend::cpu {
namespace {

// Floats per parallel iteration of the conversion: memory-bound, so big chunks.
constexpr int64_t kConvertChunk = 16384;

}  // namespace

using dnnl::memory;

memory::data_type dnnl_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return memory::data_type::f32;
    case DType::kF16:
      return memory::data_type::f16;
    case DType::kBF16:
      return memory::data_type::bf16;
  }
  return memory::data_type::undef;
}

memory::desc plain_desc(DType dtype, const memory::dims& dims, const memory::dims& strides) {
  return memory::desc(dims, dnnl_type(dtype), strides);
}

memory::desc plain_desc(DType dtype, const memory::dims& dims, memory::format_tag tag) {
  return memory::desc(dims, dnnl_type(dtype), tag);
}

uint16_t* Bf16Scratch::get(Slot slot, int64_t count) {
  Tensor& buffer = buffers_[static_cast<int>(slot)];
  if (!buffer.defined() || buffer.numel() < count) buffer = Tensor::empty({count}, DType::kBF16);
  return buffer.data<uint16_t>();
}

void convert_to_bf16(const float* x, uint16_t* y, int64_t count) {
  const int64_t chunks = (count + kConvertChunk - 1) / kConvertChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kConvertChunk;
    const int64_t n = begin + kConvertChunk < count ? kConvertChunk : count - begin;
    to_bf16_row(x + begin, y + begin, n);
  }
}

const void* compute_operand(OneDnn& onednn, const Tensor& x, Bf16Scratch::Slot slot) {
  assert(x.is_contiguous() && (x.dtype() == DType::kF32 || x.dtype() == onednn.compute_dtype));
  if (x.dtype() == onednn.compute_dtype) return x.raw_data();
  uint16_t* copy = onednn.scratch.get(slot, x.numel());
  convert_to_bf16(x.data<float>(), copy, x.numel());
  return copy;
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
  memory to(desc, onednn_->engine);
  copy_to(to);
  prepared_.push_back(to);
  // Keeping the plain f32 copy would double the weights' memory (3.4 GB for SD's UNet).
  source_ = memory();
  return prepared_.back();
}

void PreparedWeights::copy_to(memory to) {
  // The plain copy if we still have it, else the first prepared layout (any layout reorders to any).
  memory from = prepared_.empty() ? source_ : prepared_.front();  // a handle, not a copy of the data
  dnnl::reorder(from, to).execute(onednn_->stream, from, to);
  onednn_->stream.wait();
}

void MatmulCache::run(const memory::desc& src, const void* src_data, const memory::desc& weights,
                      const void* weights_data, const memory::desc& dst, void* dst_data, float alpha) {
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
  memory src_mem(src, onednn_->engine, const_cast<void*>(src_data));
  memory weights_mem(weights, onednn_->engine, const_cast<void*>(weights_data));
  memory dst_mem(dst, onednn_->engine, dst_data);
  entry->primitive.execute(onednn_->stream,
                           {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, weights_mem}, {DNNL_ARG_DST, dst_mem}});
  onednn_->stream.wait();
}

}  // namespace sdstack::backend::cpu
