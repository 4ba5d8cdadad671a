// The CPU backend object: makes oneDNN-backed layers and dispatches each op to its kernel.
#include "backend/cpu/cpu_backend.h"

#include <cassert>
#include <vector>

#include "backend/cpu/cpu_internal.h"

namespace sdstack::backend {
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend() : onednn_(std::make_shared<cpu::OneDnn>()), matmuls_(onednn_) {}

  std::string name() const override { return "cpu"; }

  std::unique_ptr<Conv2d> make_conv2d(const Tensor& weight, const Tensor& bias, const Conv2dParams& params) override {
    return cpu::make_onednn_conv2d(onednn_, weight, bias, params);
  }
  std::unique_ptr<Linear> make_linear(const Tensor& weight, const Tensor& bias) override {
    return cpu::make_onednn_linear(onednn_, weight, bias);
  }

  void matmul(const Tensor& a, const Tensor& b, Tensor& y, bool transpose_b, float alpha) override {
    cpu::batched_matmul(matmuls_, a, b, y, transpose_b, alpha);
  }

  void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups, float eps,
                  Activation activation, Tensor& y) override {
    cpu::group_norm(x, gamma, beta, groups, eps, activation, y);
  }
  void layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, Tensor& y) override {
    cpu::layer_norm(x, gamma, beta, eps, y);
  }
  void softmax(const Tensor& x, Tensor& y) override {
    assert(x.dtype() == DType::kF32 && x.is_contiguous() && y.is_contiguous() && x.numel() == y.numel());
    const int64_t cols = x.dim(-1);
    cpu::softmax_rows(x.data<float>(), y.data<float>(), x.numel() / cols, cols);
  }

  void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal, Tensor& y) override {
    cpu::attention(matmuls_, q, k, v, heads, causal, attention_scores_, y);
  }

  void activation(const Tensor& x, Activation activation, Tensor& y) override { cpu::activation(x, activation, y); }
  void geglu(const Tensor& x, Tensor& y) override { cpu::geglu(x, y); }
  void add(const Tensor& a, const Tensor& b, Tensor& y) override { cpu::add(a, b, y); }
  void mul(const Tensor& a, const Tensor& b, Tensor& y) override { cpu::mul(a, b, y); }
  void scale(const Tensor& x, float scale, Tensor& y) override { cpu::scale(x, scale, y); }
  void upsample_nearest2x(const Tensor& x, Tensor& y) override { cpu::upsample_nearest2x(x, y); }
  void concat_last(const Tensor& a, const Tensor& b, Tensor& y) override { cpu::concat_last(a, b, y); }

 private:
  std::shared_ptr<cpu::OneDnn> onednn_;
  cpu::MatmulCache matmuls_;              // matmul and attention primitives, per shape
  std::vector<float> attention_scores_;  // one query tile's scores, reused across calls
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace sdstack::backend
