// Normalisation CPU kernels: group norm over NHWC with SiLU fused, layer norm and softmax over the
// last dim. Statistics accumulate in double so that they match the (double) reference closely.
#include <omp.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <utility>
#include <vector>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include "backend/cpu/avx512_math.h"
#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/vec_math.h"

namespace sdstack::backend::cpu {

// The group norm's loops in 512-bit vectors where the CPU has them: -march=native on Sapphire
// Rapids prefers 256 bits, and the fused SiLU then costs a quarter more time on top of the memory
// traffic (52 -> 43 ms at [1, 512, 512, 128] on one core).
#pragma GCC push_options
#pragma GCC target("prefer-vector-width=512")

namespace {

// Pixels whose statistics are taken in float before they are merged (in double) into a channel's
// running ones: a block of at most 64 pixels x C channels (<= 128 KB at C = 512) stays in L1/L2
// for its two short float passes, so the tensor is read from memory once for the statistics.
constexpr int64_t kBlockPixels = 64;

// How far ahead of a row the norms' passes ask for the cache lines they will read: rows of a few
// hundred bytes to a few KB (C = 128 in bf16 at the VAE's largest level, 320-1280 floats in the
// UNet's layer norms), read in order, outpace the hardware prefetcher. Measured at
// [1, 512, 512, 128] bf16 with SiLU, in place, 2 threads: 13.8 -> 10.5-10.9 ms alone (2048 or 8192
// bytes did no better); the UNet's layer norms 20-35% less time in a step.
constexpr int64_t kPrefetchBytes = 4096;

// Asks for the cache lines `bytes` of a row at p will have, kPrefetchBytes further on.
inline void prefetch_ahead(const void* p, int64_t bytes) {
#if defined(__SSE__)
  const char* ahead = static_cast<const char*>(p) + kPrefetchBytes;
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
#else
  (void)p;
  (void)bytes;
#endif
}

// Per channel, the mean and the sum of squared deviations from it (M2) of `count` values each.
struct ChannelMoments {
  double count = 0;
  std::vector<double> mean, m2;
};

// Channel by channel (c of them; one for a single set of values): a <- the moments of a's values and
// b's, by Chan et al.'s pairwise update (no E[x^2] - mean^2, which cancels catastrophically when the
// variance is small next to the mean). Every channel has seen the same number of values, so the
// weights are shared and the loop over channels vectorises.
void merge_channels(double& a_count, double* a_mean, double* a_m2, double b_count, const double* b_mean,
                    const double* b_m2, int64_t c) {
  if (b_count == 0) return;
  const double count = a_count + b_count;
  const double to_mean = b_count / count, to_m2 = a_count * b_count / count;
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) {
    const double delta = b_mean[ch] - a_mean[ch];
    a_mean[ch] += delta * to_mean;
    a_m2[ch] += b_m2[ch] + delta * delta * to_m2;
  }
  a_count = count;
}

// Per channel of a block of `rows` pixels at x (C = c channels): s = the block mean, rounded to
// float (the float sum over the rows, in order, divided by their count), and from it the sums r of
// the deviations d = x - s and q of their squares d d, in float.
template <typename T>
void block_sums_scalar(const T* x, int64_t rows, int64_t c, float* s, float* r, float* q) {
  std::fill(s, s + c, 0.0f);
  for (int64_t p = 0; p < rows; ++p) {
    const T* row = x + p * c;
    prefetch_ahead(row, c * static_cast<int64_t>(sizeof(T)));
#pragma omp simd
    for (int64_t ch = 0; ch < c; ++ch) s[ch] += widen(row[ch]);
  }
  const float count = static_cast<float>(rows);
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) {
    s[ch] /= count;
    r[ch] = 0.0f;
    q[ch] = 0.0f;
  }
  for (int64_t p = 0; p < rows; ++p) {
    const T* row = x + p * c;
#pragma omp simd
    for (int64_t ch = 0; ch < c; ++ch) {
      const float d = widen(row[ch]) - s[ch];
      r[ch] += d;
      q[ch] += d * d;
    }
  }
}

#if defined(__AVX512F__)
// block_sums over channels [ch, ch + 16 kVectors) (those below c), the same float operations in
// the same order with the accumulators in registers: the loops above keep them in memory, and
// each row's additions then wait on the previous row's stores: the statistics of [1, 512, 512, 128] in bf16
// took 5.2 ms on 2 threads that way, 3.1 ms this way (a plain read of it: 2.1 ms).
template <int kVectors, typename T>
void block_sums_16(const T* x, int64_t rows, int64_t c, int64_t ch, float* s, float* r, float* q) {
  __mmask16 lanes[kVectors];
  __m512 sum[kVectors], dev[kVectors], sq[kVectors];
  for (int v = 0; v < kVectors; ++v) {
    lanes[v] = first_lanes(c - ch - 16 * v);
    sum[v] = _mm512_setzero_ps();
    dev[v] = _mm512_setzero_ps();
    sq[v] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < rows; ++p) {
    const T* row = x + p * c;
    if (ch == 0) prefetch_ahead(row, c * static_cast<int64_t>(sizeof(T)));
    for (int v = 0; v < kVectors; ++v) sum[v] = _mm512_add_ps(sum[v], load_16(lanes[v], row + ch + 16 * v));
  }
  const __m512 count = _mm512_set1_ps(static_cast<float>(rows));
  for (int v = 0; v < kVectors; ++v) sum[v] = _mm512_div_ps(sum[v], count);  // the block mean
  for (int64_t p = 0; p < rows; ++p) {
    const T* row = x + p * c + ch;
    for (int v = 0; v < kVectors; ++v) {
      const __m512 d = _mm512_sub_ps(load_16(lanes[v], row + 16 * v), sum[v]);
      dev[v] = _mm512_add_ps(dev[v], d);
      sq[v] = _mm512_add_ps(sq[v], _mm512_mul_ps(d, d));
    }
  }
  for (int v = 0; v < kVectors; ++v) {
    _mm512_mask_storeu_ps(s + ch + 16 * v, lanes[v], sum[v]);
    _mm512_mask_storeu_ps(r + ch + 16 * v, lanes[v], dev[v]);
    _mm512_mask_storeu_ps(q + ch + 16 * v, lanes[v], sq[v]);
  }
}
#endif

template <typename T>
void block_sums(const T* x, int64_t rows, int64_t c, float* s, float* r, float* q) {
#if defined(__AVX512F__)
  // Eight vectors at a time (the sums, deviations, squares and means of 128 channels fill 32
  // registers less eight), then the remaining vectors.
  int64_t ch = 0;
  for (; ch + 128 <= c; ch += 128) block_sums_16<8>(x, rows, c, ch, s, r, q);
  for (; ch + 64 <= c; ch += 64) block_sums_16<4>(x, rows, c, ch, s, r, q);
  for (; ch < c; ch += 16) block_sums_16<1>(x, rows, c, ch, s, r, q);
#else
  block_sums_scalar(x, rows, c, s, r, q);
#endif
}

// Per-channel moments of one image xi: [pixels, C]. Each thread takes a range of pixels; per
// block, float sums (block_sums) give a block mean, a second pass over the cached block the squared
// deviations from it and their residual sum (the block mean's rounding), all merged into the
// thread's doubles; the threads' moments are merged last. (The
// merges run over all channels at once: one channel at a time, with its divisions, they took 40%
// of the statistics' time at [1, 512, 512, 128].)
template <typename T>
ChannelMoments channel_moments(const T* xi, int64_t pixels, int64_t c) {
  const int threads = omp_get_max_threads();
  const size_t per_thread = static_cast<size_t>(c);
  std::vector<double> counts(static_cast<size_t>(threads), 0.0);
  std::vector<double> means(static_cast<size_t>(threads) * per_thread, 0.0), m2s(means.size(), 0.0);
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = pixels * t / nt, end = pixels * (t + 1) / nt;
    double* mean = means.data() + static_cast<size_t>(t) * per_thread;
    double* m2 = m2s.data() + static_cast<size_t>(t) * per_thread;
    std::vector<float> sum(per_thread), residual(per_thread), squares(per_thread);
    std::vector<double> block_mean(per_thread), block_m2(per_thread);
    float* s = sum.data();
    float* r = residual.data();
    float* q = squares.data();
    for (int64_t p0 = begin; p0 < end; p0 += kBlockPixels) {
      const int64_t p1 = std::min(p0 + kBlockPixels, end);
      block_sums(xi + p0 * c, p1 - p0, c, s, r, q);
      // Deviations from the rounded mean m: the block's mean is m + r/n and its M2 is q - r^2/n.
      const double n = static_cast<double>(p1 - p0), inverse = 1.0 / n;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        const double rd = static_cast<double>(r[ch]);
        block_mean[static_cast<size_t>(ch)] = static_cast<double>(s[ch]) + rd * inverse;
        block_m2[static_cast<size_t>(ch)] = static_cast<double>(q[ch]) - rd * rd * inverse;
      }
      merge_channels(counts[static_cast<size_t>(t)], mean, m2, n, block_mean.data(), block_m2.data(), c);
    }
  }
  for (int t = 1; t < threads; ++t) {
    const size_t at = static_cast<size_t>(t) * per_thread;
    merge_channels(counts[0], means.data(), m2s.data(), counts[static_cast<size_t>(t)], means.data() + at,
                   m2s.data() + at, c);
  }
  means.resize(per_thread);  // thread 0's, which now hold every thread's values
  m2s.resize(per_thread);
  return ChannelMoments{counts[0], std::move(means), std::move(m2s)};
}

}  // namespace

namespace {

// Per (image, channel) of a group norm: the scale a = gamma rstd and the group's mean as
// mean_hi + mean_lo.
struct GroupNormCoefficients {
  std::vector<float> scale, mean_hi, mean_lo;
};

template <typename T>
GroupNormCoefficients group_norm_coefficients(const T* in, int64_t n, int64_t pixels, int64_t c, int64_t groups,
                                              float eps, const std::vector<float>& gamma) {
  const int64_t group_size = c / groups;
  const size_t nc = static_cast<size_t>(n * c);
  GroupNormCoefficients k{std::vector<float>(nc), std::vector<float>(nc), std::vector<float>(nc)};
  for (int64_t img = 0; img < n; ++img) {
    const ChannelMoments moments = channel_moments(in + img * pixels * c, pixels, c);
    for (int64_t grp = 0; grp < groups; ++grp) {
      double count = 0, mean = 0, m2 = 0;  // the group's
      for (int64_t ch = grp * group_size; ch < (grp + 1) * group_size; ++ch) {
        const size_t i = static_cast<size_t>(ch);
        merge_channels(count, &mean, &m2, moments.count, &moments.mean[i], &moments.m2[i], 1);
      }
      const double var = m2 / count;  // biased, as torch
      const double rstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
      const float hi = static_cast<float>(mean);
      const float lo = static_cast<float>(mean - static_cast<double>(hi));
      for (int64_t ch = grp * group_size; ch < (grp + 1) * group_size; ++ch) {
        const size_t i = static_cast<size_t>(img * c + ch);
        k.scale[i] = static_cast<float>(static_cast<double>(gamma[ch]) * rstd);
        k.mean_hi[i] = hi;
        k.mean_lo[i] = lo;
      }
    }
  }
  return k;
}

// y = ((x - mean_hi) - mean_lo) a + beta, then the activation, row by row. One loop per
// (activation, output dtype): a bf16 y is rounded in the same loop (rounding through a y row
// buffer took 30% longer at [1, 512, 512, 128] with SiLU, a row being only 128 channels).
template <typename T>
void group_norm_rows(const T* in, int64_t n, int64_t pixels, int64_t c, const GroupNormCoefficients& k,
                     const std::vector<float>& beta, bool silu_out, Tensor& y) {
  const bool bf16_out = y.dtype() == DType::kBF16;
  // y's data pointers fetched once, outside the vector loops: a call there (Tensor::raw_data was
  // out of line) clobbers every vector register, constants included.
  uint16_t* const y_bf16 = bf16_out ? y.data<uint16_t>() : nullptr;
  float* const y_f32 = bf16_out ? nullptr : y.data<float>();
#pragma omp parallel
  {
    // Each row is first copied (a bf16 one widened) into this f32 buffer in L1, and normalised from
    // there: that is also right where y is x itself, and measured faster than reading x in the
    // normalising loop, for f32 too (at [1, 512, 512, 128] with SiLU into bf16, 1 thread: f32 x
    // 42 -> 39 ms, bf16 x 48 -> 30 ms, with silu_16).
    std::vector<float> widened(static_cast<size_t>(c));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < n * pixels; ++row) {
      const int64_t img = row / pixels;
      const float* a = k.scale.data() + img * c;
      const float* hi = k.mean_hi.data() + img * c;
      const float* lo = k.mean_lo.data() + img * c;
      const float* bp = beta.data();
      const T* source = in + row * c;
      prefetch_ahead(source, c * static_cast<int64_t>(sizeof(T)));
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) widened[static_cast<size_t>(ch)] = widen(source[ch]);
      const float* xr = widened.data();
      const auto normalised = [&](int64_t ch) { return ((xr[ch] - hi[ch]) - lo[ch]) * a[ch] + bp[ch]; };
#if defined(__AVX512F__)
      if (silu_out) {  // explicit vectors: see silu_16
        for (int64_t ch = 0; ch < c; ch += 16) {
          const __mmask16 m = first_lanes(c - ch);
          const __m512 v = _mm512_fmadd_ps(
              _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + ch), _mm512_maskz_loadu_ps(m, hi + ch)),
                            _mm512_maskz_loadu_ps(m, lo + ch)),
              _mm512_maskz_loadu_ps(m, a + ch), _mm512_maskz_loadu_ps(m, bp + ch));
          if (bf16_out) {
            _mm256_mask_storeu_epi16(y_bf16 + row * c + ch, m, to_bf16_16(silu_16(v)));
          } else {
            _mm512_mask_storeu_ps(y_f32 + row * c + ch, m, silu_16(v));
          }
        }
        continue;
      }
#endif
      if (bf16_out) {
        uint16_t* yr = y_bf16 + row * c;
        if (silu_out) {
#pragma omp simd
          for (int64_t ch = 0; ch < c; ++ch) yr[ch] = tensor::f32_to_bf16(silu(normalised(ch)));
        } else {
#pragma omp simd
          for (int64_t ch = 0; ch < c; ++ch) yr[ch] = tensor::f32_to_bf16(normalised(ch));
        }
      } else {
        float* yr = y_f32 + row * c;
        if (silu_out) {
#pragma omp simd
          for (int64_t ch = 0; ch < c; ++ch) yr[ch] = silu(normalised(ch));
        } else {
#pragma omp simd
          for (int64_t ch = 0; ch < c; ++ch) yr[ch] = normalised(ch);
        }
      }
    }
  }
}

}  // namespace

// x, y: [N, HW, C] viewed as pixels of C channels; group g = channels [g Cg, (g+1) Cg); x f32 or
// bf16 (widened exactly). Statistics in one pass over memory (channel_moments), merged per group in
// double. Then y = ((x - mean_hi) - mean_lo) a[c] + beta[c] with a = gamma rstd, and the activation,
// in float: the mean split into two floats keeps the digits that x - float(mean) would round away
// when the mean is large next to the spread (x - mean_hi is exact there), so the normalised value
// is within a few ulp. The pass is memory-bound; float keeps it to 16 lanes per vector.
void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups, float eps, Activation act,
                Tensor& y) {
  assert(x.dtype() == DType::kF32 || x.dtype() == DType::kBF16);
  assert(x.is_contiguous() && y.is_contiguous() && x.numel() == y.numel());
  assert(y.dtype() == DType::kF32 || y.dtype() == DType::kBF16);
  assert(x.raw_data() != y.raw_data() || x.dtype() == y.dtype());  // in place only in one dtype
  assert(act == Activation::kNone || act == Activation::kSiLU);
  const int64_t n = x.dim(0), c = x.dim(-1);
  const int64_t pixels = x.numel() / (n * c);
  assert(c % groups == 0);
  const std::vector<float> g = gamma.to_vector();
  const std::vector<float> b = beta.to_vector();
  const bool silu_out = act == Activation::kSiLU;
  if (x.dtype() == DType::kBF16) {
    const uint16_t* in = x.data<uint16_t>();
    group_norm_rows(in, n, pixels, c, group_norm_coefficients(in, n, pixels, c, groups, eps, g), b, silu_out, y);
  } else {
    const float* in = x.data<float>();
    group_norm_rows(in, n, pixels, c, group_norm_coefficients(in, n, pixels, c, groups, eps, g), b, silu_out, y);
  }
}

#pragma GCC pop_options

// x, y: [rows, C]; each row is in cache for the three short passes (mean, variance, normalise).
void layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, Tensor& y) {
  assert(x.dtype() == DType::kF32 && x.is_contiguous() && y.is_contiguous() && x.numel() == y.numel());
  assert(y.dtype() == DType::kF32 || y.dtype() == DType::kBF16);
  const int64_t c = x.dim(-1);
  const int64_t rows = x.numel() / c;
  const std::vector<float> g = gamma.to_vector();
  const std::vector<float> b = beta.to_vector();
  const float* gp = g.data();
  const float* bp = b.data();
  const float* in = x.data<float>();
  const bool bf16_out = y.dtype() == DType::kBF16;
  uint16_t* const y_bf16 = bf16_out ? y.data<uint16_t>() : nullptr;  // fetched once, as group_norm_rows does
  float* const y_f32 = bf16_out ? nullptr : y.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = in + r * c;
    prefetch_ahead(xr, c * static_cast<int64_t>(sizeof(float)));
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < c; ++i) sum += xr[i];
    const double mean = sum / static_cast<double>(c);
    double sum_sq = 0.0;
#pragma omp simd reduction(+ : sum_sq)
    for (int64_t i = 0; i < c; ++i) {
      const double d = xr[i] - mean;
      sum_sq += d * d;
    }
    const float rstd = static_cast<float>(1.0 / std::sqrt(sum_sq / static_cast<double>(c) + eps));
    const float m = static_cast<float>(mean);
    if (bf16_out) {  // rounded in the same loop, as group_norm does
      uint16_t* yr = y_bf16 + r * c;
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) yr[i] = tensor::f32_to_bf16((xr[i] - m) * rstd * gp[i] + bp[i]);
    } else {
      float* yr = y_f32 + r * c;
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) yr[i] = (xr[i] - m) * rstd * gp[i] + bp[i];
    }
  }
}

// x, y: [rows, cols]. y may alias x.
void softmax_rows(const float* x, float* y, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) softmax_row(x + r * cols, y + r * cols, cols);
}

}  // namespace sdstack::backend::cpu
