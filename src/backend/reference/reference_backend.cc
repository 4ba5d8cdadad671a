// The reference backend: the Backend interface over the plain-loop ops of tensor/reference_ops.h.
#include "backend/reference/reference_backend.h"

#include <cassert>

#include "tensor/reference_ops.h"

namespace sdstack::backend {

namespace {

namespace ref = tensor::ref;

// y = act(x); y may alias x.
void apply_activation(const Tensor& x, Activation activation, Tensor& y) {
  switch (activation) {
    case Activation::kNone:
      if (x.raw_data() != y.raw_data()) y.copy_from(x);
      return;
    case Activation::kSiLU: ref::silu(x, y); return;
    case Activation::kGELU: ref::gelu(x, y); return;
    case Activation::kQuickGELU: ref::quick_gelu(x, y); return;
  }
}

// A weight or bias as a contiguous f32 copy (undefined stays undefined), so that the layer owns
// its parameters whatever the checkpoint's dtype and however long the checkpoint's mmap lives.
Tensor f32_copy(const Tensor& t) { return t.defined() ? t.to(DType::kF32) : Tensor(); }

class ReferenceConv2d : public Conv2d {
 public:
  ReferenceConv2d(const Tensor& weight, const Tensor& bias, const Conv2dParams& params)
      : weight_(f32_copy(weight)), bias_(f32_copy(bias)), params_(params) {
    assert(weight_.rank() == 4 && weight_.dim(2) == weight_.dim(3));
    assert(!bias_.defined() || (bias_.rank() == 1 && bias_.dim(0) == weight_.dim(0)));
  }

  // y = act(conv(x) + bias + extra_bias + residual_scale * residual).
  void run(const Tensor& x, Tensor& y, const Conv2dExtras& extras) override {
    // Computed into a temporary because the residual may alias y and must be read intact.
    Tensor out = Tensor::empty(y.shape());
    const ref::Padding2d padding{params_.pad_top(), params_.pad_left(), params_.pad_bottom(), params_.pad_right()};
    ref::conv2d(x, weight_, bias_, params_.stride, padding, out);
    if (extras.extra_bias.defined()) {
      assert(extras.extra_bias.rank() == 1 && extras.extra_bias.dim(0) == out_channels());
      ref::add(out, extras.extra_bias, out);
    }
    if (extras.residual.defined()) {
      assert(extras.residual.shape() == y.shape());
      Tensor scaled = Tensor::empty(y.shape());
      ref::scale(extras.residual, extras.residual_scale, scaled);
      ref::add(out, scaled, out);
    }
    apply_activation(out, extras.activation, out);
    y.copy_from(out);
  }

  // The definition: upsampled, then convolved.
  void run_upsampled2x(const Tensor& x, Tensor& y, Tensor&) override {
    Tensor up = Tensor::empty({x.dim(0), 2 * x.dim(1), 2 * x.dim(2), x.dim(3)});
    ref::upsample_nearest2x(x, up);
    run(up, y, {});
  }

  int64_t in_channels() const override { return weight_.dim(1); }
  int64_t out_channels() const override { return weight_.dim(0); }
  int64_t kernel_size() const override { return weight_.dim(2); }
  const Conv2dParams& params() const override { return params_; }

 private:
  Tensor weight_;  // [Cout, Cin, k, k] f32
  Tensor bias_;    // [Cout] f32, or undefined
  Conv2dParams params_;
};

class ReferenceLinear : public Linear {
 public:
  ReferenceLinear(const Tensor& weight, const Tensor& bias) : weight_(f32_copy(weight)), bias_(f32_copy(bias)) {
    assert(weight_.rank() == 2);
    assert(!bias_.defined() || (bias_.rank() == 1 && bias_.dim(0) == weight_.dim(0)));
  }

  // y = act(x W^T + bias) + residual.
  void run(const Tensor& x, Tensor& y, const LinearExtras& extras) override {
    // Computed into a temporary because the residual may alias y and must be read intact.
    Tensor out = Tensor::empty(y.shape());
    ref::linear(x, weight_, bias_, out);
    apply_activation(out, extras.activation, out);
    if (extras.residual.defined()) {
      assert(extras.residual.shape() == y.shape());
      ref::add(out, extras.residual, out);
    }
    y.copy_from(out);
  }

  int64_t in_features() const override { return weight_.dim(1); }
  int64_t out_features() const override { return weight_.dim(0); }

 private:
  Tensor weight_;  // [out, in] f32
  Tensor bias_;    // [out] f32, or undefined
};

class ReferenceBackend : public Backend {
 public:
  std::string name() const override { return "reference"; }

  std::unique_ptr<Conv2d> make_conv2d(const Tensor& weight, const Tensor& bias, const Conv2dParams& params) override {
    return std::make_unique<ReferenceConv2d>(weight, bias, params);
  }
  std::unique_ptr<Linear> make_linear(const Tensor& weight, const Tensor& bias) override {
    return std::make_unique<ReferenceLinear>(weight, bias);
  }

  void matmul(const Tensor& a, const Tensor& b, Tensor& y, bool transpose_b, float alpha) override {
    ref::matmul(a, b, y, transpose_b, alpha);
  }

  void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups, float eps,
                  Activation activation, Tensor& y) override {
    assert(activation == Activation::kNone || activation == Activation::kSiLU);
    ref::group_norm(x, gamma, beta, groups, eps, activation == Activation::kSiLU, y);
  }
  void layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, Tensor& y) override {
    ref::layer_norm(x, gamma, beta, eps, y);
  }
  void softmax(const Tensor& x, Tensor& y) override { ref::softmax(x, y); }

  void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal, Tensor& y) override {
    ref::attention(q, k, v, heads, causal, y);
  }

  void activation(const Tensor& x, Activation activation, Tensor& y) override { apply_activation(x, activation, y); }
  void geglu(const Tensor& x, Tensor& y) override { ref::geglu(x, y); }
  void add(const Tensor& a, const Tensor& b, Tensor& y) override { ref::add(a, b, y); }
  void mul(const Tensor& a, const Tensor& b, Tensor& y) override { ref::mul(a, b, y); }
  void scale(const Tensor& x, float factor, Tensor& y) override { ref::scale(x, factor, y); }

  void upsample_nearest2x(const Tensor& x, Tensor& y) override { ref::upsample_nearest2x(x, y); }
  void concat_last(const Tensor& a, const Tensor& b, Tensor& y) override { ref::concat_last(a, b, y); }
};

}  // namespace

std::unique_ptr<Backend> make_reference_backend() { return std::make_unique<ReferenceBackend>(); }

}  // namespace sdstack::backend
