// Linear layers and batched matmuls on oneDNN's matmul: weights reordered once into the
// primitive's preferred layout, bias, activation and residual fused, primitives cached per shape.
// In bf16 compute the operands are bf16 (weights converted once, activations per call unless they
// come in bf16), bias f32, and the output and its residual f32 or bf16.
#include <cassert>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "backend/cpu/cpu_internal.h"

namespace sdstack::backend::cpu {
namespace {

using dnnl::memory;
using tag = memory::format_tag;

// How a linear's residual is fused: not at all, a sum post-op (residual is y itself), or a
// binary add post-op reading the residual tensor (no copy into y first).
enum class ResidualMode { kNone, kSum, kBinaryAdd };

class OneDnnLinear final : public Linear {
 public:
  OneDnnLinear(std::shared_ptr<OneDnn> onednn, const Tensor& weight, const Tensor& bias)
      : onednn_(onednn),
        out_features_(weight.dim(0)),
        in_features_(weight.dim(1)),
        weights_(onednn, plain_weights(*onednn, weight)),
        compute_(onednn->compute_dtype) {
    assert(weight.rank() == 2);
    if (bias.defined()) {
      assert(bias.numel() == out_features_);
      bias_ = bias.to_vector();
    }
  }

  // x: [..., K] flattened to [M, K]; y: [..., N] as [M, N].
  void run(const Tensor& x, Tensor& y, const LinearExtras& extras) override {
    assert(x.is_contiguous() && y.is_contiguous());
    assert(y.dtype() == DType::kF32 || y.dtype() == compute_);
    assert(!extras.residual.defined() || extras.residual.dtype() == y.dtype());
    assert(x.dim(-1) == in_features_ && y.dim(-1) == out_features_);
    const int64_t m = x.numel() / in_features_;
    assert(y.numel() == m * out_features_);
    ResidualMode mode = ResidualMode::kNone;
    if (extras.residual.defined()) {
      assert(extras.residual.numel() == y.numel() && extras.residual.is_contiguous());
      mode = extras.residual.raw_data() == y.raw_data() ? ResidualMode::kSum : ResidualMode::kBinaryAdd;
    }
    const Entry& entry = find_or_create(m, extras.activation, mode, y.dtype());

    const void* x_data = compute_operand(*onednn_, x, Bf16Scratch::Slot::kSrc);
    memory src(entry.primitive_desc.src_desc(), onednn_->engine, const_cast<void*>(x_data));
    memory dst(entry.primitive_desc.dst_desc(), onednn_->engine, y.raw_data());
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, entry.weights}, {DNNL_ARG_DST, dst}};
    if (!bias_.empty()) {
      args[DNNL_ARG_BIAS] = memory(entry.primitive_desc.bias_desc(), onednn_->engine, bias_.data());
    }
    if (mode == ResidualMode::kBinaryAdd) {
      const int post_op = extras.activation == Activation::kNone ? 0 : 1;  // after the activation
      args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(post_op) | DNNL_ARG_SRC_1] =
          memory(entry.primitive_desc.dst_desc(), onednn_->engine, const_cast<void*>(extras.residual.raw_data()));
    }
    entry.primitive.execute(onednn_->stream, args);
    onednn_->stream.wait();
  }

  int64_t in_features() const override { return in_features_; }
  int64_t out_features() const override { return out_features_; }

 private:
  struct Entry {
    int64_t m;
    Activation activation;
    ResidualMode residual;
    DType output;
    dnnl::matmul::primitive_desc primitive_desc;
    dnnl::matmul primitive;
    memory weights;  // a handle to the layout in weights_
  };

  // torch's [N, K] weights are the [K, N] matrix oneDNN wants in the transposed ("ba") layout;
  // in the compute dtype (bf16 rounded to nearest even here, as tensor::f32_to_bf16 rounds).
  static memory plain_weights(const OneDnn& onednn, const Tensor& weight) {
    const Tensor converted = weight.to(onednn.compute_dtype);
    memory m(plain_desc(onednn.compute_dtype, {weight.dim(1), weight.dim(0)}, tag::ba), onednn.engine);
    std::memcpy(m.get_data_handle(), converted.raw_data(), converted.nbytes());
    return m;
  }

  const Entry& find_or_create(int64_t m, Activation activation, ResidualMode residual, DType output) {
    for (const Entry& e : entries_) {
      if (e.m == m && e.activation == activation && e.residual == residual && e.output == output) return e;
    }
    const memory::desc src = plain_desc(compute_, {m, in_features_}, tag::ab);
    const memory::desc weights = plain_desc(compute_, {in_features_, out_features_}, tag::any);
    const memory::desc dst = plain_desc(output, {m, out_features_}, tag::ab);
    const memory::desc bias = plain_desc(DType::kF32, {1, out_features_}, tag::ab);
    dnnl::matmul::desc desc =
        bias_.empty() ? dnnl::matmul::desc(src, weights, dst) : dnnl::matmul::desc(src, weights, bias, dst);
    dnnl::post_ops ops;
    append_activation(ops, activation);  // act(x W^T + b) first, then the residual
    if (residual == ResidualMode::kSum) ops.append_sum(1.0f);
    if (residual == ResidualMode::kBinaryAdd) ops.append_binary(dnnl::algorithm::binary_add, dst);
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    dnnl::matmul::primitive_desc pd(desc, attr, onednn_->engine);
    const memory prepared = weights_.get(pd.weights_desc());
    entries_.push_back(Entry{m, activation, residual, output, pd, dnnl::matmul(pd), prepared});
    return entries_.back();
  }

  std::shared_ptr<OneDnn> onednn_;
  int64_t out_features_, in_features_;
  PreparedWeights weights_;
  DType compute_;            // the dtype of src and weights: f32 or bf16
  std::vector<float> bias_;  // [N] f32, empty when the layer has no bias
  std::vector<Entry> entries_;
};

}  // namespace

std::unique_ptr<Linear> make_onednn_linear(std::shared_ptr<OneDnn> onednn, const Tensor& weight, const Tensor& bias) {
  return std::make_unique<OneDnnLinear>(std::move(onednn), weight, bias);
}

// a: [B, M, K]; b: [B, K, N], or [B, N, K] read through transposed strides; y: [B, M, N].
void batched_matmul(MatmulCache& cache, const Tensor& a, const Tensor& b, Tensor& y, bool transpose_b, float alpha) {
  assert(a.is_contiguous() && b.is_contiguous() && y.is_contiguous());
  assert(a.rank() == 3 && b.rank() == 3);
  const int64_t batch = a.dim(0), m = a.dim(1), k = a.dim(2);
  const int64_t n = transpose_b ? b.dim(1) : b.dim(2);
  assert(b.dim(0) == batch && (transpose_b ? b.dim(2) : b.dim(1)) == k);
  assert(y.dim(0) == batch && y.dim(1) == m && y.dim(2) == n);
  // In bf16 compute a and b are rounded to bf16 copies in the same layouts; y stays f32.
  const DType compute = cache.onednn().compute_dtype;
  const void* a_data = compute_operand(cache.onednn(), a, Bf16Scratch::Slot::kSrc);
  const void* b_data = compute_operand(cache.onednn(), b, Bf16Scratch::Slot::kOperand);
  const memory::desc a_desc = plain_desc(compute, {batch, m, k}, {m * k, k, 1});
  const memory::desc b_desc = transpose_b ? plain_desc(compute, {batch, k, n}, {n * k, 1, k})
                                          : plain_desc(compute, {batch, k, n}, {k * n, n, 1});
  const memory::desc y_desc = plain_desc(DType::kF32, {batch, m, n}, {m * n, n, 1});
  cache.run(a_desc, a_data, b_desc, b_data, y_desc, y.data<float>(), alpha);
}

}  // namespace sdstack::backend::cpu
