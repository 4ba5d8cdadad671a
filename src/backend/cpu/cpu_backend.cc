// The CPU backend object: makes oneDNN-backed layers and dispatches each op to its kernel; checks
// that the CPU computes bf16 natively before it agrees to.
#include "backend/cpu/cpu_backend.h"

#include <cassert>
#include <string>
#include <vector>

#include "backend/cpu/cpu_internal.h"

namespace sdstack::backend {
namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(DType compute_dtype) : onednn_(std::make_shared<cpu::OneDnn>()), matmuls_(onednn_) {
    onednn_->compute_dtype = compute_dtype;
  }

  std::string name() const override { return "cpu"; }
  DType operand_dtype() const override { return onednn_->compute_dtype; }

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
  cpu::MatmulCache matmuls_;             // matmul and attention primitives, per shape
  std::vector<float> attention_scores_;  // attention scratch, reused across calls: f32 flash: K/V per head; bf16: one
                                         // query tile's scores
};

// The instruction set oneDNN dispatches to, in words. oneDNN's ISA values are bit sets, each
// including the ones below it.
std::string isa_name(dnnl::cpu_isa isa) {
  const auto has = [isa](dnnl::cpu_isa level) {
    return (static_cast<unsigned>(isa) & static_cast<unsigned>(level)) == static_cast<unsigned>(level);
  };
  if (has(dnnl::cpu_isa::avx512_core_vnni)) return "AVX-512 with VNNI";
  if (has(dnnl::cpu_isa::avx512_core)) return "AVX-512";
  if (has(dnnl::cpu_isa::avx2_vnni)) return "AVX2 with VNNI";
  if (has(dnnl::cpu_isa::avx2)) return "AVX2";
  if (has(dnnl::cpu_isa::avx)) return "AVX";
  return "no AVX";
}

// Whether oneDNN runs bf16 natively: AVX512-BF16 (vdpbf16ps) or AMX; without them it would
// emulate bf16, slower than f32. Asks oneDNN rather than cpuid so that ONEDNN_MAX_CPU_ISA counts.
base::Status check_native_bf16() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  const unsigned bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  if ((static_cast<unsigned>(isa) & bf16) == bf16) return base::Status::ok();
  std::string found = isa_name(isa);
  if (__builtin_cpu_supports("avx512bf16")) found = "AVX512-BF16, but ONEDNN_MAX_CPU_ISA limits oneDNN to " + found;
  return base::invalid_argument("--dtype bf16 needs a CPU with AVX512-BF16 or AMX (this one has " + found +
                                "); use --dtype f32");
}

}  // namespace

base::Result<std::unique_ptr<Backend>> make_cpu_backend(DType compute_dtype) {
  if (compute_dtype != DType::kF32 && compute_dtype != DType::kBF16) {
    return base::invalid_argument(std::string("the cpu backend computes in f32 or bf16, not ") +
                                  tensor::dtype_name(compute_dtype));
  }
  if (compute_dtype == DType::kBF16) {
    if (base::Status status = check_native_bf16(); !status.is_ok()) return status;
  }
  return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(compute_dtype));
}

}  // namespace sdstack::backend
