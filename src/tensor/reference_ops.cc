// The plain-loop reference ops (the oracle): one straightforward loop nest per op, sums in double.
#include "tensor/reference_ops.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <vector>

namespace sdstack::tensor::ref {

namespace {

// Activations and outputs: f32, contiguous, defined.
[[maybe_unused]] bool is_f32_contiguous(const Tensor& t) {
  return t.defined() && t.dtype() == DType::kF32 && t.is_contiguous();
}

// Rows of a [..., C] tensor: the product of all dims but the last (right even when C is 0).
int64_t rows_of(const Tensor& t) {
  int64_t rows = 1;
  for (int d = 0; d + 1 < t.rank(); ++d) rows *= t.dim(d);
  return rows;
}

// A weight or bias of any dtype as f32 values in row-major order; empty when undefined.
std::vector<float> values_of(const Tensor& t) { return t.defined() ? t.to_vector() : std::vector<float>(); }

// Applies a scalar function elementwise; y may alias x (each element is read before it is written).
template <typename Fn>
void map_elementwise(const Tensor& x, Tensor& y, Fn fn) {
  assert(is_f32_contiguous(x) && is_f32_contiguous(y));
  assert(x.shape() == y.shape());
  const float* in = x.data<float>();
  float* out = y.data<float>();
  int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(fn(static_cast<double>(in[i])));
}

// y[i] = op(a[i], b[i mod numel(b)]): b is a's shape or a's trailing dims.
template <typename Op>
void broadcast_binary(const Tensor& a, const Tensor& b, Tensor& y, Op op) {
  assert(is_f32_contiguous(a) && is_f32_contiguous(b) && is_f32_contiguous(y));
  assert(a.shape() == y.shape());
  assert(b.rank() <= a.rank());
  for ([[maybe_unused]] int i = 1; i <= b.rank(); ++i) assert(b.dim(-i) == a.dim(-i));
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.data<float>();
  int64_t n = a.numel();
  int64_t nb = b.numel();
  for (int64_t i = 0; i < n; ++i) py[i] = op(pa[i], pb[i % nb]);
}

}  // namespace

double silu(double x) { return x / (1.0 + std::exp(-x)); }

double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

double quick_gelu(double x) { return x / (1.0 + std::exp(-1.702 * x)); }

void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride, int64_t padding, Tensor& y) {
  conv2d(x, weight, bias, stride, Padding2d{padding, padding, padding, padding}, y);
}

void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride, const Padding2d& padding,
            Tensor& y) {
  assert(is_f32_contiguous(x) && is_f32_contiguous(y));
  assert(x.rank() == 4 && weight.rank() == 4 && y.rank() == 4);
  assert(stride >= 1 && padding.top >= 0 && padding.left >= 0 && padding.bottom >= 0 && padding.right >= 0);
  // x: [N, H, W, Cin]; weight: [Cout, Cin, KH, KW]; y: [N, Ho, Wo, Cout].
  const int64_t n_batch = x.dim(0), h_in = x.dim(1), w_in = x.dim(2), c_in = x.dim(3);
  const int64_t c_out = weight.dim(0), kh = weight.dim(2), kw = weight.dim(3);
  const int64_t h_out = (h_in + padding.top + padding.bottom - kh) / stride + 1;
  const int64_t w_out = (w_in + padding.left + padding.right - kw) / stride + 1;
  assert(weight.dim(1) == c_in);
  assert(!bias.defined() || (bias.rank() == 1 && bias.dim(0) == c_out));
  assert((y.shape() == Shape{n_batch, h_out, w_out, c_out}));

  // Reorder the weight OIHW -> [Cout, KH, KW, Cin] so the innermost loop walks Cin contiguously in
  // both x and the weight; the sum is the same.
  const std::vector<float> w_oihw = weight.to_vector();
  std::vector<float> w_ohwi(w_oihw.size());
  for (int64_t o = 0; o < c_out; ++o)
    for (int64_t i = 0; i < c_in; ++i)
      for (int64_t r = 0; r < kh; ++r)
        for (int64_t s = 0; s < kw; ++s)
          w_ohwi[static_cast<size_t>(((o * kh + r) * kw + s) * c_in + i)] =
              w_oihw[static_cast<size_t>(((o * c_in + i) * kh + r) * kw + s)];
  const std::vector<float> b = values_of(bias);

  const float* in = x.data<float>();
  float* out = y.data<float>();
  for (int64_t n = 0; n < n_batch; ++n) {
    for (int64_t oh = 0; oh < h_out; ++oh) {
      for (int64_t ow = 0; ow < w_out; ++ow) {
        for (int64_t o = 0; o < c_out; ++o) {
          double acc = b.empty() ? 0.0 : b[static_cast<size_t>(o)];
          for (int64_t r = 0; r < kh; ++r) {
            const int64_t ih = oh * stride - padding.top + r;
            if (ih < 0 || ih >= h_in) continue;  // zero padding
            for (int64_t s = 0; s < kw; ++s) {
              const int64_t iw = ow * stride - padding.left + s;
              if (iw < 0 || iw >= w_in) continue;
              const float* x_pixel = in + ((n * h_in + ih) * w_in + iw) * c_in;
              const float* w_tap = w_ohwi.data() + ((o * kh + r) * kw + s) * c_in;
              for (int64_t i = 0; i < c_in; ++i) acc += static_cast<double>(x_pixel[i]) * w_tap[i];
            }
          }
          out[((n * h_out + oh) * w_out + ow) * c_out + o] = static_cast<float>(acc);
        }
      }
    }
  }
}

void linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y) {
  assert(is_f32_contiguous(x) && is_f32_contiguous(y));
  assert(weight.rank() == 2 && x.rank() >= 1 && y.rank() == x.rank());
  // x: [M, K] (leading dims flattened); weight: [N, K]; y: [M, N].
  const int64_t k_dim = x.dim(-1), n_dim = weight.dim(0);
  const int64_t m_dim = rows_of(x);
  assert(weight.dim(1) == k_dim);
  assert(y.dim(-1) == n_dim && rows_of(y) == m_dim);
  for ([[maybe_unused]] int d = 0; d + 1 < x.rank(); ++d) assert(x.dim(d) == y.dim(d));
  assert(!bias.defined() || (bias.rank() == 1 && bias.dim(0) == n_dim));

  const std::vector<float> w = weight.to_vector();
  const std::vector<float> b = values_of(bias);
  const float* in = x.data<float>();
  float* out = y.data<float>();
  for (int64_t m = 0; m < m_dim; ++m) {
    const float* x_row = in + m * k_dim;
    for (int64_t n = 0; n < n_dim; ++n) {
      const float* w_row = w.data() + n * k_dim;
      double acc = b.empty() ? 0.0 : b[static_cast<size_t>(n)];
      for (int64_t k = 0; k < k_dim; ++k) acc += static_cast<double>(x_row[k]) * w_row[k];
      out[m * n_dim + n] = static_cast<float>(acc);
    }
  }
}

void matmul(const Tensor& a, const Tensor& b, Tensor& y, bool transpose_b, float alpha) {
  assert(is_f32_contiguous(a) && is_f32_contiguous(b) && is_f32_contiguous(y));
  assert(a.rank() == 3 && b.rank() == 3 && y.rank() == 3);
  // a: [B, M, K]; b: [B, K, N] or [B, N, K]; y: [B, M, N].
  const int64_t batch = a.dim(0), m_dim = a.dim(1), k_dim = a.dim(2);
  const int64_t n_dim = transpose_b ? b.dim(1) : b.dim(2);
  assert(b.dim(0) == batch && (transpose_b ? b.dim(2) : b.dim(1)) == k_dim);
  assert((y.shape() == Shape{batch, m_dim, n_dim}));
  // Element (k, n) of the (possibly transposed) right operand, as strides into b[i].
  const int64_t b_stride_k = transpose_b ? 1 : n_dim;
  const int64_t b_stride_n = transpose_b ? k_dim : 1;

  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.data<float>();
  for (int64_t i = 0; i < batch; ++i) {
    const float* a_i = pa + i * m_dim * k_dim;
    const float* b_i = pb + i * k_dim * n_dim;
    float* y_i = py + i * m_dim * n_dim;
    for (int64_t m = 0; m < m_dim; ++m) {
      for (int64_t n = 0; n < n_dim; ++n) {
        double acc = 0.0;
        for (int64_t k = 0; k < k_dim; ++k)
          acc += static_cast<double>(a_i[m * k_dim + k]) * b_i[k * b_stride_k + n * b_stride_n];
        y_i[m * n_dim + n] = static_cast<float>(static_cast<double>(alpha) * acc);
      }
    }
  }
}

void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups, float eps, bool fuse_silu,
                Tensor& y) {
  assert(is_f32_contiguous(x) && is_f32_contiguous(y));
  assert(x.rank() == 4 && x.shape() == y.shape());
  // x, y: [N, H, W, C]; viewed as [N, HW, G, C/G], statistics over (HW, C/G) for each (N, G).
  const int64_t n_batch = x.dim(0), pixels = x.dim(1) * x.dim(2), channels = x.dim(3);
  assert(groups >= 1 && channels % groups == 0);
  const int64_t group_size = channels / groups;
  const std::vector<float> g = gamma.to_vector();
  const std::vector<float> b = beta.to_vector();
  assert(static_cast<int64_t>(g.size()) == channels && static_cast<int64_t>(b.size()) == channels);

  const float* in = x.data<float>();
  float* out = y.data<float>();
  const double count = static_cast<double>(pixels * group_size);
  for (int64_t n = 0; n < n_batch; ++n) {
    const float* x_n = in + n * pixels * channels;
    float* y_n = out + n * pixels * channels;
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t c_begin = group * group_size, c_end = c_begin + group_size;
      // Two passes (mean, then the mean of squared deviations): exact enough for an oracle. The
      // group's elements are all read before any of them is written, so y may alias x.
      double sum = 0.0;
      for (int64_t p = 0; p < pixels; ++p)
        for (int64_t c = c_begin; c < c_end; ++c) sum += x_n[p * channels + c];
      const double mean = sum / count;
      double squares = 0.0;
      for (int64_t p = 0; p < pixels; ++p)
        for (int64_t c = c_begin; c < c_end; ++c) {
          const double d = x_n[p * channels + c] - mean;
          squares += d * d;
        }
      const double inv_std = 1.0 / std::sqrt(squares / count + static_cast<double>(eps));
      for (int64_t p = 0; p < pixels; ++p)
        for (int64_t c = c_begin; c < c_end; ++c) {
          double v = (x_n[p * channels + c] - mean) * inv_std * g[static_cast<size_t>(c)] + b[static_cast<size_t>(c)];
          if (fuse_silu) v = silu(v);
          y_n[p * channels + c] = static_cast<float>(v);
        }
    }
  }
}

void layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, Tensor& y) {
  assert(is_f32_contiguous(x) && is_f32_contiguous(y));
  assert(x.rank() >= 1 && x.shape() == y.shape());
  // x, y: [R, C] (leading dims flattened).
  const int64_t channels = x.dim(-1), rows = rows_of(x);
  const std::vector<float> g = gamma.to_vector();
  const std::vector<float> b = beta.to_vector();
  assert(static_cast<int64_t>(g.size()) == channels && static_cast<int64_t>(b.size()) == channels);

  const float* in = x.data<float>();
  float* out = y.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* x_row = in + r * channels;
    float* y_row = out + r * channels;
    double sum = 0.0;
    for (int64_t c = 0; c < channels; ++c) sum += x_row[c];
    const double mean = sum / static_cast<double>(channels);
    double squares = 0.0;
    for (int64_t c = 0; c < channels; ++c) {
      const double d = x_row[c] - mean;
      squares += d * d;
    }
    const double inv_std = 1.0 / std::sqrt(squares / static_cast<double>(channels) + static_cast<double>(eps));
    for (int64_t c = 0; c < channels; ++c)
      y_row[c] = static_cast<float>((x_row[c] - mean) * inv_std * g[static_cast<size_t>(c)] + b[static_cast<size_t>(c)]);
  }
}

void softmax(const Tensor& x, Tensor& y) {
  assert(is_f32_contiguous(x) && is_f32_contiguous(y));
  assert(x.rank() >= 1 && x.shape() == y.shape());
  // x, y: [R, C] (leading dims flattened).
  const int64_t channels = x.dim(-1), rows = rows_of(x);
  const float* in = x.data<float>();
  float* out = y.data<float>();
  std::vector<double> exps(static_cast<size_t>(channels));
  for (int64_t r = 0; r < rows; ++r) {
    const float* x_row = in + r * channels;
    float* y_row = out + r * channels;
    // Subtracting the max keeps exp() from overflowing and does not change the result.
    double max_value = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < channels; ++c) max_value = std::max(max_value, static_cast<double>(x_row[c]));
    double sum = 0.0;
    for (int64_t c = 0; c < channels; ++c) {
      exps[static_cast<size_t>(c)] = std::exp(x_row[c] - max_value);
      sum += exps[static_cast<size_t>(c)];
    }
    for (int64_t c = 0; c < channels; ++c) y_row[c] = static_cast<float>(exps[static_cast<size_t>(c)] / sum);
  }
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal, Tensor& y) {
  assert(is_f32_contiguous(q) && is_f32_contiguous(k) && is_f32_contiguous(v) && is_f32_contiguous(y));
  assert(q.rank() == 3 && k.rank() == 3 && v.rank() == 3 && q.shape() == y.shape() && k.shape() == v.shape());
  // q, y: [B, Lq, H*D]; k, v: [B, Lk, H*D]; head h is channels [h D, (h+1) D).
  const int64_t batch = q.dim(0), lq = q.dim(1), lk = k.dim(1), channels = q.dim(2);
  assert(k.dim(0) == batch && k.dim(2) == channels);
  assert(heads >= 1 && channels % heads == 0);
  const int64_t head_dim = channels / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));

  const float* pq = q.data<float>();
  const float* pk = k.data<float>();
  const float* pv = v.data<float>();
  float* py = y.data<float>();
  std::vector<double> weights(static_cast<size_t>(lk));
  std::vector<double> acc(static_cast<size_t>(head_dim));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t c0 = h * head_dim;
      for (int64_t i = 0; i < lq; ++i) {
        const float* q_row = pq + (b * lq + i) * channels + c0;
        // Keys this query may see: all, or 0..i when causal (at least one, key 0, when i >= 0).
        const int64_t visible = causal ? std::min(lk, i + 1) : lk;
        // Scores s_j = q_i . k_j / sqrt(D), then a max-subtracted softmax over the visible keys.
        double max_score = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < visible; ++j) {
          const float* k_row = pk + (b * lk + j) * channels + c0;
          double dot = 0.0;
          for (int64_t d = 0; d < head_dim; ++d) dot += static_cast<double>(q_row[d]) * k_row[d];
          weights[static_cast<size_t>(j)] = dot * scale;
          max_score = std::max(max_score, weights[static_cast<size_t>(j)]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < visible; ++j) {
          weights[static_cast<size_t>(j)] = std::exp(weights[static_cast<size_t>(j)] - max_score);
          sum += weights[static_cast<size_t>(j)];
        }
        // y_i = sum_j p_j v_j.
        for (int64_t d = 0; d < head_dim; ++d) acc[static_cast<size_t>(d)] = 0.0;
        for (int64_t j = 0; j < visible; ++j) {
          const float* v_row = pv + (b * lk + j) * channels + c0;
          const double p = weights[static_cast<size_t>(j)] / sum;
          for (int64_t d = 0; d < head_dim; ++d) acc[static_cast<size_t>(d)] += p * v_row[d];
        }
        float* y_row = py + (b * lq + i) * channels + c0;
        for (int64_t d = 0; d < head_dim; ++d) y_row[d] = static_cast<float>(acc[static_cast<size_t>(d)]);
      }
    }
  }
}

void silu(const Tensor& x, Tensor& y) { map_elementwise(x, y, [](double v) { return silu(v); }); }

void gelu(const Tensor& x, Tensor& y) { map_elementwise(x, y, [](double v) { return gelu(v); }); }

void quick_gelu(const Tensor& x, Tensor& y) { map_elementwise(x, y, [](double v) { return quick_gelu(v); }); }

void geglu(const Tensor& x, Tensor& y) {
  assert(is_f32_contiguous(x) && is_f32_contiguous(y));
  assert(x.rank() >= 1 && y.rank() == x.rank() && x.dim(-1) % 2 == 0);
  // x: [R, 2F] -> y: [R, F] (leading dims flattened).
  const int64_t features = x.dim(-1) / 2, rows = rows_of(x);
  assert(y.dim(-1) == features && rows_of(y) == rows);
  const float* in = x.data<float>();
  float* out = y.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* hidden = in + r * 2 * features;
    const float* gate = hidden + features;
    for (int64_t f = 0; f < features; ++f)
      out[r * features + f] = static_cast<float>(static_cast<double>(hidden[f]) * gelu(static_cast<double>(gate[f])));
  }
}

void add(const Tensor& a, const Tensor& b, Tensor& y) {
  broadcast_binary(a, b, y, [](float u, float v) { return u + v; });
}

void mul(const Tensor& a, const Tensor& b, Tensor& y) {
  broadcast_binary(a, b, y, [](float u, float v) { return u * v; });
}

void scale(const Tensor& x, float factor, Tensor& y) {
  assert(is_f32_contiguous(x) && is_f32_contiguous(y));
  assert(x.shape() == y.shape());
  const float* in = x.data<float>();
  float* out = y.data<float>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) out[i] = in[i] * factor;
}

void upsample_nearest2x(const Tensor& x, Tensor& y) {
  assert(is_f32_contiguous(x) && is_f32_contiguous(y));
  assert(x.rank() == 4);
  // x: [N, H, W, C] -> y: [N, 2H, 2W, C], y[n, oh, ow, c] = x[n, oh / 2, ow / 2, c].
  const int64_t n_batch = x.dim(0), h_in = x.dim(1), w_in = x.dim(2), channels = x.dim(3);
  const int64_t h_out = 2 * h_in, w_out = 2 * w_in;
  assert((y.shape() == Shape{n_batch, h_out, w_out, channels}));
  const float* in = x.data<float>();
  float* out = y.data<float>();
  for (int64_t n = 0; n < n_batch; ++n)
    for (int64_t oh = 0; oh < h_out; ++oh)
      for (int64_t ow = 0; ow < w_out; ++ow) {
        const float* src = in + ((n * h_in + oh / 2) * w_in + ow / 2) * channels;
        float* dst = out + ((n * h_out + oh) * w_out + ow) * channels;
        for (int64_t c = 0; c < channels; ++c) dst[c] = src[c];
      }
}

void concat_last(const Tensor& a, const Tensor& b, Tensor& y) {
  assert(is_f32_contiguous(a) && is_f32_contiguous(b) && is_f32_contiguous(y));
  assert(a.rank() >= 1 && b.rank() == a.rank() && y.rank() == a.rank());
  // a: [R, Ca], b: [R, Cb] -> y: [R, Ca + Cb] (leading dims flattened, and equal).
  const int64_t ca = a.dim(-1), cb = b.dim(-1), cy = ca + cb;
  for ([[maybe_unused]] int d = 0; d + 1 < a.rank(); ++d) assert(a.dim(d) == b.dim(d) && a.dim(d) == y.dim(d));
  assert(y.dim(-1) == cy);
  const int64_t rows = rows_of(a);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < ca; ++c) py[r * cy + c] = pa[r * ca + c];
    for (int64_t c = 0; c < cb; ++c) py[r * cy + ca + c] = pb[r * cb + c];
  }
}

}  // namespace sdstack::tensor::ref
