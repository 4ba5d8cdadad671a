// The CPU backend's norms, softmax, attention and elementwise ops against the reference backend at
// SD 1.x's shapes (spatial and sequence sizes scaled down where the plain-loop oracle is slow).
//
// Tolerances (max_rel_diff = max |a-b| / (|b|+1)), each from how the CPU kernel computes:
//  - group/layer norm 1e-5: statistics in double as the oracle, f32 normalise (a few ulp of O(1-10) values);
//  - softmax, activations 1e-6: a polynomial exp within ~2 ulp and an erf within 1.5e-7 (observed
//    <= 3e-7); GEGLU 2e-6: the same GELU error times |h| (up to 4 here);
//  - attention 1e-5: f32 sums over D (scores) and Lk (P v) around an f32 softmax, fused (flash: an
//    online softmax over key tiles) or as two oneDNN matmuls;
//  - add, mul, scale, upsample, concat: exact (0), the same single f32 operation or a copy.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "backend/backend.h"
#include "backend/cpu/vec_math.h"
#include "cpu_test_util.h"
#include "testing/testing.h"

namespace sdstack::backend {
namespace {

using backend::testing::cpu_backend;
using backend::testing::reference_backend;
using sdstack::testing::max_rel_diff;
using sdstack::testing::random_tensor;

constexpr float kNormTolerance = 1e-5f;
constexpr float kPointwiseTolerance = 1e-6f;
constexpr float kGegluTolerance = 2e-6f;
constexpr float kAttentionTolerance = 1e-5f;

TEST(CpuGroupNorm, SdShapesWithAndWithoutSiLU) {
  struct Case {
    Shape shape;
    int64_t groups;
    float eps;
    Activation activation;
    bool in_place;
  };
  const Case cases[] = {
      {{2, 16, 16, 320}, 32, 1e-5f, Activation::kSiLU, false},  // UNet resnet norm1
      {{2, 16, 16, 320}, 32, 1e-6f, Activation::kNone, false},  // UNet transformer norm (eps 1e-6)
      {{2, 8, 8, 640}, 32, 1e-5f, Activation::kSiLU, true},     // in place (y aliases x)
      {{1, 16, 16, 128}, 32, 1e-6f, Activation::kSiLU, false},  // VAE decoder
      {{2, 5, 7, 96}, 32, 1e-5f, Activation::kNone, false},     // 3 channels per group, odd sizes
  };
  uint64_t seed = 1000;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << Tensor::empty(c.shape).shape_string() << " eps " << c.eps);
    // An offset mean (3) and spread (x in [-1, 7)) exercise the variance's cancellation.
    const Tensor x = random_tensor(c.shape, seed++, -1.0f, 7.0f);
    const int64_t channels = c.shape.back();
    const Tensor gamma = random_tensor({channels}, seed++, 0.5f, 1.5f);
    const Tensor beta = random_tensor({channels}, seed++);
    Tensor y_ref = Tensor::empty(c.shape);
    reference_backend().group_norm(x, gamma, beta, c.groups, c.eps, c.activation, y_ref);
    Tensor y_cpu = Tensor::empty(c.shape);
    if (c.in_place) {
      y_cpu.copy_from(x);
      cpu_backend().group_norm(y_cpu, gamma, beta, c.groups, c.eps, c.activation, y_cpu);
    } else {
      cpu_backend().group_norm(x, gamma, beta, c.groups, c.eps, c.activation, y_cpu);
    }
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kNormTolerance);
  }
}

// Statistics over many 64-pixel blocks and both threads' ranges, and a mean of 100 next to a spread
// of 0.3: the block means' float rounding and a float x - mean would show here.
TEST(CpuGroupNorm, LargeMeanOverManyBlocks) {
  const Shape shape{2, 48, 40, 128};
  const Tensor x = random_tensor(shape, 1050, 100.0f, 101.0f);
  const Tensor gamma = random_tensor({128}, 1051, 0.5f, 1.5f);
  const Tensor beta = random_tensor({128}, 1052);
  for (Activation activation : {Activation::kNone, Activation::kSiLU}) {
    Tensor y_ref = Tensor::empty(shape), y_cpu = Tensor::empty(shape);
    reference_backend().group_norm(x, gamma, beta, 32, 1e-6f, activation, y_ref);
    cpu_backend().group_norm(x, gamma, beta, 32, 1e-6f, activation, y_cpu);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kNormTolerance);
  }
}

// The fused SiLU over its whole range: scaled by gamma up to 120, the normalised values reach
// beyond -87 (where e^-x would overflow f32) and +88; into f32 and bf16, with a channel tail (C = 40).
TEST(CpuGroupNorm, SiLUOverTheWholeFloatRange) {
  const Shape shape{1, 9, 11, 40};
  const Tensor x = random_tensor(shape, 1070, -1.0f, 1.0f);
  const Tensor gamma = random_tensor({40}, 1071, 60.0f, 120.0f);
  const Tensor beta = random_tensor({40}, 1072);
  Tensor y_ref = Tensor::empty(shape), y_cpu = Tensor::empty(shape), y_bf16 = Tensor::empty(shape, DType::kBF16);
  reference_backend().group_norm(x, gamma, beta, 8, 1e-5f, Activation::kSiLU, y_ref);
  cpu_backend().group_norm(x, gamma, beta, 8, 1e-5f, Activation::kSiLU, y_cpu);
  cpu_backend().group_norm(x, gamma, beta, 8, 1e-5f, Activation::kSiLU, y_bf16);
  Tensor normed = Tensor::empty(shape);  // before the SiLU
  reference_backend().group_norm(x, gamma, beta, 8, 1e-5f, Activation::kNone, normed);
  const std::vector<float> pre = normed.to_vector();
  EXPECT_LT(*std::min_element(pre.begin(), pre.end()), -87.0f);
  EXPECT_GT(*std::max_element(pre.begin(), pre.end()), 88.0f);
  EXPECT_LE(max_rel_diff(y_cpu, y_ref), kNormTolerance);
  EXPECT_EQ(y_bf16.to(DType::kF32).to_vector(), y_cpu.to(DType::kBF16).to(DType::kF32).to_vector());
}

// A bf16 x (a bf16 layer's output) is normalised as its exact f32 value would be; into f32, and
// into bf16 as that f32 result rounded, also in place.
TEST(CpuGroupNorm, Bf16InputIsWidenedExactly) {
  const Shape shape{2, 24, 20, 128};
  const Tensor x = random_tensor(shape, 1060, -1.0f, 7.0f).to(DType::kBF16);
  const Tensor gamma = random_tensor({128}, 1061, 0.5f, 1.5f);
  const Tensor beta = random_tensor({128}, 1062);
  for (Activation activation : {Activation::kNone, Activation::kSiLU}) {
    Tensor y_ref = Tensor::empty(shape), y_cpu = Tensor::empty(shape), y_bf16 = Tensor::empty(shape, DType::kBF16);
    reference_backend().group_norm(x.to(DType::kF32), gamma, beta, 32, 1e-5f, activation, y_ref);
    cpu_backend().group_norm(x, gamma, beta, 32, 1e-5f, activation, y_cpu);
    cpu_backend().group_norm(x, gamma, beta, 32, 1e-5f, activation, y_bf16);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kNormTolerance);
    EXPECT_EQ(y_bf16.to(DType::kF32).to_vector(), y_cpu.to(DType::kBF16).to(DType::kF32).to_vector());
    Tensor in_place = x.to(DType::kBF16);  // a copy of x, normalised over itself
    cpu_backend().group_norm(in_place, gamma, beta, 32, 1e-5f, activation, in_place);
    EXPECT_EQ(in_place.to(DType::kF32).to_vector(), y_bf16.to(DType::kF32).to_vector());
  }
}

TEST(CpuLayerNorm, RowsOfSdAndClip) {
  // 333 channels: whole vectors and a tail.
  const Shape shapes[] = {{2, 256, 320}, {1, 77, 768}, {2, 64, 1280}, {3, 5, 7}, {2, 3, 333}};
  uint64_t seed = 1100;
  for (const Shape& shape : shapes) {
    const Tensor x = random_tensor(shape, seed++, -2.0f, 6.0f);
    const Tensor gamma = random_tensor({shape.back()}, seed++, 0.5f, 1.5f);
    const Tensor beta = random_tensor({shape.back()}, seed++);
    Tensor y_ref = Tensor::empty(shape), y_cpu = Tensor::empty(shape);
    reference_backend().layer_norm(x, gamma, beta, 1e-5f, y_ref);
    y_cpu.copy_from(x);
    cpu_backend().layer_norm(y_cpu, gamma, beta, 1e-5f, y_cpu);  // in place
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kNormTolerance) << y_ref.shape_string();
  }
}

TEST(CpuSoftmax, LargeAndSmallValues) {
  const Tensor small = random_tensor({4, 3, 77}, 1200, -3.0f, 3.0f);
  const Tensor large = random_tensor({2, 64, 1000}, 1201, -500.0f, 500.0f);  // would overflow a naive exp
  const Tensor single = random_tensor({5, 1}, 1202);
  for (const Tensor& x : {small, large, single}) {
    Tensor y_ref = Tensor::empty(x.shape()), y_cpu = Tensor::empty(x.shape());
    reference_backend().softmax(x, y_ref);
    cpu_backend().softmax(x, y_cpu);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kPointwiseTolerance) << x.shape_string();
  }
}

TEST(CpuAttention, SelfCrossAndCausal) {
  struct Case {
    int64_t batch, lq, lk, heads, head_dim;
    bool causal;
  };
  const Case cases[] = {
      {2, 256, 256, 8, 40, false},  // UNet self-attention (4096 tokens at 512 px, scaled down)
      {2, 256, 77, 8, 40, false},   // UNet cross-attention to the 77 text tokens
      {2, 64, 64, 8, 80, false},    // deeper level, D = 80
      {1, 77, 77, 12, 64, true},    // CLIP text encoder, causal
      {2, 33, 20, 8, 4, true},      // D = 4, Lq != Lk, causal
      {1, 40, 40, 1, 512, false},   // VAE mid-block attention: one head of 512
  };
  uint64_t seed = 1300;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "B" << c.batch << " Lq" << c.lq << " Lk" << c.lk << " H" << c.heads << " D"
                                      << c.head_dim << (c.causal ? " causal" : ""));
    const int64_t channels = c.heads * c.head_dim;
    const Tensor q = random_tensor({c.batch, c.lq, channels}, seed++, -2.0f, 2.0f);
    const Tensor k = random_tensor({c.batch, c.lk, channels}, seed++, -2.0f, 2.0f);
    const Tensor v = random_tensor({c.batch, c.lk, channels}, seed++);
    Tensor y_ref = Tensor::empty({c.batch, c.lq, channels}), y_cpu = Tensor::empty({c.batch, c.lq, channels});
    reference_backend().attention(q, k, v, c.heads, c.causal, y_ref);
    cpu_backend().attention(q, k, v, c.heads, c.causal, y_cpu);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kAttentionTolerance);
  }
}

// Enough queries that the CPU backend splits them into several tiles (64 MB of scores per tile).
TEST(CpuAttention, ManyQueriesAreTiled) {
  const int64_t batch = 1, lq = 3000, lk = 2048, heads = 8, d = 8;
  const Tensor q = random_tensor({batch, lq, heads * d}, 1400);
  const Tensor k = random_tensor({batch, lk, heads * d}, 1401);
  const Tensor v = random_tensor({batch, lk, heads * d}, 1402);
  Tensor y_ref = Tensor::empty({batch, lq, heads * d}), y_cpu = Tensor::empty({batch, lq, heads * d});
  reference_backend().attention(q, k, v, heads, true, y_ref);
  cpu_backend().attention(q, k, v, heads, true, y_cpu);
  EXPECT_LE(max_rel_diff(y_cpu, y_ref), kAttentionTolerance);
}

// The fused kernel's edges: query tiles of 64 and key tiles of 128 with remainders, head dims that
// are not multiples of its 6-channel and 16-lane blocks, the causal mask across and within key
// tiles (Lq > Lk and Lq < Lk), single tokens, and scores large enough that the online softmax's
// running max moves many times.
TEST(CpuAttention, FlashTilesAndHeadDims) {
  struct Case {
    int64_t batch, lq, lk, heads, head_dim;
    bool causal;
    float range;  // q and k in [-range, range)
  };
  const Case cases[] = {
      {2, 4096, 77, 8, 40, false, 2.0f},  // UNet cross-attention at 512 px, full size
      {2, 300, 300, 2, 8, false, 2.0f},   // D = 8; 300 = 4 x 64 + 44 queries, 2 x 128 + 44 keys
      {1, 200, 333, 2, 40, true, 2.0f},   // causal, Lq < Lk: the keys past the last query never count
      {3, 333, 200, 2, 40, true, 2.0f},   // causal, Lq > Lk: the last queries see every key
      {1, 130, 130, 4, 64, true, 2.0f},   // causal mask within and across key tiles
      {2, 70, 129, 2, 80, false, 2.0f},   // D = 80, one key past a tile
      {1, 65, 257, 1, 160, false, 2.0f},  // D = 160
      {1, 1, 1, 3, 40, false, 2.0f},      // one query, one key
      {1, 1, 5, 2, 7, true, 2.0f},        // one query sees only key 0
      {2, 3, 5, 2, 13, false, 2.0f},      // tiny, odd D
      {1, 300, 700, 2, 64, false, 5.0f},  // scores of rms ~8: the max moves, many exps underflow
  };
  uint64_t seed = 1350;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "B" << c.batch << " Lq" << c.lq << " Lk" << c.lk << " H" << c.heads << " D"
                                      << c.head_dim << (c.causal ? " causal" : ""));
    const int64_t channels = c.heads * c.head_dim;
    const Tensor q = random_tensor({c.batch, c.lq, channels}, seed++, -c.range, c.range);
    const Tensor k = random_tensor({c.batch, c.lk, channels}, seed++, -c.range, c.range);
    const Tensor v = random_tensor({c.batch, c.lk, channels}, seed++);
    Tensor y_ref = Tensor::empty({c.batch, c.lq, channels}), y_cpu = Tensor::empty({c.batch, c.lq, channels});
    reference_backend().attention(q, k, v, c.heads, c.causal, y_ref);
    cpu_backend().attention(q, k, v, c.heads, c.causal, y_cpu);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kAttentionTolerance);
  }
}

#if defined(__SSE__)
// MXCSR's flush-to-zero and denormals-are-zero bits.
constexpr unsigned kFlushBits = 0x8040;

// How many of the softmax probabilities of heads x queries x keys (q, k: [1, L, H*D]) are
// below 2^-126, from scores in double.
int64_t denormal_probabilities(const Tensor& q, const Tensor& k, int64_t heads) {
  const int64_t lq = q.dim(1), lk = k.dim(1), channels = q.dim(2), d = channels / heads;
  int64_t count = 0;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < lq; ++i) {
      std::vector<double> s(static_cast<size_t>(lk));
      for (int64_t j = 0; j < lk; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) {
          dot += static_cast<double>(q.data<float>()[i * channels + h * d + c]) *
                 k.data<float>()[j * channels + h * d + c];
        }
        s[static_cast<size_t>(j)] = dot / std::sqrt(static_cast<double>(d));
      }
      const double max = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += x = std::exp(x - max);  // s now holds the unnormalised terms
      for (double x : s) count += x / sum < std::ldexp(1.0, -126) ? 1 : 0;
    }
  }
  return count;
}

// Scores so peaked that most probabilities fall below 2^-126, where x86 cores slow down ~100x per
// operation: the kernels compute them with denormals flushed (cpu::DenormalsFlushed), which
// changes nothing above 2^-126, and leave every thread's floating-point mode as they found it.
// Tolerance 1e-4: scores of rms ~33 carry f32 rounding of ~1e-5 relative into the probabilities.
TEST(CpuAttention, PeakedScoresWithDenormalsFlushed) {
  struct Case {
    int64_t lq, lk, heads, head_dim;
    bool causal;
  };
  const Case cases[] = {
      {200, 300, 2, 64, false},  // the flash kernel, several key tiles
      {130, 130, 2, 64, true},   // causal
      {64, 100, 1, 512, false},  // one head of 512, as the VAE's
  };
  uint64_t seed = 1380;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "Lq" << c.lq << " Lk" << c.lk << " H" << c.heads << " D" << c.head_dim
                                      << (c.causal ? " causal" : ""));
    const int64_t channels = c.heads * c.head_dim;
    // q.k / sqrt(D) of rms 100 / 3 (the variance of U[-10, 10), squared, D times, over D).
    const Tensor q = random_tensor({1, c.lq, channels}, seed++, -10.0f, 10.0f);
    const Tensor k = random_tensor({1, c.lk, channels}, seed++, -10.0f, 10.0f);
    const Tensor v = random_tensor({1, c.lk, channels}, seed++);
    EXPECT_GT(denormal_probabilities(q, k, c.heads), c.lq * c.lk * c.heads / 4);  // of the full softmax's
    Tensor y_ref = Tensor::empty({1, c.lq, channels}), y_cpu = Tensor::empty({1, c.lq, channels});
    reference_backend().attention(q, k, v, c.heads, c.causal, y_ref);
    cpu_backend().attention(q, k, v, c.heads, c.causal, y_cpu);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), 1e-4f);
    int flushing = 0;
#pragma omp parallel reduction(+ : flushing)
    flushing += (_mm_getcsr() & kFlushBits) != 0 ? 1 : 0;
    EXPECT_EQ(flushing, 0) << "a thread left in flush-to-zero mode";
  }
}

TEST(CpuDenormalsFlushed, FlushesWhileAliveAndRestoresAfter) {
  volatile float tiny = 1e-30f, factor = 1e-10f;  // volatile: multiplied at run time, under MXCSR
  const unsigned before = _mm_getcsr();
  EXPECT_GT(std::fabs(tiny * factor), 0.0f);  // 1e-40, a denormal
  {
    const cpu::DenormalsFlushed flushed;
    EXPECT_EQ(_mm_getcsr() & kFlushBits, kFlushBits);
    EXPECT_EQ(tiny * factor, 0.0f);
    { const cpu::DenormalsFlushed nested; }
    EXPECT_EQ(tiny * factor, 0.0f) << "a nested guard restores the flushing mode it found";
  }
  EXPECT_EQ(_mm_getcsr() & kFlushBits, before & kFlushBits);
  EXPECT_GT(std::fabs(tiny * factor), 0.0f);
}
#endif

TEST(CpuElementwise, Activations) {
  const Tensor x = random_tensor({2, 9, 9, 333}, 1500, -20.0f, 20.0f);  // includes the saturated tails
  for (Activation act : {Activation::kNone, Activation::kSiLU, Activation::kGELU, Activation::kQuickGELU}) {
    Tensor y_ref = Tensor::empty(x.shape()), y_cpu = Tensor::empty(x.shape());
    reference_backend().activation(x, act, y_ref);
    cpu_backend().activation(x, act, y_cpu);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kPointwiseTolerance) << "activation " << static_cast<int>(act);
    y_cpu.copy_from(x);
    cpu_backend().activation(y_cpu, act, y_cpu);  // in place
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kPointwiseTolerance) << "in place, activation " << static_cast<int>(act);
  }
}

// SD's feature counts (whole vectors), and 333 (a masked tail), with gates out in gelu's tails.
TEST(CpuElementwise, Geglu) {
  for (const int64_t features : {1280, 333}) {
    SCOPED_TRACE(features);
    const Tensor x = random_tensor({2, 64, 2 * features}, 1600, -6.0f, 6.0f);
    Tensor y_ref = Tensor::empty({2, 64, features}), y_cpu = Tensor::empty({2, 64, features});
    reference_backend().geglu(x, y_ref);
    cpu_backend().geglu(x, y_cpu);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kGegluTolerance);
  }
}

TEST(CpuElementwise, AddMulScaleWithBroadcast) {
  const Tensor a = random_tensor({2, 8, 8, 320}, 1700);
  const Tensor same = random_tensor({2, 8, 8, 320}, 1701);
  const Tensor bias = random_tensor({320}, 1702);
  const Tensor row = random_tensor({8, 320}, 1703);
  for (const Tensor& b : {same, bias, row}) {
    Tensor y_ref = Tensor::empty(a.shape()), y_cpu = Tensor::empty(a.shape());
    reference_backend().add(a, b, y_ref);
    cpu_backend().add(a, b, y_cpu);
    EXPECT_EQ(max_rel_diff(y_cpu, y_ref), 0.0f) << "add " << b.shape_string();
    reference_backend().mul(a, b, y_ref);
    y_cpu.copy_from(a);
    cpu_backend().mul(y_cpu, b, y_cpu);  // y aliases a
    EXPECT_EQ(max_rel_diff(y_cpu, y_ref), 0.0f) << "mul " << b.shape_string();
  }
  Tensor y_ref = Tensor::empty(a.shape()), y_cpu = Tensor::empty(a.shape());
  reference_backend().scale(a, 0.18215f, y_ref);
  cpu_backend().scale(a, 0.18215f, y_cpu);
  EXPECT_EQ(max_rel_diff(y_cpu, y_ref), 0.0f);
}

TEST(CpuElementwise, UpsampleAndConcat) {
  const Tensor x = random_tensor({2, 5, 7, 40}, 1800);
  Tensor up_ref = Tensor::empty({2, 10, 14, 40}), up_cpu = Tensor::empty({2, 10, 14, 40});
  reference_backend().upsample_nearest2x(x, up_ref);
  cpu_backend().upsample_nearest2x(x, up_cpu);
  EXPECT_EQ(max_rel_diff(up_cpu, up_ref), 0.0f);

  const Tensor a = random_tensor({2, 8, 8, 640}, 1801), b = random_tensor({2, 8, 8, 320}, 1802);
  Tensor cat_ref = Tensor::empty({2, 8, 8, 960}), cat_cpu = Tensor::empty({2, 8, 8, 960});
  reference_backend().concat_last(a, b, cat_ref);
  cpu_backend().concat_last(a, b, cat_cpu);
  EXPECT_EQ(max_rel_diff(cat_cpu, cat_ref), 0.0f);
}

}  // namespace
}  // namespace sdstack::backend
