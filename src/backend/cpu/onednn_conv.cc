// Conv2d on oneDNN: NHWC activations, weights reordered once into the primitive's preferred layout,
// bias, extra bias, residual and activation fused; primitives cached per input shape and fusion.
// In bf16 compute the weights are bf16 and each f32 input is rounded to a bf16 copy; the bias is
// f32, the output and its residual f32 or bf16 (oneDNN accumulates in f32 and rounds once).
//
// In bf16 compute a residual is read by a binary-add post-op where it can be (not aliasing y,
// scale 1, and a brgconv or jit implementation: oneDNN 2.6's gemm convolution gets a full-tensor
// binary operand wrong with uneven padding), else copied into y for a sum post-op. The copy is a
// read and a write of a tensor as big as y (20 ms at [1, 512, 512, 128] on one core), which counts
// next to AMX convolutions; f32 convolutions are compute-bound and keep the sum (the binary
// operand measured no faster there, and f32 results stay as they were).
//
// 3x3 convolutions with many input channels run as several convolutions over parts of the input
// channels, each adding onto the output (a sum post-op), the bias with the first, the activation
// with the last. oneDNN 2.6's brgconv re-reads an output-channel block's weights (C_in x 9 x 32)
// for every output row, so once those outgrow L2 (C_in = 2560 at SD's 16x16 and 8x8 levels: 2.9 MB
// in f32) it is bound by memory, at 45-65% of its speed with parts of 640 (f32) or 512 (bf16)
// channels; measured 1.3-1.8x faster on the UNet's 1280- to 2560-channel convs, no slower on the rest.
#include <cassert>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/vec_math.h"

namespace sdstack::backend::cpu {
namespace {

using dnnl::memory;
using tag = memory::format_tag;

// The most input channels per part of a 3x3 convolution (see above), by compute dtype.
constexpr int64_t kMaxPartChannelsF32 = 640;
constexpr int64_t kMaxPartChannelsBf16 = 512;

// How many parts a convolution's input channels run in: the fewest parts of equal size, a multiple
// of 16 channels, within the limit; one for 1x1 convolutions and where no such split exists.
int64_t input_channel_parts(int64_t in_channels, int64_t kernel, DType compute) {
  if (kernel == 1) return 1;
  const int64_t limit = compute == DType::kBF16 ? kMaxPartChannelsBf16 : kMaxPartChannelsF32;
  for (int64_t parts = 1; parts <= in_channels / 16; ++parts) {
    if (in_channels % parts != 0 || (in_channels / parts) % 16 != 0) continue;
    if (in_channels / parts <= limit) return parts;
  }
  return 1;
}

// Channels [first, first + count) of every pixel of x ([pixels, C], f32 or the compute dtype) into
// y dense ([pixels, count]) in the compute dtype: copied, or rounded to bf16.
void gather_channels(const Tensor& x, int64_t first, int64_t count, DType compute, void* y) {
  const int64_t channels = x.dim(-1), pixels = x.numel() / channels;
  const Bf16Source source(x);
#pragma omp parallel for schedule(static) if (pixels * count > 16384)
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t at = p * channels + first;
    if (compute == DType::kBF16) {
      source.read(at, static_cast<uint16_t*>(y) + p * count, count);
    } else {
      std::memcpy(static_cast<float*>(y) + p * count, x.data<float>() + at, static_cast<size_t>(count) * sizeof(float));
    }
  }
}

// y[n, 2i + a, 2j + b] = parities[2a + b][n, i, j]: parities [4, N, H, W, C] and y [N, 2H, 2W, C]
// of one dtype, each pixel's C values copied.
void interleave_parities(const Tensor& parities, Tensor& y) {
  const int64_t n = parities.dim(1), h = parities.dim(2), w = parities.dim(3), c = parities.dim(4);
  assert(y.is_contiguous() && y.dim(0) == n && y.dim(1) == 2 * h && y.dim(2) == 2 * w && y.dim(3) == c);
  assert(parities.dtype() == y.dtype());
  const size_t pixel = static_cast<size_t>(c) * tensor::dtype_size(y.dtype());  // bytes
  const char* in = static_cast<const char*>(parities.raw_data());
  char* out = static_cast<char*>(y.raw_data());
  const size_t plane = static_cast<size_t>(n * h * w) * pixel;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < n * 2 * h; ++row) {  // row = image * 2h + output row
    const int64_t image = row / (2 * h), i = (row % (2 * h)) / 2, a = row % 2;
    const char* even = in + (2 * a) * plane + static_cast<size_t>((image * h + i) * w) * pixel;  // parity (a, 0)
    const char* odd = even + plane;                                                              // parity (a, 1)
    char* to = out + static_cast<size_t>(row * 2 * w) * pixel;
    for (int64_t j = 0; j < w; ++j) {
      std::memcpy(to + (2 * j) * pixel, even + j * pixel, pixel);
      std::memcpy(to + (2 * j + 1) * pixel, odd + j * pixel, pixel);
    }
  }
}

class OneDnnConv2d final : public Conv2d {
 public:
  OneDnnConv2d(std::shared_ptr<OneDnn> onednn, const Tensor& weight, const Tensor& bias, const Conv2dParams& params)
      : onednn_(onednn),
        params_(params),
        out_channels_(weight.dim(0)),
        in_channels_(weight.dim(1)),
        kernel_size_(weight.dim(2)),
        parts_(input_channel_parts(in_channels_, kernel_size_, onednn->compute_dtype)),
        compute_(onednn->compute_dtype),
        bias_(static_cast<size_t>(out_channels_), 0.0f) {
    assert(weight.rank() == 4 && weight.dim(2) == weight.dim(3));
    // The checkpoint's weights in the compute dtype (bf16 rounded to nearest even, so exactly as
    // tensor::f32_to_bf16 rounds): the plain copy each part's weights are taken from.
    const Tensor converted = weight.dtype() == compute_ && weight.is_contiguous() ? weight : weight.to(compute_);
    for (int64_t part = 0; part < parts_; ++part) {
      weights_.emplace_back(onednn, plain_weights(*onednn, converted, part));
    }
    if (bias.defined()) {
      assert(bias.numel() == out_channels_);
      bias_ = bias.to_vector();
    }
  }

  // x: [N, H, W, Cin]; y: [N, Ho, Wo, Cout], f32, or bf16 in bf16 compute; a residual in y's dtype.
  void run(const Tensor& x, Tensor& y, const Conv2dExtras& extras) override {
    assert(x.is_contiguous() && y.is_contiguous());
    assert(y.dtype() == DType::kF32 || y.dtype() == compute_);
    assert(!extras.residual.defined() || extras.residual.dtype() == y.dtype());
    if (y.dtype() != DType::kF32 && parts_ > 1) {
      // The parts add up in dst, which must hold f32 for that: into an f32 y (from the residual,
      // widened, where there is one), then rounded once.
      Tensor sum = extras.residual.defined() ? extras.residual.to(DType::kF32) : Tensor::empty(y.shape());
      Conv2dExtras in_sum = extras;
      if (extras.residual.defined()) in_sum.residual = sum;
      run(x, sum, in_sum);
      convert_to_bf16(sum.data<float>(), y.data<uint16_t>(), y.numel());
      return;
    }
    assert(x.raw_data() != y.raw_data());  // the parts read x after the first has written y
    assert(x.rank() == 4 && x.dim(3) == in_channels_ && y.dim(3) == out_channels_);
    const int64_t n = x.dim(0), h = x.dim(1), w = x.dim(2);
    assert(y.dim(0) == n && y.dim(1) == params_.out_height(h, kernel_size_) &&
           y.dim(2) == params_.out_width(w, kernel_size_));
    Residual wanted = Residual::kNone;
    if (extras.residual.defined()) {
      assert(extras.residual.numel() == y.numel() && extras.residual.is_contiguous());
      const bool in_place = extras.residual.raw_data() == y.raw_data();
      const bool binary = !in_place && extras.residual_scale == 1.0f && compute_ == DType::kBF16;
      wanted = binary ? Residual::kBinary : Residual::kSum;
    }
    const Entry& entry = find_or_create(n, h, w, wanted, extras.residual_scale, extras.activation, y.dtype());

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
    if (entry.residual == Residual::kSum && extras.residual.raw_data() != y.raw_data()) {
      parallel_copy(extras.residual.raw_data(), y.raw_data(), static_cast<int64_t>(y.nbytes()));
    }

    const int64_t part_channels = in_channels_ / parts_;
    for (int64_t part = 0; part < parts_; ++part) {
      const Stage& stage = entry.stages[static_cast<size_t>(part)];
      const void* x_data = nullptr;
      if (parts_ == 1) {
        x_data = compute_operand(*onednn_, x, Bf16Scratch::Slot::kSrc);
      } else {  // this part's channels, dense, in the compute dtype
        const int64_t count = n * h * w * part_channels;
        void* gathered = compute_ == DType::kBF16
                             ? static_cast<void*>(onednn_->scratch.get(Bf16Scratch::Slot::kSrc, count))
                             : static_cast<void*>(onednn_->scratch.get_f32(Bf16Scratch::Slot::kSrc, count));
        gather_channels(x, part * part_channels, part_channels, compute_, gathered);
        x_data = gathered;
      }
      memory src(stage.primitive_desc.src_desc(), onednn_->engine, const_cast<void*>(x_data));
      memory dst(stage.primitive_desc.dst_desc(), onednn_->engine, y.raw_data());
      std::unordered_map<int, memory> args = {
          {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, stage.weights}, {DNNL_ARG_DST, dst}};
      if (part == 0) {
        args[DNNL_ARG_BIAS] = memory(stage.primitive_desc.bias_desc(), onednn_->engine, const_cast<float*>(bias));
      }
      if (part == 0 && entry.residual == Residual::kBinary) {  // the first post-op
        args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] =
            memory(stage.primitive_desc.dst_desc(), onednn_->engine, const_cast<void*>(extras.residual.raw_data()));
      }
      stage.primitive.execute(onednn_->stream, args);
      onednn_->stream.wait();
    }
  }

  // A 3x3, stride 1, padding 1 convolution of x upsampled 2x reads, for the output pixels of one
  // parity (row 2i + a, column 2j + b), input rows i - 1 + a .. i + a and columns j - 1 + b ..
  // j + b only: a 2x2 convolution on x, whose taps are sums of the 3x3 taps over the upsampled
  // pixels that repeat the same input pixel. The four run into `scratch` and are interleaved into y.
  //
  // Measured slower everywhere: per row parity ONE 2x3 convolution (columns j - 1 .. j + 1) with
  // both column parities as 2 Cout output channels, 2 convolutions at 1.5x the FLOPs, whose output
  // rows are y's rows as they stand. 1 thread, ms, four 2x2 / two 2x3, reused buffers, by x: bf16
  // VAE [1,256,256,256] 205 / 214, [1,128,128,512] 125 / 154, [1,64,64,512] 32 / 40, UNet
  // [2,16,16,1280] 23 / 34, [2,32,32,640] 21 / 28; f32 1.4-1.5x slower (compute-bound): the 2x3 way
  // gains only 1.0-1.45x in FLOP rate. A dst with strides that would put its rows straight into
  // y's makes oneDNN 2.6 leave brgconv for ref:any.
  void run_upsampled2x(const Tensor& x, Tensor& y, Tensor& scratch) override {
    assert((x.dtype() == DType::kF32 || x.dtype() == compute_) && x.is_contiguous() && x.dim(3) == in_channels_);
    assert(y.dtype() == DType::kF32 || y.dtype() == compute_);
    const int64_t n = x.dim(0), h = x.dim(1), w = x.dim(2);
    if (!splits_by_parity()) {
      Tensor up = Tensor::empty({n, 2 * h, 2 * w, in_channels_}, compute_);
      upsample_nearest2x(x, up);
      run(up, y, {});
      return;
    }
    assert(scratch.dtype() == DType::kF32 && scratch.is_contiguous() && scratch.numel() == y.numel());
    if (parity_convs_.empty()) make_parity_convs();
    // x once in the compute dtype, read by all four.
    const Tensor operand =
        compute_ == DType::kF32
            ? x
            : Tensor::borrow(nullptr, compute_operand(*onednn_, x, Bf16Scratch::Slot::kOperand), x.shape(), compute_);
    // [parity 2a + b][N, H, W, Cout] in y's dtype: a bf16 y's parities are rounded once by their
    // convolutions, at half the memory traffic of f32 ones (they take scratch's first half).
    const Tensor outputs = Tensor::borrow(nullptr, scratch.raw_data(), {4, n, h, w, out_channels_}, y.dtype());
    for (int64_t parity = 0; parity < 4; ++parity) {
      Tensor out = outputs.slice0(parity, 1).reshape({n, h, w, out_channels_});
      parity_convs_[static_cast<size_t>(parity)]->run(operand, out, {});
    }
    interleave_parities(outputs, y);
  }

  int64_t in_channels() const override { return in_channels_; }
  int64_t out_channels() const override { return out_channels_; }
  int64_t kernel_size() const override { return kernel_size_; }
  const Conv2dParams& params() const override { return params_; }

 private:
  bool splits_by_parity() const {
    return kernel_size_ == 3 && params_.stride == 1 && params_.pad_top() == 1 && params_.pad_left() == 1 &&
           params_.pad_bottom() == 1 && params_.pad_right() == 1;
  }

  // The four 2x2 convolutions of run_upsampled2x, from this one's weights in f32 (a bf16 layer's
  // taps are summed from its bf16 weights and rounded again). Made on first use: most 3x3
  // convolutions never run upsampled.
  void make_parity_convs() {
    const int64_t part_channels = in_channels_ / parts_;
    Tensor taps = Tensor::empty({out_channels_, in_channels_, 3, 3});  // OIHW, f32
    for (int64_t part = 0; part < parts_; ++part) {
      memory plain(plain_desc(DType::kF32, {out_channels_, part_channels, 3, 3}, tag::oihw), onednn_->engine);
      weights_[static_cast<size_t>(part)].copy_to(plain);
      const float* from = static_cast<const float*>(plain.get_data_handle());
      const size_t run = static_cast<size_t>(part_channels * 9);
      for (int64_t o = 0; o < out_channels_; ++o) {
        std::memcpy(taps.data<float>() + (o * parts_ + part) * static_cast<int64_t>(run), from + o * run,
                    run * sizeof(float));
      }
    }
    const Tensor bias = Tensor::from_vector({out_channels_}, bias_);
    for (int64_t a = 0; a < 2; ++a) {
      for (int64_t b = 0; b < 2; ++b) {
        // Tap (ky, kx) reads the upsampled pixel (2i + a + ky - 1, 2j + b + kx - 1), which repeats
        // input pixel (i + floor((a + ky - 1) / 2), ...): row u = (a + ky + 1) / 2 - a of the 2x2 window.
        Tensor folded = Tensor::zeros({out_channels_, in_channels_, 2, 2});
        const float* t = taps.data<float>();
        float* f = folded.data<float>();
        for (int64_t oc = 0; oc < out_channels_ * in_channels_; ++oc) {
          for (int64_t ky = 0; ky < 3; ++ky) {
            for (int64_t kx = 0; kx < 3; ++kx) {
              const int64_t u = (a + ky + 1) / 2 - a, v = (b + kx + 1) / 2 - b;
              f[oc * 4 + u * 2 + v] += t[oc * 9 + ky * 3 + kx];
            }
          }
        }
        Conv2dParams params;  // window rows i - 1 + a .. i + a: one zero row above (a = 0) or below (a = 1)
        params.extra_top = 1 - a;
        params.extra_bottom = a;
        params.extra_left = 1 - b;
        params.extra_right = b;
        parity_convs_.push_back(std::make_unique<OneDnnConv2d>(onednn_, folded, bias, params));
      }
    }
  }

  // How a residual is added: none, a sum post-op onto dst (which holds it), a binary-add post-op.
  enum class Residual { kNone, kSum, kBinary };

  // The convolution over one part of the input channels.
  struct Stage {
    dnnl::convolution_forward::primitive_desc primitive_desc;
    dnnl::convolution_forward primitive;
    memory weights;  // a handle to the layout in weights_[part]
  };
  // The primitives for one input shape and one set of fused extras, one per part.
  struct Entry {
    int64_t n, h, w;
    Residual wanted;    // what run() asked for (the cache key)
    Residual residual;  // what the first part does: kSum where kBinary was wanted but not supported
    float residual_scale;
    Activation activation;
    DType output;  // y's dtype
    std::vector<Stage> stages;
  };

  // The OIHW weights (in the compute dtype) of input-channel part `part` in a oneDNN-owned buffer,
  // the source of the reorders.
  memory plain_weights(const OneDnn& onednn, const Tensor& converted, int64_t part) const {
    assert(converted.dtype() == onednn.compute_dtype && converted.is_contiguous());
    const int64_t k = kernel_size_, part_channels = in_channels_ / parts_;
    memory m(plain_desc(onednn.compute_dtype, {out_channels_, part_channels, k, k}, tag::oihw), onednn.engine);
    const size_t element = tensor::dtype_size(onednn.compute_dtype);
    const size_t run = static_cast<size_t>(part_channels * k * k) * element;  // one output channel's part
    const char* from = static_cast<const char*>(converted.raw_data()) + part * run;
    char* to = static_cast<char*>(m.get_data_handle());
    for (int64_t o = 0; o < out_channels_; ++o) {
      std::memcpy(to + static_cast<size_t>(o) * run, from + static_cast<size_t>(o * parts_) * run, run);
    }
    return m;
  }

  const Entry& find_or_create(int64_t n, int64_t h, int64_t w, Residual wanted, float residual_scale,
                              Activation activation, DType output) {
    if (wanted == Residual::kNone) residual_scale = 1.0f;  // irrelevant without a residual: no cache split
    for (const Entry& e : entries_) {
      if (e.n == n && e.h == h && e.w == w && e.wanted == wanted && e.residual_scale == residual_scale &&
          e.activation == activation && e.output == output) {
        return e;
      }
    }
    const int64_t k = kernel_size_, s = params_.stride, part_channels = in_channels_ / parts_;
    const int64_t ho = params_.out_height(h, k), wo = params_.out_width(w, k);
    // oneDNN's logical dims are always N, C, H, W; the nhwc tag says the bytes are NHWC.
    const memory::desc src = plain_desc(compute_, {n, part_channels, h, w}, tag::nhwc);
    const memory::desc weights = plain_desc(compute_, {out_channels_, part_channels, k, k}, tag::any);
    const memory::desc bias = plain_desc(DType::kF32, {out_channels_}, tag::x);
    const memory::desc dst = plain_desc(output, {n, out_channels_, ho, wo}, tag::nhwc);
    Entry entry{n, h, w, wanted, wanted, residual_scale, activation, output, {}};
    for (int64_t part = 0; part < parts_; ++part) {
      // The first part adds the bias and the residual (scaled, in dst already, or read by a binary
      // post-op), later parts add onto dst, and the last applies the activation.
      const memory::desc no_bias;
      // Direct, not auto: auto may pick Winograd for 3x3, which is less accurate.
      dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src,
                                           weights, part == 0 ? bias : no_bias, dst, {s, s},
                                           {params_.pad_top(), params_.pad_left()},
                                           {params_.pad_bottom(), params_.pad_right()});
      auto make = [&](Residual residual) {
        dnnl::post_ops ops;
        if (part > 0) ops.append_sum(1.0f);
        if (residual == Residual::kSum) ops.append_sum(residual_scale);  // dst = conv + bias + scale * dst
        if (residual == Residual::kBinary) ops.append_binary(dnnl::algorithm::binary_add, dst);
        if (part == parts_ - 1) append_activation(ops, activation);
        dnnl::primitive_attr attr;
        attr.set_post_ops(ops);
        return dnnl::convolution_forward::primitive_desc(desc, attr, onednn_->engine);
      };
      dnnl::convolution_forward::primitive_desc pd = make(part == 0 ? entry.residual : Residual::kNone);
      if (part == 0 && entry.residual == Residual::kBinary) {
        const std::string impl = pd.impl_info_str();
        if (impl.rfind("brg", 0) != 0 && impl.rfind("jit", 0) != 0) {
          entry.residual = Residual::kSum;
          pd = make(entry.residual);
        }
      }
      const memory prepared = weights_[static_cast<size_t>(part)].get(pd.weights_desc());
      entry.stages.push_back(Stage{pd, dnnl::convolution_forward(pd), prepared});
    }
    entries_.push_back(std::move(entry));
    return entries_.back();
  }

  std::shared_ptr<OneDnn> onednn_;
  Conv2dParams params_;
  int64_t out_channels_, in_channels_, kernel_size_;
  int64_t parts_;                         // input-channel parts, each its own convolution
  std::vector<PreparedWeights> weights_;  // one per part
  DType compute_;                         // the dtype of src and weights: f32 or bf16
  std::vector<float> bias_;               // [Cout] f32, zeros when the layer has no bias
  std::vector<float> bias_scratch_;       // [Cout] bias + extra_bias
  std::vector<Entry> entries_;
  std::vector<std::unique_ptr<OneDnnConv2d>> parity_convs_;  // run_upsampled2x's, by parity 2a + b
};

}  // namespace

std::unique_ptr<Conv2d> make_onednn_conv2d(std::shared_ptr<OneDnn> onednn, const Tensor& weight, const Tensor& bias,
                                           const Conv2dParams& params) {
  return std::make_unique<OneDnnConv2d>(std::move(onednn), weight, bias, params);
}

}  // namespace sdstack::backend::cpu
