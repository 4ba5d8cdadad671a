// Normalisation CPU kernels: group norm over NHWC with SiLU fused, layer norm and softmax over the
// last dim. Statistics accumulate in double so that they match the (double) reference closely.
#include <omp.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/vec_math.h"

namespace sdstack::backend::cpu {
namespace {

// Pixels summed in float per channel before flushing into the double sums: the float partial sums
// stay short (<= 64 terms) and the inner loop runs across channels, contiguous and vectorised.
constexpr int64_t kFlushPixels = 64;

}  // namespace

// Per-channel sums of value(x[p, ch], ch) over the `pixels` pixels of one image xi: [pixels, C],
// in float runs of kFlushPixels pixels (contiguous, vectorised across channels) flushed into
// per-thread doubles; returns the per-channel totals.
template <typename Value>
std::vector<double> channel_sums(const float* xi, int64_t pixels, int64_t c, Value value) {
  const int threads = omp_get_max_threads();
  std::vector<double> sums(static_cast<size_t>(threads * c), 0.0);
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = pixels * t / nt, end = pixels * (t + 1) / nt;
    double* sum = sums.data() + static_cast<size_t>(t) * c;
    std::vector<float> part(static_cast<size_t>(c));
    for (int64_t p0 = begin; p0 < end; p0 += kFlushPixels) {
      const int64_t p1 = std::min(p0 + kFlushPixels, end);
      std::fill(part.begin(), part.end(), 0.0f);
      for (int64_t p = p0; p < p1; ++p) {
        const float* row = xi + p * c;
        for (int64_t ch = 0; ch < c; ++ch) part[ch] += value(row[ch], ch);
      }
      for (int64_t ch = 0; ch < c; ++ch) sum[ch] += part[ch];
    }
  }
  std::vector<double> total(static_cast<size_t>(c), 0.0);
  for (int t = 0; t < threads; ++t) {
    for (int64_t ch = 0; ch < c; ++ch) total[ch] += sums[static_cast<size_t>(t * c + ch)];
  }
  return total;
}

// x, y: [N, HW, C] viewed as pixels of C channels; group g = channels [g Cg, (g+1) Cg).
// Pass 1: per-group mean. Pass 2: per-group variance as the mean of (x - mean)^2: two passes,
// not E[x^2] - mean^2, which cancels catastrophically when the variance is small next to the mean
// (SD's deepest levels normalise groups of a handful of values). Pass 3: y = (x - mean) a[c] + beta[c]
// with a = gamma rstd, then the activation, computed in double: x - mean must not lose the digits
// that a float mean (or x a + (beta - mean a)) would round away. The pass is memory-bound, so the
// double arithmetic costs little.
void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups, float eps, Activation act,
                Tensor& y) {
  assert(x.dtype() == DType::kF32 && x.is_contiguous() && y.is_contiguous() && x.numel() == y.numel());
  assert(y.dtype() == DType::kF32 || y.dtype() == DType::kBF16);
  assert(act == Activation::kNone || act == Activation::kSiLU);
  const int64_t n = x.dim(0), c = x.dim(-1);
  const int64_t pixels = x.numel() / (n * c);
  assert(c % groups == 0);
  const int64_t group_size = c / groups;
  const std::vector<float> g = gamma.to_vector();
  const std::vector<float> b = beta.to_vector();
  const float* in = x.data<float>();
  const bool bf16_out = y.dtype() == DType::kBF16;
  const double count = static_cast<double>(pixels * group_size);

  // Per (image, channel) mean and scale for pass 3.
  std::vector<double> channel_scale(static_cast<size_t>(n * c)), channel_center(static_cast<size_t>(n * c));
  std::vector<double> channel_mean(static_cast<size_t>(c));
  for (int64_t img = 0; img < n; ++img) {
    const float* xi = in + img * pixels * c;
    const std::vector<double> sums = channel_sums(xi, pixels, c, [](float v, int64_t) { return v; });
    std::vector<double> group_mean(static_cast<size_t>(groups), 0.0);
    for (int64_t grp = 0; grp < groups; ++grp) {
      double s = 0.0;
      for (int64_t ch = grp * group_size; ch < (grp + 1) * group_size; ++ch) s += sums[ch];
      group_mean[grp] = s / count;
      for (int64_t ch = grp * group_size; ch < (grp + 1) * group_size; ++ch) {
        channel_mean[ch] = group_mean[grp];
      }
    }
    const double* mean = channel_mean.data();
    const std::vector<double> squares = channel_sums(xi, pixels, c, [mean](float v, int64_t ch) {
      const double d = static_cast<double>(v) - mean[ch];
      return static_cast<float>(d * d);
    });
    for (int64_t grp = 0; grp < groups; ++grp) {
      double ss = 0.0;
      for (int64_t ch = grp * group_size; ch < (grp + 1) * group_size; ++ch) ss += squares[ch];
      const double var = ss / count;  // biased, as torch
      const double rstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
      for (int64_t ch = grp * group_size; ch < (grp + 1) * group_size; ++ch) {
        const double a = static_cast<double>(g[ch]) * rstd;
        channel_scale[img * c + ch] = a;
        channel_center[img * c + ch] = channel_mean[ch];
      }
    }
  }

#pragma omp parallel
  {
    // A bf16 y gets each row rounded from f32 computed in this thread's row buffer.
    std::vector<float> buffer(static_cast<size_t>(bf16_out ? c : 0));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < n * pixels; ++row) {
      const int64_t img = row / pixels;
      const double* a = channel_scale.data() + img * c;
      const double* m = channel_center.data() + img * c;
      const float* bp = b.data();
      const float* xr = in + row * c;
      float* yr = bf16_out ? buffer.data() : y.data<float>() + row * c;
      for (int64_t ch = 0; ch < c; ++ch) {
        yr[ch] = static_cast<float>((static_cast<double>(xr[ch]) - m[ch]) * a[ch] + static_cast<double>(bp[ch]));
      }
      if (act == Activation::kSiLU) {
        for (int64_t ch = 0; ch < c; ++ch) yr[ch] = silu(yr[ch]);
      }
      if (bf16_out) to_bf16_row(yr, y.data<uint16_t>() + row * c, c);
    }
  }
}

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
#pragma omp parallel
  {
    // A bf16 y gets each row rounded from f32 computed in this thread's row buffer.
    std::vector<float> buffer(static_cast<size_t>(bf16_out ? c : 0));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = in + r * c;
      float* yr = bf16_out ? buffer.data() : y.data<float>() + r * c;
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
      for (int64_t i = 0; i < c; ++i) yr[i] = (xr[i] - m) * rstd * gp[i] + bp[i];
      if (bf16_out) to_bf16_row(yr, y.data<uint16_t>() + r * c, c);
    }
  }
}

// x, y: [rows, cols]. y may alias x.
void softmax_rows(const float* x, float* y, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) softmax_row(x + r * cols, y + r * cols, cols);
}

}  // namespace sdstack::backend::cpu
