// Conv2d on oneDNN: NHWC activations, weights reordered once into the primitive's preferred layout,
// bias, extra bias, residual and activation fused; one primitive cached per input shape and fusion.
// In bf16 compute a residual is read by a binary-add post-op where it can be (not aliasing y,
// scale 1, and a brgconv or jit implementation: oneDNN 2.6's gemm convolution gets a full-tensor
// binary operand wrong with uneven padding), else copied into y for a sum post-op. The copy is a
// read and a write of a tensor as big as y (20 ms at [1, 512, 512, 128] on one core), which counts
// next to AMX convolutions; f32 convolutions are compute-bound and keep the sum (the binary
// operand measured no faster there, and f32 results stay as they were).
// In bf16 compute the weights are bf16 and each input is rounded to a bf16 copy; bias, residual
// and output stay f32 (oneDNN accumulates in f32).
#include <cassert>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/cpu/cpu_internal.h"

namespace sdstack::backend::cpu {
namespace {

using dnnl::memory;
using tag = memory::format_tag;

class OneDnnConv2d final : public Conv2d {
 public:
  OneDnnConv2d(std::shared_ptr<OneDnn> onednn, const Tensor& weight, const Tensor& bias, const Conv2dParams& params)
      : onednn_(onednn),
        params_(params),
        out_channels_(weight.dim(0)),
        in_channels_(weight.dim(1)),
        kernel_size_(weight.dim(2)),
        weights_(onednn, plain_weights(*onednn, weight)),
        compute_(onednn->compute_dtype),
        bias_(static_cast<size_t>(out_channels_), 0.0f) {
    assert(weight.rank() == 4 && weight.dim(2) == weight.dim(3));
    if (bias.defined()) {
      assert(bias.numel() == out_channels_);
      bias_ = bias.to_vector();
    }
  }

  // x: [N, H, W, Cin]; y: [N, Ho, Wo, Cout].
  void run(const Tensor& x, Tensor& y, const Conv2dExtras& extras) override {
    assert(x.dtype() == DType::kF32 && x.is_contiguous() && y.is_contiguous());
    assert(x.rank() == 4 && x.dim(3) == in_channels_ && y.dim(3) == out_channels_);
    const int64_t n = x.dim(0), h = x.dim(1), w = x.dim(2);
    assert(y.dim(0) == n && y.dim(1) == params_.out_height(h, kernel_size_) &&
           y.dim(2) == params_.out_width(w, kernel_size_));
    const bool has_residual = extras.residual.defined();
    const bool residual_in_place = has_residual && extras.residual.raw_data() == y.raw_data();
    Residual wanted = Residual::kNone;
    if (has_residual) {
      const bool binary = !residual_in_place && extras.residual_scale == 1.0f && compute_ == DType::kBF16;
      wanted = binary ? Residual::kBinary : Residual::kSum;
    }
    const Entry& entry = find_or_create(n, h, w, wanted, extras.residual_scale, extras.activation);
    const Residual residual = entry.residual;

    // bias + extra_bias (the time embedding) into scratch: one small vector per call.
    const float* bias = bias_.data();
    if (extras.extra_bias.defined()) {
      assert(extras.extra_bias.numel() == out_channels_ && extras.extra_bias.dtype() == DType::kF32);
      const float* extra = extras.extra_bias.data<float>();
      bias_scratch_.resize(bias_.size());
      for (size_t i = 0; i < bias_.size(); ++i) bias_scratch_[i] = bias_[i] + extra[i];
      bias = bias_scratch_.data();
    }
    // The sum post-op accumulates into dst, so a residual that is not y itself goes there first.
    if (has_residual) assert(extras.residual.numel() == y.numel() && extras.residual.is_contiguous());
    if (residual == Residual::kSum) parallel_copy(extras.residual.data<float>(), y.data<float>(), y.numel());

    const void* x_data = compute_operand(*onednn_, x, Bf16Scratch::Slot::kSrc);
    memory src(entry.primitive_desc.src_desc(), onednn_->engine, const_cast<void*>(x_data));
    memory dst(entry.primitive_desc.dst_desc(), onednn_->engine, y.raw_data());
    memory bias_mem(entry.primitive_desc.bias_desc(), onednn_->engine, const_cast<float*>(bias));
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, entry.weights}, {DNNL_ARG_BIAS, bias_mem}, {DNNL_ARG_DST, dst}};
    if (residual == Residual::kBinary) {
      args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] =
          memory(entry.primitive_desc.dst_desc(), onednn_->engine, const_cast<void*>(extras.residual.raw_data()));
    }
    entry.primitive.execute(onednn_->stream, args);
    onednn_->stream.wait();
  }

  int64_t in_channels() const override { return in_channels_; }
  int64_t out_channels() const override { return out_channels_; }
  int64_t kernel_size() const override { return kernel_size_; }
  const Conv2dParams& params() const override { return params_; }

 private:
  // How a residual is added: none, a sum post-op onto dst (which holds it), a binary-add post-op.
  enum class Residual { kNone, kSum, kBinary };

  // A primitive for one input shape and one set of fused extras.
  struct Entry {
    int64_t n, h, w;
    Residual wanted;    // what run() asked for (the cache key)
    Residual residual;  // what the primitive does: kSum where kBinary was wanted but not supported
    float residual_scale;
    Activation activation;
    dnnl::convolution_forward::primitive_desc primitive_desc;
    dnnl::convolution_forward primitive;
    memory weights;  // a handle to the layout in weights_
  };

  // The checkpoint's OIHW weights in the compute dtype (bf16 rounded to nearest even here, so
  // exactly as tensor::f32_to_bf16 rounds) in a oneDNN-owned buffer, the source of the reorders.
  static memory plain_weights(const OneDnn& onednn, const Tensor& weight) {
    const Tensor converted = weight.to(onednn.compute_dtype);
    memory m(plain_desc(onednn.compute_dtype, {weight.dim(0), weight.dim(1), weight.dim(2), weight.dim(3)}, tag::oihw),
             onednn.engine);
    std::memcpy(m.get_data_handle(), converted.raw_data(), converted.nbytes());
    return m;
  }

  const Entry& find_or_create(int64_t n, int64_t h, int64_t w, Residual wanted, float residual_scale,
                              Activation activation) {
    if (wanted == Residual::kNone) residual_scale = 1.0f;  // irrelevant without a residual: do not split the cache on it
    for (const Entry& e : entries_) {
      if (e.n == n && e.h == h && e.w == w && e.wanted == wanted && e.residual_scale == residual_scale &&
          e.activation == activation) {
        return e;
      }
    }
    const int64_t k = kernel_size_, s = params_.stride;
    const int64_t ho = params_.out_height(h, k), wo = params_.out_width(w, k);
    // oneDNN's logical dims are always N, C, H, W; the nhwc tag says the bytes are NHWC.
    const memory::desc src = plain_desc(compute_, {n, in_channels_, h, w}, tag::nhwc);
    const memory::desc weights = plain_desc(compute_, {out_channels_, in_channels_, k, k}, tag::any);
    const memory::desc bias = plain_desc(DType::kF32, {out_channels_}, tag::x);
    const memory::desc dst = plain_desc(DType::kF32, {n, out_channels_, ho, wo}, tag::nhwc);
    // Direct, not auto: auto may pick Winograd for 3x3, which is less accurate.
    dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                         src, weights, bias, dst, {s, s}, {params_.pad_top(), params_.pad_left()},
                                         {params_.pad_bottom(), params_.pad_right()});
    auto make = [&](Residual residual) {
      dnnl::post_ops ops;
      if (residual == Residual::kSum) ops.append_sum(residual_scale);  // dst = conv + bias + scale * dst
      if (residual == Residual::kBinary) ops.append_binary(dnnl::algorithm::binary_add, dst);  // + residual, dst's layout
      append_activation(ops, activation);
      dnnl::primitive_attr attr;
      attr.set_post_ops(ops);
      return dnnl::convolution_forward::primitive_desc(desc, attr, onednn_->engine);
    };
    Residual residual = wanted;
    dnnl::convolution_forward::primitive_desc pd = make(residual);
    if (residual == Residual::kBinary) {
      const std::string impl = pd.impl_info_str();
      if (impl.rfind("brg", 0) != 0 && impl.rfind("jit", 0) != 0) {
        residual = Residual::kSum;
        pd = make(residual);
      }
    }
    const memory prepared = weights_.get(pd.weights_desc());
    entries_.push_back(Entry{n, h, w, wanted, residual, residual_scale, activation, pd, dnnl::convolution_forward(pd),
                             prepared});
    return entries_.back();
  }

  std::shared_ptr<OneDnn> onednn_;
  Conv2dParams params_;
  int64_t out_channels_, in_channels_, kernel_size_;
  PreparedWeights weights_;
  DType compute_;                    // the dtype of src and weights: f32 or bf16
  std::vector<float> bias_;          // [Cout] f32, zeros when the layer has no bias
  std::vector<float> bias_scratch_;  // [Cout] bias + extra_bias
  std::vector<Entry> entries_;
};

}  // namespace

std::unique_ptr<Conv2d> make_onednn_conv2d(std::shared_ptr<OneDnn> onednn, const Tensor& weight, const Tensor& bias,
                                           const Conv2dParams& params) {
  return std::make_unique<OneDnnConv2d>(std::move(onednn), weight, bias, params);
}

}  // namespace sdstack::backend::cpu
