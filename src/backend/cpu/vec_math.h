// exp, erf, the activations and the bf16 rounding (and rows read or written through it) as branch-free
// float code that GCC auto-vectorises in plain loops (glibc's expf/erff are calls it cannot vectorise
// without -ffast-math, which we do not use); a row's bf16 rounding by avx512_math.h on AVX-512.
#pragma once

#include <cassert>
#include <cstdint>
#include <cstring>

#include "backend/backend.h"
#include "backend/cpu/avx512_math.h"
#include "tensor/dtype.h"

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace sdstack::backend::cpu {

// While alive, the calling thread's SSE/AVX arithmetic flushes denormal results to zero and reads
// denormal inputs as zero (MXCSR's FTZ and DAZ bits); what MXCSR held is restored after. MXCSR is
// per thread: a kernel makes one inside each of its parallel regions. The attention kernels do: an
// online softmax over peaked scores (large q.k, as a model's may be) makes probabilities of
// 2^-126 .. 2^-149, and every x86 core takes a microcode assist of ~100 cycles per denormal result
// or operand. At [1, 4096, 512] with q and k in [-10, 10) (attention_bench) the f32 flash kernel
// took 77x its time on ordinary scores, the AMX kernel 2.4x. What it changes is below 2^-126 in
// magnitude: terms that add nothing to a sum of at least 2^-17 (the max's own term), and bf16
// probabilities that vcvtne2ps2bf16 and AMX's products flush to zero anyway.
class DenormalsFlushed {
 public:
#if defined(__SSE__)
  DenormalsFlushed() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero); }
  ~DenormalsFlushed() { _mm_setcsr(saved_); }
#else
  DenormalsFlushed() {}  // elsewhere a no-op
#endif
  DenormalsFlushed(const DenormalsFlushed&) = delete;
  DenormalsFlushed& operator=(const DenormalsFlushed&) = delete;

 private:
#if defined(__SSE__)
  static constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  unsigned saved_;
#endif
};

// e^x, within ~2 ulp of expf over [-87, 88] (Cephes' polynomial); inputs are clamped to that range,
// so the result is never inf or a denormal.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // n = round(x / ln 2) by the 1.5 * 2^23 trick: floorf/nearbyintf would block vectorisation.
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // r = x - n ln2 in two steps (ln 2 split in a high part exact in float and a low part).
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 127]
  return p * __builtin_bit_cast(float, bits);
}

// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7, well below the f32 tolerances);
// |x| capped at kErfSaturated, where erf is 1 in f32 and no intermediate is yet a denormal.
inline float erf_approx(float x) {
  float a = x < 0.0f ? -x : x;
  a = a > kErfSaturated ? kErfSaturated : a;
  float t = 1.0f / (1.0f + 0.3275911f * a);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  float e = 1.0f - p * t * exp_approx(-a * a);
  return x < 0.0f ? -e : e;
}

inline float silu(float x) { return x / (1.0f + exp_approx(-x)); }
inline float gelu(float x) { return 0.5f * x * (1.0f + erf_approx(x * 0.70710678118654752f)); }
inline float quick_gelu(float x) { return x / (1.0f + exp_approx(-1.702f * x)); }

// An element as f32: f32 itself, or a bf16's bits as the high half of an f32 (exact).
inline float widen(float x) { return x; }
inline float widen(uint16_t x) { return tensor::bf16_to_f32(x); }

// y = x rounded to bf16 by tensor::f32_to_bf16 (branch-free: the loop vectorises), on AVX-512 by
// to_bf16_16 (the same bits; vcvtneps2bf16 where the CPU has AVX512-BF16).
inline void to_bf16_row(const float* x, uint16_t* y, int64_t count) {
#if defined(__AVX512F__)
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), to_bf16_16(_mm512_loadu_ps(x + i)));
  }
  if (i < count) {
    const __mmask16 tail = first_lanes(count - i);
    _mm256_mask_storeu_epi16(y + i, tail, to_bf16_16(_mm512_maskz_loadu_ps(tail, x + i)));
  }
#else
  for (int64_t i = 0; i < count; ++i) y[i] = tensor::f32_to_bf16(x[i]);
#endif
}

// Rows of a tensor that is f32 or bf16, as the bf16 operands a kernel packs (attention's q, k, v).
struct Bf16Source {
  const void* data;
  bool is_bf16;
  explicit Bf16Source(const Tensor& x) : data(x.raw_data()), is_bf16(x.dtype() == DType::kBF16) {
    assert(x.dtype() == DType::kF32 || x.dtype() == DType::kBF16);
  }
  // y = elements [at, at + count) as bf16: copied, or rounded as to_bf16_row rounds.
  void read(int64_t at, uint16_t* y, int64_t count) const {
    if (is_bf16) {
      std::memcpy(y, static_cast<const uint16_t*>(data) + at, static_cast<size_t>(count) * 2);
    } else {
      to_bf16_row(static_cast<const float*>(data) + at, y, count);
    }
  }
  // y = elements [at, at + count) as f32: copied from f32, or the bf16 values (read() above)
  // widened where the source is bf16 or `as_bf16` asks for them.
  void read_f32(int64_t at, float* y, int64_t count, bool as_bf16) const {
    if (!is_bf16 && !as_bf16) {
      std::memcpy(y, static_cast<const float*>(data) + at, static_cast<size_t>(count) * sizeof(float));
      return;
    }
    constexpr int64_t kRun = 256;
    uint16_t run[kRun];
    for (int64_t i = 0; i < count; i += kRun) {
      const int64_t n = count - i < kRun ? count - i : kRun;
      read(at + i, run, n);
      for (int64_t k = 0; k < n; ++k) y[i + k] = tensor::bf16_to_f32(run[k]);
    }
  }
};

// y's elements [at, at + count) = x, in y's dtype (f32, or bf16 rounded as to_bf16_row rounds).
inline void write_row(const float* x, Tensor& y, int64_t at, int64_t count) {
  if (y.dtype() == DType::kBF16) {
    to_bf16_row(x, y.data<uint16_t>() + at, count);
  } else {
    std::memcpy(y.data<float>() + at, x, static_cast<size_t>(count) * sizeof(float));
  }
}

// Softmax of one row of `cols` floats, max-subtracted so large logits do not overflow; y may alias x.
inline void softmax_row(const float* x, float* y, int64_t cols) {
  float mx = x[0];
#pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < cols; ++i) mx = x[i] > mx ? x[i] : mx;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < cols; ++i) {
    const float e = exp_approx(x[i] - mx);
    y[i] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < cols; ++i) y[i] *= inv;
}

}  // namespace sdstack::backend::cpu
