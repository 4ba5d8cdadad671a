// The CPU backend's bf16 compute (--dtype bf16) against the f32 reference backend: convolutions,
// linears, batched matmuls and attention at SD 1.x's shapes with their fused extras, and the errors
// where bf16 cannot run. Skipped, with a message, on CPUs without AVX512-BF16 or AMX.
//
// Every op is checked twice (max_rel_diff = max |a-b| / (|b|+1)):
//  1. Against the reference on the same inputs rounded to bf16 by the test (tensor::f32_to_bf16,
//     nearest even): kRoundedTolerance = 1e-5. A product of two bf16 values is exact in f32, so all
//     that is left is the f32 accumulation order (the oracle sums in double): ~sqrt(K) f32 ulps of
//     O(1) outputs, 1e-6 or less (observed <= 5e-7). This is the tight check: the backend rounds each
//     operand exactly once, to nearest even, and does everything else (bias, residual, activation,
//     softmax) in f32; rounding the wrong operand, or truncating, shows as ~1e-3. For attention the
//     test's oracle also rounds the probabilities to bf16 before P v, as the backend does (before
//     normalising them: see attention_with_bf16_probabilities). A probability within 1e-5
//     (relative) of a bf16 rounding boundary may round the other way in the backend's f32 exp than
//     in the oracle's double one; the oracle allows each output that probability's one-ulp step
//     times |v| as slack, and holds the rest to the same 1e-5.
//  2. Against the reference on the f32 inputs: the rounding itself. bf16 keeps 8 significant bits,
//     so rounding has relative error |d| <= u = 2^-9 = 1.95e-3, spread about uniformly (rms
//     u/sqrt(3)). In y = sum_k x_k w_k over K terms each term gets (d_x + d_w), independent across
//     k, so dy has rms sqrt(2/3) u sqrt(sum_k (x_k w_k)^2): it grows as sqrt(K) for fixed-size terms
//     (the worst case 2u sum_k |x_k w_k| grows as K and is never approached). With weights scaled by
//     1/sqrt(K), as torch initialises them and these tests do, and x uniform in [-1, 1),
//     sqrt(sum (x w)^2) = 1/3 at any K: rms dy = 0.82 * 1.95e-3 / 3 = 5.3e-4, and the max over the
//     1e4..1e6 outputs of a case ~4.5 rms = 2.4e-3. kBf16Tolerance = 5e-3 is ~9 rms (times |alpha|
//     for a matmul's scaled output); a wrong tap, a lost bias or an f16/bf16 mix-up is O(0.1..1).
//     Attention (kBf16AttentionTolerance = 1e-2) averages less: v's rounding (<= u |v|), the
//     probabilities' (<= u sum p |v|) and the scores' noise (rms 0.82 u * 4/3 = 2e-3 for q, k in
//     [-2, 2), moving p by p (ds - <ds>)) add up undiluted where a query sees few keys (causal rows).
// And the loose difference must exceed kF32Noise = 1e-4: proof that bf16 really ran (f32 is ~1e-6).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/avx512_math.h"
#include "backend/cpu/cpu_internal.h"
#include "cpu_test_util.h"
#include "testing/testing.h"

namespace sdstack::backend {
namespace {

using backend::testing::linear_inputs;
using backend::testing::LinearCase;
using backend::testing::LinearInputs;
using backend::testing::reference_backend;
using backend::testing::run_linear;
using backend::testing::sd_linear_cases;
using sdstack::testing::max_rel_diff;
using sdstack::testing::random_tensor;

constexpr float kRoundedTolerance = 1e-5f;
constexpr float kBf16Tolerance = 5e-3f;
constexpr float kBf16AttentionTolerance = 1e-2f;
constexpr float kF32Noise = 1e-4f;

// The bf16 CPU backend, made once; null (and a skip message) where the CPU has no native bf16.
Backend* bf16_backend() {
  static std::unique_ptr<Backend> backend = [] {
    auto made = make_backend("cpu", {.compute_dtype = DType::kBF16});
    return made.is_ok() ? std::move(made).value() : nullptr;
  }();
  return backend.get();
}

// Skips the test where the CPU has no native bf16; fails it where it has but the backend refused.
#define SKIP_WITHOUT_BF16() \
  if (bf16_backend() == nullptr) SD_SKIP_WITHOUT_NATIVE_BF16("the cpu backend refused bf16 compute")

// t rounded to bf16 and back (undefined stays undefined): what the backend computes with.
Tensor rounded(const Tensor& t) { return t.defined() ? t.to(DType::kBF16).to(DType::kF32) : Tensor(); }

// max over elements of (|y - oracle| - slack) / (|oracle| + 1); slack is per element, or undefined (0).
float max_rel_diff_beyond(const Tensor& y, const Tensor& oracle, const Tensor& slack) {
  const std::vector<float> a = y.to_vector(), b = oracle.to_vector();
  const std::vector<float> allowed = slack.defined() ? slack.to_vector() : std::vector<float>(a.size(), 0.0f);
  float worst = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) {
    const float excess = std::fabs(a[i] - b[i]) - allowed[i];
    if (std::isnan(excess)) return INFINITY;
    worst = std::max(worst, excess / (std::fabs(b[i]) + 1.0f));
  }
  return worst;
}

// The worst differences seen by one test, printed at its end for the record.
struct Worst {
  const char* name;
  float rounded = 0.0f, loose = 0.0f;
  // Checks one output: y (bf16 backend) against y_rounded (the oracle on bf16-rounded inputs, with
  // an optional per-element slack) and y_f32 (the oracle on f32 inputs, within bf16_tolerance).
  void check(const Tensor& y, const Tensor& y_rounded, const Tensor& y_f32, float bf16_tolerance = kBf16Tolerance,
             const Tensor& slack = Tensor()) {
    const float tight = max_rel_diff_beyond(y, y_rounded, slack), bf16 = max_rel_diff(y, y_f32);
    EXPECT_LE(tight, kRoundedTolerance) << "against the oracle on bf16-rounded inputs";
    EXPECT_LE(bf16, bf16_tolerance) << "against the oracle on f32 inputs";
    EXPECT_GT(bf16, kF32Noise) << "no bf16 rounding visible: did this run in f32?";
    rounded = std::max(rounded, tight);
    loose = std::max(loose, bf16);
  }
  ~Worst() { std::printf("[ %s ] worst max_rel_diff: vs rounded inputs %.3g, vs f32 %.3g\n", name, rounded, loose); }
};

struct ConvCase {
  int64_t n, h, w, cin, cout, k, stride, padding;
  int64_t extra_bottom = 0, extra_right = 0;  // on top of `padding`, as the VAE encoder's downsample
};

struct ConvFusion {
  bool bias = true;
  bool extra_bias = false;
  bool residual = false;
  bool residual_aliases_y = false;
  float residual_scale = 1.0f;
  Activation activation = Activation::kNone;
};

// Runs `conv` (made by `backend` from weight and bias) on x with the fusion's extras; y: [N, Ho, Wo, Cout].
Tensor run_conv(Backend& backend, const Tensor& weight, const Tensor& bias, const Conv2dParams& params, const Tensor& x,
                const ConvFusion& f, const Tensor& extra_bias, const Tensor& residual) {
  Tensor y = Tensor::empty(residual.shape());
  Conv2dExtras extras;
  if (f.extra_bias) extras.extra_bias = extra_bias;
  extras.residual_scale = f.residual_scale;
  extras.activation = f.activation;
  if (f.residual && f.residual_aliases_y) {
    y.copy_from(residual);
    extras.residual = y;
  } else if (f.residual) {
    extras.residual = residual;
  }
  backend.make_conv2d(weight, bias, params)->run(x, y, extras);
  return y;
}

void check_conv(const ConvCase& c, const ConvFusion& f, uint64_t seed, Worst& worst) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(c.cin * c.k * c.k));  // torch's default init scale
  const Tensor weight = random_tensor({c.cout, c.cin, c.k, c.k}, seed, -bound, bound);
  const Tensor bias = f.bias ? random_tensor({c.cout}, seed + 1) : Tensor();
  const Tensor x = random_tensor({c.n, c.h, c.w, c.cin}, seed + 2);
  Conv2dParams params{c.stride, c.padding};
  params.extra_bottom = c.extra_bottom;
  params.extra_right = c.extra_right;
  const Tensor extra_bias = random_tensor({c.cout}, seed + 3);
  const Tensor residual =
      random_tensor({c.n, params.out_height(c.h, c.k), params.out_width(c.w, c.k), c.cout}, seed + 4);
  const Tensor y = run_conv(*bf16_backend(), weight, bias, params, x, f, extra_bias, residual);
  const Tensor y_rounded =
      run_conv(reference_backend(), rounded(weight), bias, params, rounded(x), f, extra_bias, residual);
  const Tensor y_f32 = run_conv(reference_backend(), weight, bias, params, x, f, extra_bias, residual);
  worst.check(y, y_rounded, y_f32);
}

#if defined(__AVX512F__)
// The kernels' vector rounding (to_bf16_16: vcvtneps2bf16 where the CPU has AVX512-BF16, which
// flushes denormals, with the integer path for those lanes) is tensor::f32_to_bf16's for every
// sign, exponent and upper mantissa, with the low halves where rounding turns: zero, just below,
// at and just above the half (ties to even both ways), and all ones; NaNs quiet, infinities kept.
// Shuffled, so that vectors mix denormals with normal numbers, zeros and NaNs.
TEST(CpuBf16Rounding, VectorRoundingIsTheScalarOne) {
  const uint32_t lows[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff, 0x1234, 0xc000};
  std::vector<uint32_t> patterns;
  for (uint32_t high = 0; high <= 0xffff; ++high) {
    for (uint32_t low : lows) patterns.push_back(high << 16 | low);
  }
  std::vector<uint32_t> shuffled(patterns.size());
  for (size_t i = 0; i < patterns.size(); ++i) shuffled[i] = patterns[(i * 40503) % patterns.size()];
  int64_t mismatches = 0, denormal_vectors = 0;
  for (size_t i = 0; i < shuffled.size(); i += 16) {
    alignas(64) float x[16];
    alignas(32) uint16_t y[16];
    bool denormal = false;
    for (int j = 0; j < 16; ++j) {
      x[j] = std::bit_cast<float>(shuffled[i + j]);
      denormal |= std::fpclassify(x[j]) == FP_SUBNORMAL;
    }
    denormal_vectors += denormal;
    _mm256_store_si256(reinterpret_cast<__m256i*>(y), cpu::to_bf16_16(_mm512_load_ps(x)));
    for (int j = 0; j < 16; ++j) {
      const uint16_t expected = tensor::f32_to_bf16(x[j]);
      if (y[j] != expected && ++mismatches <= 5) {
        ADD_FAILURE() << std::hex << "f32 0x" << shuffled[i + j] << ": 0x" << y[j] << ", want 0x" << expected;
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(denormal_vectors, 1000);  // the mixed vectors this test is for
}
#endif

TEST(CpuBf16Conv2d, ShapesOfSd) {
  SKIP_WITHOUT_BF16();
  const ConvCase cases[] = {
      {2, 16, 16, 4, 320, 3, 1, 1},        // UNet conv_in (Cin = 4)
      {2, 16, 16, 320, 4, 3, 1, 1},        // UNet conv_out (Cout = 4)
      {2, 16, 16, 320, 320, 3, 1, 1},      // resnet conv, 3x3 s1 p1
      {1, 8, 8, 640, 640, 3, 1, 1},        // deeper resnet conv (K = 5760)
      {2, 16, 16, 320, 320, 3, 2, 1},      // UNet downsample, 3x3 s2 p1
      {2, 16, 16, 320, 640, 1, 1, 0},      // resnet shortcut, 1x1
      {1, 12, 12, 32, 20, 3, 1, 1},        // channel counts that are no multiple of 16
      {1, 12, 12, 3, 32, 3, 1, 1},         // VAE conv_in, Cin = 3
      {2, 16, 16, 32, 32, 3, 2, 0, 1, 1},  // VAE encoder downsample: pad right and bottom, s2
      {2, 8, 8, 2560, 64, 3, 1, 1},        // up-block conv after the skip concat: 5 parts of 512
      {1, 9, 7, 1920, 32, 3, 2, 1},        // 4 parts of 480, stride 2, odd sizes
  };
  Worst worst{"conv shapes"};
  uint64_t seed = 3000;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "n" << c.n << " " << c.h << "x" << c.w << " " << c.cin << "->" << c.cout
                                      << " k" << c.k << " s" << c.stride << " p" << c.padding);
    check_conv(c, {}, seed, worst);
    seed += 10;
  }
}

// Every fusion, on one convolution and on one that runs in four parts of 320 input channels (the
// bias with the first, the residual before it, the activation after the last).
TEST(CpuBf16Conv2d, FusedExtras) {
  SKIP_WITHOUT_BF16();
  const ConvCase cases[] = {{2, 12, 12, 64, 64, 3, 1, 1}, {1, 7, 6, 1280, 48, 3, 1, 1}};
  ConvFusion fusions[7];
  fusions[0].bias = false;
  fusions[1].extra_bias = true;  // the time embedding
  fusions[2].residual = true;
  fusions[3].residual = true;
  fusions[3].residual_aliases_y = true;
  fusions[3].residual_scale = 0.5f;  // diffusers' 1 / output_scale_factor
  fusions[4].extra_bias = true;
  fusions[4].residual = true;
  fusions[4].residual_aliases_y = true;
  fusions[4].residual_scale = 0.7f;
  fusions[4].activation = Activation::kSiLU;
  fusions[5].bias = false;
  fusions[5].activation = Activation::kGELU;
  fusions[6].extra_bias = true;  // a residual read by a binary-add post-op, then the activation
  fusions[6].residual = true;
  fusions[6].activation = Activation::kSiLU;
  Worst worst{"conv fusions"};
  uint64_t seed = 3100;
  for (const ConvCase& c : cases) {
    for (int i = 0; i < 7; ++i) {
      SCOPED_TRACE(::testing::Message() << "Cin " << c.cin << ", fusion " << i);
      check_conv(c, fusions[i], seed, worst);
      seed += 10;
    }
  }
  // The binary-add residual where oneDNN may pick another implementation: odd channel counts,
  // uneven padding with stride 2, a 1x1.
  const ConvCase odd_cases[] = {
      {1, 12, 12, 32, 20, 3, 1, 1}, {2, 16, 16, 32, 32, 3, 2, 0, 1, 1}, {1, 9, 7, 24, 40, 1, 1, 0}};
  for (const ConvCase& odd : odd_cases) {
    SCOPED_TRACE(::testing::Message() << odd.cin << "->" << odd.cout << " k" << odd.k << " s" << odd.stride);
    check_conv(odd, fusions[6], seed, worst);
    seed += 10;
  }
}

// y_bf16 is y_f32 rounded to bf16 (nearest even). oneDNN may order a bf16-output kernel's f32 sums
// differently from the f32-output one's: the odd value on a rounding boundary may go one bf16 ulp
// the other way, no further.
void expect_rounded(const Tensor& y_bf16, const Tensor& y_f32) {
  ASSERT_EQ(y_bf16.dtype(), DType::kBF16);
  const std::vector<float> expected = y_f32.to(DType::kBF16).to(DType::kF32).to_vector();
  const std::vector<float> actual = y_bf16.to(DType::kF32).to_vector();
  int64_t off_by_an_ulp = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (actual[i] == expected[i]) continue;
    EXPECT_LE(std::fabs(actual[i] - expected[i]), std::fabs(expected[i]) * 0x1p-7f) << "element " << i;
    ++off_by_an_ulp;
  }
  EXPECT_LE(off_by_an_ulp, static_cast<int64_t>(actual.size()) / 100);
}

// A bf16 output (no residual) is the f32 output rounded once, to nearest even: on a convolution in
// one part, on one in four parts of 320 input channels (which add up in f32 before the rounding),
// with the bias, the time embedding and an activation.
TEST(CpuBf16Conv2d, Bf16OutputIsTheF32OneRounded) {
  SKIP_WITHOUT_BF16();
  const ConvCase cases[] = {{2, 12, 12, 64, 96, 3, 1, 1}, {1, 7, 6, 1280, 48, 3, 1, 1}};
  uint64_t seed = 3170;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "Cin " << c.cin);
    const float bound = 1.0f / std::sqrt(static_cast<float>(c.cin * 9));
    const Tensor weight = random_tensor({c.cout, c.cin, 3, 3}, seed, -bound, bound);
    const Tensor bias = random_tensor({c.cout}, seed + 1);
    const Tensor x = random_tensor({c.n, c.h, c.w, c.cin}, seed + 2);
    Conv2dExtras extras;
    extras.extra_bias = random_tensor({c.cout}, seed + 3);
    extras.activation = Activation::kSiLU;
    std::unique_ptr<Conv2d> conv = bf16_backend()->make_conv2d(weight, bias, Conv2dParams{1, 1});
    Tensor y_f32 = Tensor::empty({c.n, c.h, c.w, c.cout}), y_bf16 = Tensor::empty(y_f32.shape(), DType::kBF16);
    conv->run(x, y_f32, extras);
    conv->run(x, y_bf16, extras);
    expect_rounded(y_bf16, y_f32);
    seed += 10;
  }
}

// A bf16 residual stream (the VAE decoder's): into a bf16 y from a bf16 residual, the f32 output
// from that residual (widened) rounded once. Read by a binary-add post-op, accumulated in place
// (aliasing y, scaled), where oneDNN may take another implementation (odd channels, uneven padding
// with stride 2, a 1x1), and on a convolution in four parts of 320 input channels.
TEST(CpuBf16Conv2d, Bf16ResidualStream) {
  SKIP_WITHOUT_BF16();
  struct Case {
    ConvCase conv;
    bool aliases_y;
    float scale;
  };
  const Case cases[] = {{{2, 12, 12, 64, 64, 3, 1, 1}, false, 1.0f}, {{2, 12, 12, 64, 64, 3, 1, 1}, true, 0.5f},
                        {{1, 12, 12, 32, 20, 3, 1, 1}, false, 1.0f}, {{2, 16, 16, 32, 32, 3, 2, 0, 1, 1}, false, 1.0f},
                        {{1, 9, 7, 24, 40, 1, 1, 0}, false, 1.0f},   {{1, 7, 6, 1280, 48, 3, 1, 1}, false, 1.0f},
                        {{1, 7, 6, 1280, 48, 3, 1, 1}, true, 1.0f}};
  uint64_t seed = 3180;
  for (const Case& c : cases) {
    const ConvCase& cc = c.conv;
    SCOPED_TRACE(::testing::Message() << cc.cin << "->" << cc.cout << " k" << cc.k << " s" << cc.stride
                                      << (c.aliases_y ? " in place" : ""));
    const float bound = 1.0f / std::sqrt(static_cast<float>(cc.cin * cc.k * cc.k));
    const Tensor weight = random_tensor({cc.cout, cc.cin, cc.k, cc.k}, seed, -bound, bound);
    const Tensor bias = random_tensor({cc.cout}, seed + 1);
    const Tensor x = random_tensor({cc.n, cc.h, cc.w, cc.cin}, seed + 2);
    Conv2dParams params{cc.stride, cc.padding};
    params.extra_bottom = cc.extra_bottom;
    params.extra_right = cc.extra_right;
    const Shape y_shape = {cc.n, params.out_height(cc.h, cc.k), params.out_width(cc.w, cc.k), cc.cout};
    const Tensor residual = random_tensor(y_shape, seed + 3).to(DType::kBF16);
    std::unique_ptr<Conv2d> conv = bf16_backend()->make_conv2d(weight, bias, params);
    Tensor y_f32 = Tensor::empty(y_shape), y_bf16 = Tensor::empty(y_shape, DType::kBF16);
    Conv2dExtras extras;
    extras.residual_scale = c.scale;
    extras.activation = Activation::kSiLU;
    for (int repeat = 0; repeat < 2; ++repeat) {  // the cached primitive too
      y_f32.copy_from(residual.to(DType::kF32));
      extras.residual = y_f32;
      conv->run(x, y_f32, extras);
      if (c.aliases_y) y_bf16.copy_from(residual);
      extras.residual = c.aliases_y ? y_bf16 : residual;
      conv->run(x, y_bf16, extras);
      expect_rounded(y_bf16, y_f32);
    }
    seed += 10;
  }
}

// Conv2d::run_upsampled2x in bf16 against the f32 reference's upsample-then-convolve. The 2x2
// taps are sums of the bf16 weights rounded again, so there is no exact oracle on rounded inputs:
// only the loose bound, which a wrong or missing tap (O(0.1..1)) far exceeds. Into a bf16 y, the
// f32 result rounded; from a bf16 x, the result of the f32 x rounded.
TEST(CpuBf16Conv2d, UpsampledTwice) {
  SKIP_WITHOUT_BF16();
  const ConvCase cases[] = {
      {2, 8, 8, 320, 320, 3, 1, 1},  // UNet upsampler, batch 2 (CFG)
      {1, 5, 7, 64, 48, 3, 1, 1},    // odd, non-square sizes; Cout != Cin
      {1, 6, 4, 1280, 32, 3, 1, 1},  // input channels in parts
      {1, 6, 5, 16, 24, 1, 1, 0},    // 1x1: the fallback
  };
  float worst = 0.0f;
  uint64_t seed = 3150;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.h << "x" << c.w << " " << c.cin << "->" << c.cout << " k" << c.k);
    const float bound = 1.0f / std::sqrt(static_cast<float>(c.cin * c.k * c.k));
    const Tensor weight = random_tensor({c.cout, c.cin, c.k, c.k}, seed++, -bound, bound);
    const Tensor bias = random_tensor({c.cout}, seed++);
    const Tensor x = random_tensor({c.n, c.h, c.w, c.cin}, seed++);
    const Conv2dParams params{c.stride, c.padding};
    const Shape y_shape = {c.n, params.out_height(2 * c.h, c.k), params.out_width(2 * c.w, c.k), c.cout};
    Tensor y = Tensor::empty(y_shape), y_f32 = Tensor::empty(y_shape), scratch = Tensor::empty(y_shape);
    std::unique_ptr<Conv2d> conv = bf16_backend()->make_conv2d(weight, bias, params);
    conv->run_upsampled2x(x, y, scratch);
    reference_backend().make_conv2d(weight, bias, params)->run_upsampled2x(x, y_f32, scratch);
    const float diff = max_rel_diff(y, y_f32);
    EXPECT_LE(diff, kBf16Tolerance);
    EXPECT_GT(diff, kF32Noise) << "no bf16 rounding visible: did this run in f32?";
    worst = std::max(worst, diff);
    Tensor y_bf16 = Tensor::empty(y_shape, DType::kBF16);  // into bf16: the f32 result rounded
    conv->run_upsampled2x(x, y_bf16, scratch);
    expect_rounded(y_bf16, y);
    // From a bf16 x (the VAE decoder's stream): what the backend computes from x rounded, exactly.
    Tensor from_bf16 = Tensor::empty(y_shape, DType::kBF16), from_rounded = Tensor::empty(y_shape, DType::kBF16);
    conv->run_upsampled2x(x.to(DType::kBF16), from_bf16, scratch);
    conv->run_upsampled2x(rounded(x), from_rounded, scratch);
    EXPECT_EQ(from_bf16.to(DType::kF32).to_vector(), from_rounded.to(DType::kF32).to_vector());
  }
  std::printf("[ conv upsampled ] worst max_rel_diff vs f32 %.3g\n", worst);
}

// One bf16 Conv2d object, several input shapes and fusions: each gets its own cached primitive
// over the one set of bf16 weights, and the shared bf16 scratch grows and shrinks between them.
TEST(CpuBf16Conv2d, CachedPrimitivesAcrossShapes) {
  SKIP_WITHOUT_BF16();
  const Tensor weight = random_tensor({64, 32, 3, 3}, 3200, -0.06f, 0.06f);
  const Tensor bias = random_tensor({64}, 3201);
  std::unique_ptr<Conv2d> conv = bf16_backend()->make_conv2d(weight, bias, {1, 1});
  std::unique_ptr<Conv2d> exact = reference_backend().make_conv2d(rounded(weight), bias, {1, 1});
  std::unique_ptr<Conv2d> f32 = reference_backend().make_conv2d(weight, bias, {1, 1});
  const Shape shapes[] = {{2, 16, 16, 32}, {1, 8, 12, 32}, {2, 16, 16, 32}, {1, 8, 12, 32}};
  Worst worst{"conv cached"};
  uint64_t seed = 3210;
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(Tensor::empty(shape).shape_string());
    const Tensor x = random_tensor(shape, seed++);
    Tensor y = Tensor::empty({shape[0], shape[1], shape[2], 64});
    Tensor y_rounded = Tensor::empty(y.shape()), y_f32 = Tensor::empty(y.shape());
    Conv2dExtras extras;
    extras.activation = seed % 2 ? Activation::kSiLU : Activation::kNone;
    conv->run(x, y, extras);
    exact->run(rounded(x), y_rounded, extras);
    f32->run(x, y_f32, extras);
    worst.check(y, y_rounded, y_f32);
  }
}

// f16 checkpoint weights (SD's fp16 variant) become bf16 by way of f32; bf16 ones are taken as they are.
TEST(CpuBf16Conv2d, HalfPrecisionWeights) {
  SKIP_WITHOUT_BF16();
  Worst worst{"conv f16/bf16 weights"};
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(tensor::dtype_name(dtype));
    const Tensor weight = random_tensor({32, 64, 3, 3}, 3300, -0.04f, 0.04f).to(dtype);
    const Tensor bias = random_tensor({32}, 3301).to(dtype);
    const Tensor x = random_tensor({1, 8, 8, 64}, 3302);
    Tensor y = Tensor::empty({1, 8, 8, 32}), y_rounded = Tensor::empty(y.shape()), y_f32 = Tensor::empty(y.shape());
    bf16_backend()->make_conv2d(weight, bias, {1, 1})->run(x, y);
    reference_backend().make_conv2d(rounded(weight.to(DType::kF32)), bias, {1, 1})->run(rounded(x), y_rounded);
    reference_backend().make_conv2d(weight, bias, {1, 1})->run(x, y_f32);
    worst.check(y, y_rounded, y_f32);
  }
}

TEST(CpuBf16Linear, ShapesAndFusions) {
  SKIP_WITHOUT_BF16();
  Worst worst{"linear"};
  uint64_t seed = 3400;
  for (const LinearCase& c : sd_linear_cases()) {
    SCOPED_TRACE(::testing::Message() << "in " << c.x_shape.back() << " out " << c.out << " rows " << c.x_shape[0]);
    const LinearInputs in = linear_inputs(c, seed);
    const Tensor y = run_linear(*bf16_backend()->make_linear(in.weight, in.bias), in.x, c, in.residual);
    const Tensor y_rounded =
        run_linear(*reference_backend().make_linear(rounded(in.weight), in.bias), rounded(in.x), c, in.residual);
    const Tensor y_f32 = run_linear(*reference_backend().make_linear(in.weight, in.bias), in.x, c, in.residual);
    worst.check(y, y_rounded, y_f32);
  }
}

// A bf16 residual stream through a linear (the VAE's attention output): into a bf16 y from a bf16
// residual, read by a binary-add post-op or accumulated in place, the f32 output from that residual
// (widened) rounded once.
TEST(CpuBf16Linear, Bf16ResidualStream) {
  SKIP_WITHOUT_BF16();
  uint64_t seed = 3450;
  for (const bool aliases_y : {false, true}) {
    SCOPED_TRACE(aliases_y ? "in place" : "binary add");
    const Tensor weight = random_tensor({96, 64}, seed, -0.125f, 0.125f);
    const Tensor bias = random_tensor({96}, seed + 1);
    const Tensor x = random_tensor({2, 50, 64}, seed + 2);
    const Tensor residual = random_tensor({2, 50, 96}, seed + 3).to(DType::kBF16);
    std::unique_ptr<Linear> linear = bf16_backend()->make_linear(weight, bias);
    Tensor y_f32 = residual.to(DType::kF32), y_bf16 = Tensor::empty(residual.shape(), DType::kBF16);
    linear->run(x, y_f32, LinearExtras{Activation::kNone, y_f32});
    if (aliases_y) y_bf16.copy_from(residual);
    linear->run(x, y_bf16, LinearExtras{Activation::kNone, aliases_y ? y_bf16 : residual});
    expect_rounded(y_bf16, y_f32);
    seed += 10;
  }
}

// One bf16 Linear, several row counts (the text encoder's 77 tokens, the UNet's image tokens).
TEST(CpuBf16Linear, CachedPrimitivesAcrossShapes) {
  SKIP_WITHOUT_BF16();
  const Tensor weight = random_tensor({640, 320}, 3500, -0.056f, 0.056f);
  const Tensor bias = random_tensor({640}, 3501);
  std::unique_ptr<Linear> linear = bf16_backend()->make_linear(weight, bias);
  std::unique_ptr<Linear> exact = reference_backend().make_linear(rounded(weight), bias);
  std::unique_ptr<Linear> f32 = reference_backend().make_linear(weight, bias);
  Worst worst{"linear cached"};
  uint64_t seed = 3510;
  for (int64_t rows : {256, 77, 256, 1}) {
    const Tensor x = random_tensor({2, rows, 320}, seed++);
    Tensor y = Tensor::empty({2, rows, 640}), y_rounded = Tensor::empty(y.shape()), y_f32 = Tensor::empty(y.shape());
    linear->run(x, y, {Activation::kGELU, Tensor()});
    exact->run(rounded(x), y_rounded, {Activation::kGELU, Tensor()});
    f32->run(x, y_f32, {Activation::kGELU, Tensor()});
    worst.check(y, y_rounded, y_f32);
  }
}

TEST(CpuBf16Matmul, TransposeAndAlpha) {
  SKIP_WITHOUT_BF16();
  struct Case {
    int64_t b, m, k, n;
    bool transpose_b;
    float alpha;
  };
  const Case cases[] = {
      {2, 64, 40, 77, false, 1.0f},
      {16, 64, 40, 77, true, 0.158f},  // 1/sqrt(40)
      {3, 33, 17, 5, true, 1.0f},
      {1, 128, 320, 64, false, -2.5f},
  };
  Worst worst{"matmul"};
  uint64_t seed = 3600;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.b << "x" << c.m << "x" << c.k << "x" << c.n << " t" << c.transpose_b);
    // b scaled by 1/sqrt(K) so that outputs are O(1) at any K (see the tolerances above).
    const float bound = 1.0f / std::sqrt(static_cast<float>(c.k));
    const Tensor a = random_tensor({c.b, c.m, c.k}, seed++);
    const Tensor b = c.transpose_b ? random_tensor({c.b, c.n, c.k}, seed++, -bound, bound)
                                   : random_tensor({c.b, c.k, c.n}, seed++, -bound, bound);
    Tensor y = Tensor::empty({c.b, c.m, c.n}), y_rounded = Tensor::empty(y.shape()), y_f32 = Tensor::empty(y.shape());
    bf16_backend()->matmul(a, b, y, c.transpose_b, c.alpha);
    bf16_backend()->matmul(a, b, y, c.transpose_b, c.alpha);  // cached primitive
    reference_backend().matmul(rounded(a), rounded(b), y_rounded, c.transpose_b, c.alpha);
    reference_backend().matmul(a, b, y_f32, c.transpose_b, c.alpha);
    worst.check(y, y_rounded, y_f32, kBf16Tolerance * std::max(1.0f, std::fabs(c.alpha)));
  }
}

// Attention as the bf16 backend computes it, in double: q, k, v as given (already rounded by the
// caller), scores in double; the probabilities rounded to bf16 before they are normalised, as the
// fused kernels do: e_j = 2^(t_j - m) with t_j = log2(e) q.k_j / sqrt(D) and m = ceil(max_j t_j),
// y = sum_j bf16(e_j) v_j / sum_j e_j. (m being an integer, bf16(e_j) does not depend on which m.)
// Also returns, per output, the slack for probabilities so near a bf16 rounding boundary that the
// backend's f32 exp may round them the other way: their one-ulp step times |v|.
struct AttentionOracle {
  Tensor y, slack;
};

AttentionOracle attention_with_bf16_probabilities(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads,
                                                  bool causal) {
  const int64_t batch = q.dim(0), lq = q.dim(1), channels = q.dim(2), lk = k.dim(1), d = channels / heads;
  const auto to_bf16 = [](double x) { return tensor::bf16_to_f32(tensor::f32_to_bf16(static_cast<float>(x))); };
  constexpr double kNear = 1e-5;  // the f32 softmax's relative error is ~1e-6
  const float* pq = q.data<float>();
  const float* pk = k.data<float>();
  const float* pv = v.data<float>();
  AttentionOracle out{Tensor::zeros(q.shape()), Tensor::zeros(q.shape())};
  std::vector<double> p(static_cast<size_t>(lk)), step(static_cast<size_t>(lk));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < lq; ++i) {
        const int64_t valid = causal ? std::min(i + 1, lk) : lk;
        const float* qi = pq + (b * lq + i) * channels + h * d;
        double max_score = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < valid; ++j) {
          const float* kj = pk + (b * lk + j) * channels + h * d;
          double dot = 0.0;
          for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(qi[c]) * kj[c];
          p[j] = dot / std::sqrt(static_cast<double>(d)) * std::numbers::log2e;
          max_score = std::max(max_score, p[j]);
        }
        const double m = std::ceil(max_score);
        for (int64_t j = 0; j < valid; ++j) sum += (p[j] = std::exp2(p[j] - m));
        for (int64_t j = 0; j < valid; ++j) {
          const double exact = p[j];
          p[j] = to_bf16(exact) / sum;
          // 0 unless near a boundary
          step[j] = (to_bf16(exact * (1 + kNear)) - to_bf16(exact * (1 - kNear))) / sum;
        }
        const int64_t at = (b * lq + i) * channels + h * d;
        for (int64_t c = 0; c < d; ++c) {
          double value = 0.0, slack = 0.0;
          for (int64_t j = 0; j < valid; ++j) {
            const double vj = pv[(b * lk + j) * channels + h * d + c];
            value += p[j] * vj;
            slack += step[j] * std::fabs(vj);
          }
          out.y.data<float>()[at + c] = static_cast<float>(value);
          out.slack.data<float>()[at + c] = static_cast<float>(slack);
        }
      }
    }
  }
  return out;
}

struct AttentionCase {
  int64_t batch, lq, lk, heads, head_dim;
  bool causal;
};

// Each case through the bf16 backend (the fused AMX kernel where the CPU has AMX), through both
// AVX-512 flash kernels in bf16 that CPUs with AVX512-BF16 only run (FMAs on widened values, and
// vdpbf16ps on bf16 pairs), and through the oneDNN matmul path (CPUs without AVX-512 builds): all
// against one oracle.
void check_attention(const std::vector<AttentionCase>& cases, uint64_t seed, Worst& worst) {
  cpu::MatmulCache matmuls(std::make_shared<cpu::OneDnn>());
  matmuls.onednn().compute_dtype = DType::kBF16;
  std::vector<float> scores, packed;
  for (const AttentionCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "B" << c.batch << " Lq" << c.lq << " Lk" << c.lk << " H" << c.heads << " D"
                                      << c.head_dim << (c.causal ? " causal" : ""));
    const int64_t channels = c.heads * c.head_dim;
    const Tensor q = random_tensor({c.batch, c.lq, channels}, seed++, -2.0f, 2.0f);
    const Tensor k = random_tensor({c.batch, c.lk, channels}, seed++, -2.0f, 2.0f);
    const Tensor v = random_tensor({c.batch, c.lk, channels}, seed++);
    Tensor y = Tensor::empty(q.shape()), y_matmuls = Tensor::empty(q.shape()), y_f32 = Tensor::empty(q.shape());
    bf16_backend()->attention(q, k, v, c.heads, c.causal, y);
    cpu::attention_matmuls(matmuls, q, k, v, c.heads, c.causal, scores, y_matmuls);
    const AttentionOracle oracle =
        attention_with_bf16_probabilities(rounded(q), rounded(k), rounded(v), c.heads, c.causal);
    reference_backend().attention(q, k, v, c.heads, c.causal, y_f32);
    {
      SCOPED_TRACE("backend");
      worst.check(y, oracle.y, y_f32, kBf16AttentionTolerance, oracle.slack);
    }
    {
      SCOPED_TRACE("oneDNN matmuls");
      worst.check(y_matmuls, oracle.y, y_f32, kBf16AttentionTolerance, oracle.slack);
    }
#if defined(__AVX512F__)
    std::vector<std::pair<const char*, cpu::FlashKernel>> flash_kernels = {
        {"AVX-512 flash, widened bf16", cpu::FlashKernel::kBf16Widened}};
#if defined(__AVX512BF16__)
    flash_kernels.emplace_back("AVX-512 flash, bf16 pairs", cpu::FlashKernel::kBf16Pairs);
#endif
    std::vector<Tensor> y_flash;
    for (const auto& [name, kernel] : flash_kernels) {
      SCOPED_TRACE(name);
      y_flash.push_back(Tensor::empty(q.shape()));
      cpu::flash_attention(q, k, v, c.heads, c.causal, kernel, packed, y_flash.back());
      worst.check(y_flash.back(), oracle.y, y_f32, kBf16AttentionTolerance, oracle.slack);
    }
#endif
    // Through bf16 operands (as a bf16 model hands them over): q, k and v in bf16 give the same
    // numbers, and a bf16 y holds them rounded.
    const Tensor q16 = q.to(DType::kBF16), k16 = k.to(DType::kBF16), v16 = v.to(DType::kBF16);
    Tensor from_operands = Tensor::empty(q.shape()), y16 = Tensor::empty(q.shape(), DType::kBF16);
    bf16_backend()->attention(q16, k16, v16, c.heads, c.causal, from_operands);
    EXPECT_EQ(max_rel_diff(from_operands, y), 0.0f) << "backend, bf16 q, k, v";
    bf16_backend()->attention(q16, k16, v16, c.heads, c.causal, y16);
    EXPECT_EQ(max_rel_diff(y16.to(DType::kF32), rounded(y)), 0.0f) << "backend, bf16 y";
    cpu::attention_matmuls(matmuls, q16, k16, v16, c.heads, c.causal, scores, from_operands);
    EXPECT_EQ(max_rel_diff(from_operands, y_matmuls), 0.0f) << "oneDNN matmuls, bf16 q, k, v";
    cpu::attention_matmuls(matmuls, q16, k16, v16, c.heads, c.causal, scores, y16);
    EXPECT_EQ(max_rel_diff(y16.to(DType::kF32), rounded(y_matmuls)), 0.0f) << "oneDNN matmuls, bf16 y";
#if defined(__AVX512F__)
    for (size_t i = 0; i < flash_kernels.size(); ++i) {
      const auto& [name, kernel] = flash_kernels[i];
      cpu::flash_attention(q16, k16, v16, c.heads, c.causal, kernel, packed, from_operands);
      EXPECT_EQ(max_rel_diff(from_operands, y_flash[i]), 0.0f) << name << ", bf16 q, k, v";
      cpu::flash_attention(q16, k16, v16, c.heads, c.causal, kernel, packed, y16);
      EXPECT_EQ(max_rel_diff(y16.to(DType::kF32), rounded(y_flash[i])), 0.0f) << name << ", bf16 y";
    }
#endif
  }
}

// Scores that rise by far more than the fused kernel's headroom (2^16) from chunk to chunk, and a
// drop back: each chunk past the first is tried against the running max and redone with a new one;
// the result must still be the oracle's.
TEST(CpuBf16Attention, ScoresRisingAcrossChunks) {
  SKIP_WITHOUT_BF16();
  const int64_t lq = 40, lk = 300, d = 16;
  Tensor q = random_tensor({1, lq, d}, 3950, 0.5f, 1.0f);
  Tensor k = random_tensor({1, lk, d}, 3951, 0.0f, 0.1f);
  for (int64_t j = 0; j < lk; ++j) {
    // Key j's scores grow about 0.6 per key (about 40 in log2 units per chunk of 64), then drop.
    const float rise = j < 250 ? 0.15f * static_cast<float>(j) : 0.0f;
    for (int64_t c = 0; c < d; ++c) k.data<float>()[j * d + c] += rise;
  }
  const Tensor v = random_tensor({1, lk, d}, 3952);
  Worst worst{"attention rising scores"};  // its f32 column stays 0: not checked here
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "full");
    // Only the tight check: scores of several hundred move by whole units when q and k are
    // rounded to bf16, so this softmax is far from the f32 one by bf16's nature, not the kernel's.
    const AttentionOracle oracle = attention_with_bf16_probabilities(rounded(q), rounded(k), rounded(v), 1, causal);
    Tensor y = Tensor::empty(q.shape());
    auto check = [&](const char* name) {
      const float tight = max_rel_diff_beyond(y, oracle.y, oracle.slack);
      EXPECT_LE(tight, kRoundedTolerance) << name;
      worst.rounded = std::max(worst.rounded, tight);
    };
    bf16_backend()->attention(q, k, v, 1, causal, y);
    check("backend");
#if defined(__AVX512F__)
    // Key tiles of 128: the running max moves twice.
    std::vector<float> packed;
    cpu::flash_attention(q, k, v, 1, causal, cpu::FlashKernel::kBf16Widened, packed, y);
    check("AVX-512 flash, widened bf16");
#if defined(__AVX512BF16__)
    cpu::flash_attention(q, k, v, 1, causal, cpu::FlashKernel::kBf16Pairs, packed, y);
    check("AVX-512 flash, bf16 pairs");
#endif
#endif
  }
}

TEST(CpuBf16Attention, SelfCrossAndCausal) {
  SKIP_WITHOUT_BF16();
  Worst worst{"attention"};
  check_attention(
      {
          {2, 256, 256, 8, 40, false},  // UNet self-attention (4096 tokens at 512 px, scaled down)
          {2, 256, 77, 8, 40, false},   // UNet cross-attention to the 77 text tokens
          {2, 64, 64, 8, 80, false},    // deeper level, D = 80
          {1, 77, 77, 12, 64, true},    // CLIP text encoder, causal
          {2, 33, 20, 8, 4, true},      // D = 4, Lq != Lk, causal
          {1, 40, 40, 1, 512, false},   // VAE mid-block attention: one head of 512
          {1, 3000, 256, 2, 8, true},   // enough queries for several score tiles
      },
      3700, worst);
}

// The fused kernel's edges: query tiles of 32 and key chunks of 64 with remainders, head dims that
// are not multiples of its 32-channel (q k^T) and 16-channel (P v) tiles, the causal mask across and
// within chunks (Lq > Lk and Lq < Lk), single tokens.
TEST(CpuBf16Attention, FusedTilesAndHeadDims) {
  SKIP_WITHOUT_BF16();
  Worst worst{"attention tiles"};
  check_attention(
      {
          {2, 300, 300, 2, 8, false},   // D = 8; 300 = 9 x 32 + 12 queries, 4 x 64 + 44 keys
          {1, 200, 333, 2, 40, true},   // causal, Lq < Lk: the keys past the last query never count
          {3, 333, 200, 2, 40, true},   // causal, Lq > Lk: the last queries see every key
          {1, 130, 130, 4, 64, true},   // causal mask within and across chunks
          {2, 70, 129, 2, 80, false},   // D = 80, one key past a chunk
          {1, 65, 257, 1, 160, false},  // D = 160
          {1, 1, 1, 3, 40, false},      // one query, one key
          {1, 1, 5, 2, 7, true},        // one query sees only key 0
          {2, 3, 5, 2, 13, false},      // tiny, odd D
      },
      3800, worst);
}

// Norms, softmax and elementwise ops stay f32: the bf16 backend gives the f32 backend's bits.
TEST(CpuBf16Backend, OtherOpsStayF32) {
  SKIP_WITHOUT_BF16();
  Backend& f32 = backend::testing::cpu_backend();
  const Tensor x = random_tensor({2, 8, 8, 64}, 3800, -2.0f, 3.0f);
  const Tensor gamma = random_tensor({64}, 3801, 0.5f, 1.5f), beta = random_tensor({64}, 3802);
  Tensor a = Tensor::empty(x.shape()), b = Tensor::empty(x.shape());
  bf16_backend()->group_norm(x, gamma, beta, 32, 1e-5f, Activation::kSiLU, a);
  f32.group_norm(x, gamma, beta, 32, 1e-5f, Activation::kSiLU, b);
  EXPECT_EQ(max_rel_diff(a, b), 0.0f) << "group norm";
  bf16_backend()->layer_norm(x, gamma, beta, 1e-5f, a);
  f32.layer_norm(x, gamma, beta, 1e-5f, b);
  EXPECT_EQ(max_rel_diff(a, b), 0.0f) << "layer norm";
  bf16_backend()->softmax(x, a);
  f32.softmax(x, b);
  EXPECT_EQ(max_rel_diff(a, b), 0.0f) << "softmax";
  bf16_backend()->activation(x, Activation::kGELU, a);
  f32.activation(x, Activation::kGELU, b);
  EXPECT_EQ(max_rel_diff(a, b), 0.0f) << "gelu";
}

// Norms, GEGLU, upsampling and linears write bf16 operands that are exactly their f32 results rounded;
// convolutions and linears read them exactly as they would have rounded the f32 input themselves
// (attention: check_attention). Odd channel counts reach the conversion's scalar tail.
TEST(CpuBf16Backend, Bf16OperandsAreTheRoundedF32Ones) {
  SKIP_WITHOUT_BF16();
  Backend& bf16 = *bf16_backend();
  EXPECT_EQ(bf16.operand_dtype(), DType::kBF16);
  EXPECT_EQ(backend::testing::cpu_backend().operand_dtype(), DType::kF32);
  EXPECT_EQ(reference_backend().operand_dtype(), DType::kF32);
  for (const int64_t c : {int64_t{64}, int64_t{40}}) {
    SCOPED_TRACE("channels " + std::to_string(c));
    const Tensor x = random_tensor({2, 5, 7, c}, 3900 + c, -2.0f, 3.0f);
    const Tensor gamma = random_tensor({c}, 3901, 0.5f, 1.5f), beta = random_tensor({c}, 3902);
    Tensor f32 = Tensor::empty(x.shape()), operand = Tensor::empty(x.shape(), DType::kBF16);
    for (const Activation act : {Activation::kNone, Activation::kSiLU}) {
      bf16.group_norm(x, gamma, beta, 8, 1e-5f, act, f32);
      bf16.group_norm(x, gamma, beta, 8, 1e-5f, act, operand);
      EXPECT_EQ(max_rel_diff(operand.to(DType::kF32), rounded(f32)), 0.0f) << "group norm";
    }
    bf16.layer_norm(x, gamma, beta, 1e-5f, f32);
    bf16.layer_norm(x, gamma, beta, 1e-5f, operand);
    EXPECT_EQ(max_rel_diff(operand.to(DType::kF32), rounded(f32)), 0.0f) << "layer norm";
    Tensor gated = Tensor::empty({2, 5, 7, c / 2}), gated_operand = Tensor::empty({2, 5, 7, c / 2}, DType::kBF16);
    bf16.geglu(x, gated);
    bf16.geglu(x, gated_operand);
    EXPECT_EQ(max_rel_diff(gated_operand.to(DType::kF32), rounded(gated)), 0.0f) << "geglu";
    // GEGLU also reads a bf16 x (the feed-forward's hidden activations) exactly as its f32 values,
    // into either dtype (c / 2 = 20 features reach the loop's tail).
    const Tensor x_bf16 = x.to(DType::kBF16), x_widened = x_bf16.to(DType::kF32);
    for (Tensor* gated_out : {&gated, &gated_operand}) {
      Tensor expected = Tensor::empty(gated_out->shape(), gated_out->dtype());
      bf16.geglu(x_widened, expected);
      bf16.geglu(x_bf16, *gated_out);
      EXPECT_EQ(max_rel_diff(gated_out->to(DType::kF32), expected.to(DType::kF32)), 0.0f) << "geglu of a bf16 x";
    }
    Tensor up = Tensor::empty({2, 10, 14, c}), up_operand = Tensor::empty({2, 10, 14, c}, DType::kBF16);
    bf16.upsample_nearest2x(x, up);
    bf16.upsample_nearest2x(x, up_operand);
    EXPECT_EQ(max_rel_diff(up_operand.to(DType::kF32), rounded(up)), 0.0f) << "upsample";

    const Tensor x_operand = x.to(DType::kBF16);
    const Tensor conv_weight = random_tensor({24, c, 3, 3}, 3903, -0.1f, 0.1f), bias = random_tensor({24}, 3904);
    std::unique_ptr<Conv2d> conv = bf16.make_conv2d(conv_weight, bias, Conv2dParams{1, 1});
    Tensor from_f32 = Tensor::empty({2, 5, 7, 24}), from_operand = Tensor::empty({2, 5, 7, 24});
    conv->run(x, from_f32);
    conv->run(x_operand, from_operand);
    EXPECT_EQ(max_rel_diff(from_operand, from_f32), 0.0f) << "conv";
    std::unique_ptr<Linear> linear = bf16.make_linear(random_tensor({24, c}, 3905, -0.1f, 0.1f), bias);
    linear->run(x, from_f32);
    linear->run(x_operand, from_operand);
    EXPECT_EQ(max_rel_diff(from_operand, from_f32), 0.0f) << "linear";
    // A linear without a residual writes bf16 operands too (for attention): its f32 result rounded.
    Tensor operand_out = Tensor::empty({2, 5, 7, 24}, DType::kBF16);
    linear->run(x_operand, operand_out);
    EXPECT_EQ(max_rel_diff(operand_out.to(DType::kF32), rounded(from_f32)), 0.0f) << "linear, bf16 y";
  }
}

TEST(CpuBf16Backend, ReferenceBackendRefusesBf16) {
  auto backend = make_backend("reference", {.compute_dtype = DType::kBF16});
  ASSERT_FALSE(backend.is_ok());
  EXPECT_EQ(backend.status().message(),
            "the reference backend computes in f32 only, not bf16; use --backend cpu or --dtype f32");
}

TEST(CpuBf16Backend, F16ComputeIsAnError) {
  auto backend = make_backend("cpu", {.compute_dtype = DType::kF16});
  ASSERT_FALSE(backend.is_ok());
  EXPECT_EQ(backend.status().message(), "the cpu backend computes in f32 or bf16, not f16");
}

// Without native bf16 the cpu backend refuses it. Run in a fresh process (gtest re-executes this
// binary for the death test) where oneDNN is capped below bf16 before its first use.
TEST(CpuBf16DeathTest, RefusedWithoutNativeBf16) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI", 1);
        auto backend = make_backend("cpu", {.compute_dtype = DType::kBF16});
        std::fprintf(stderr, "%s\n", backend.is_ok() ? "made a bf16 backend" : backend.status().message().c_str());
        std::exit(backend.is_ok() ? 1 : 0);
      },
      ::testing::ExitedWithCode(0),
      "^--dtype bf16 needs a CPU with AVX512-BF16 or AMX \\(this one has .*\\); use --dtype f32\n$");
}

}  // namespace
}  // namespace sdstack::backend
