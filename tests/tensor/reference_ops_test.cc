// Tests of the reference ops (the oracle) against small cases worked out by hand.
#include "tensor/reference_ops.h"

#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "testing/testing.h"

namespace sdstack::tensor {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

// EXPECT that `t` holds `expected` (row-major) to within `tolerance`.
void expect_values(const Tensor& t, const std::vector<float>& expected, float tolerance = 1e-6f) {
  std::vector<float> actual = t.to_vector();
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) EXPECT_NEAR(actual[i], expected[i], tolerance) << "at " << i;
}

// ---- conv2d ----

TEST(ReferenceOps, Conv2d3x3On2x2WithPadding) {
  // One channel in and out. With padding 1 each output sees the part of the 3x3 kernel that
  // overlaps the 2x2 input: y[0,0] = x00 w11 + x01 w12 + x10 w21 + x11 w22 = 5 + 12 + 24 + 36.
  Tensor x = Tensor::from_vector({1, 2, 2, 1}, {1, 2, 3, 4});
  Tensor w = Tensor::from_vector({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  Tensor y = Tensor::empty({1, 2, 2, 1});
  ref::conv2d(x, w, Tensor(), 1, 1, y);
  expect_values(y, {77, 67, 47, 37});
  Tensor bias = Tensor::from_vector({1}, {0.5f});
  ref::conv2d(x, w, bias, 1, 1, y);
  expect_values(y, {77.5f, 67.5f, 47.5f, 37.5f});
  // Without padding there is no room for a 3x3 kernel; with a 2x2 one there is a single output.
  Tensor w2 = Tensor::from_vector({1, 1, 2, 2}, {1, 10, 100, 1000});
  Tensor y1 = Tensor::empty({1, 1, 1, 1});
  ref::conv2d(x, w2, Tensor(), 1, 0, y1);
  expect_values(y1, {4321});
}

TEST(ReferenceOps, Conv2dChannelsAreNHWCAndWeightsOIHW) {
  // x: 1x1 image, 2 channels (3, 5); a 1x1 kernel mapping them to 3 outputs.
  Tensor x = Tensor::from_vector({1, 1, 1, 2}, {3, 5});
  Tensor w = Tensor::from_vector({3, 2, 1, 1}, {1, 0, 0, 1, 2, -1});  // rows: out channel
  Tensor y = Tensor::empty({1, 1, 1, 3});
  ref::conv2d(x, w, Tensor::from_vector({3}, {0, 0, 100}), 1, 0, y);
  expect_values(y, {3, 5, 101});
}

TEST(ReferenceOps, Conv2d1x1EqualsLinear) {
  Tensor x = random_tensor({2, 3, 4, 6}, 1);
  Tensor w = random_tensor({5, 6, 1, 1}, 2);
  Tensor b = random_tensor({5}, 3);
  Tensor y_conv = Tensor::empty({2, 3, 4, 5});
  ref::conv2d(x, w, b, 1, 0, y_conv);
  Tensor y_linear = Tensor::empty({24, 5});
  ref::linear(x.reshape({24, 6}), w.reshape({5, 6}), b, y_linear);
  EXPECT_EQ(max_abs_diff(y_conv.reshape({24, 5}), y_linear), 0.0f);
}

// An independent, index-by-index convolution straight from the definition, through Tensor::at.
Tensor conv2d_by_definition(const Tensor& x, const Tensor& w, const Tensor& b, int64_t stride, int64_t padding) {
  const int64_t n_batch = x.dim(0), h = x.dim(1), wd = x.dim(2), c_in = x.dim(3);
  const int64_t c_out = w.dim(0), k = w.dim(2);
  const int64_t h_out = (h + 2 * padding - k) / stride + 1, w_out = (wd + 2 * padding - k) / stride + 1;
  Tensor y = Tensor::zeros({n_batch, h_out, w_out, c_out});
  for (int64_t n = 0; n < n_batch; ++n)
    for (int64_t oh = 0; oh < h_out; ++oh)
      for (int64_t ow = 0; ow < w_out; ++ow)
        for (int64_t o = 0; o < c_out; ++o) {
          double sum = b.at({o});
          for (int64_t i = 0; i < c_in; ++i)
            for (int64_t r = 0; r < k; ++r)
              for (int64_t s = 0; s < k; ++s) {
                int64_t ih = oh * stride + r - padding, iw = ow * stride + s - padding;
                if (ih >= 0 && ih < h && iw >= 0 && iw < wd) sum += double(x.at({n, ih, iw, i})) * w.at({o, i, r, s});
              }
          y.data<float>()[((n * h_out + oh) * w_out + ow) * c_out + o] = static_cast<float>(sum);
        }
  return y;
}

TEST(ReferenceOps, Conv2dStridedMatchesDefinitionForEveryWeightDtype) {
  Tensor x = random_tensor({2, 5, 4, 3}, 4);
  Tensor b = random_tensor({4}, 6);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    Tensor w = random_tensor({4, 3, 3, 3}, 5).to(dtype);
    // (5 + 2 - 3) / 2 + 1 = 3 rows, (4 + 2 - 3) / 2 + 1 = 2 columns.
    Tensor y = Tensor::empty({2, 3, 2, 4});
    ref::conv2d(x, w, b, 2, 1, y);
    EXPECT_LE(max_abs_diff(y, conv2d_by_definition(x, w, b, 2, 1)), 1e-6f) << dtype_name(dtype);
  }
}

// ---- linear and matmul ----

TEST(ReferenceOps, LinearByHand) {
  // x: [2, 1, 2]; W: [3, 2]; y = x W^T + b.
  Tensor x = Tensor::from_vector({2, 1, 2}, {1, 2, -1, 0.5f});
  Tensor w = Tensor::from_vector({3, 2}, {1, 0, 0, 1, 1, 1});
  Tensor b = Tensor::from_vector({3}, {0, 0, 1});
  Tensor y = Tensor::empty({2, 1, 3});
  ref::linear(x, w, b, y);
  expect_values(y, {1, 2, 4, -1, 0.5f, 0.5f});
  ref::linear(x, w.to(DType::kF16), Tensor(), y);
  expect_values(y, {1, 2, 3, -1, 0.5f, -0.5f});
}

TEST(ReferenceOps, MatmulByHand) {
  // a[0] = [[1, 2], [3, 4]], b[0] = [[5, 6], [7, 8]]: a b = [[19, 22], [43, 50]].
  // a[1] = I, b[1] = [[1, 2], [3, 4]].
  Tensor a = Tensor::from_vector({2, 2, 2}, {1, 2, 3, 4, 1, 0, 0, 1});
  Tensor b = Tensor::from_vector({2, 2, 2}, {5, 6, 7, 8, 1, 2, 3, 4});
  Tensor y = Tensor::empty({2, 2, 2});
  ref::matmul(a, b, y);
  expect_values(y, {19, 22, 43, 50, 1, 2, 3, 4});
  // a b^T: [[1*5+2*6, 1*7+2*8], [3*5+4*6, 3*7+4*8]] = [[17, 23], [39, 53]]; then scaled by 0.5.
  ref::matmul(a, b, y, /*transpose_b=*/true, 0.5f);
  expect_values(y, {8.5f, 11.5f, 19.5f, 26.5f, 0.5f, 1.5f, 1, 2});
}

TEST(ReferenceOps, MatmulRectangularAndTransposedAgree) {
  // a: [2, 3, 4] @ b: [2, 4, 5]; the same with b stored transposed as [2, 5, 4].
  Tensor a = random_tensor({2, 3, 4}, 10);
  Tensor b = random_tensor({2, 4, 5}, 11);
  Tensor bt = Tensor::empty({2, 5, 4});
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t k = 0; k < 4; ++k)
      for (int64_t n = 0; n < 5; ++n) bt.data<float>()[(i * 5 + n) * 4 + k] = b.at({i, k, n});
  Tensor y = Tensor::empty({2, 3, 5}), y_t = Tensor::empty({2, 3, 5});
  ref::matmul(a, b, y, false, 2.0f);
  ref::matmul(a, bt, y_t, true, 2.0f);
  EXPECT_EQ(max_abs_diff(y, y_t), 0.0f);
  double expected = 0;
  for (int64_t k = 0; k < 4; ++k) expected += double(a.at({1, 2, k})) * b.at({1, k, 3});
  EXPECT_NEAR(y.at({1, 2, 3}), 2.0 * expected, 1e-6);
}

// ---- norms ----

TEST(ReferenceOps, GroupNormByHand) {
  // x: [1, 1, 2, 4] (two pixels, four channels), two groups of two channels.
  // Group 0 holds {1, 2, 3, 4} (channels 0-1 of both pixels): mean 2.5, biased variance 1.25.
  // Group 1 holds {10, 10, 10, 30}: mean 15, variance 75.
  Tensor x = Tensor::from_vector({1, 1, 2, 4}, {1, 2, 10, 10, 3, 4, 10, 30});
  Tensor gamma = Tensor::from_vector({4}, {1, 1, 1, 2});
  Tensor beta = Tensor::from_vector({4}, {0, 0, 0, 1});
  const float eps = 1e-5f;
  const double s0 = 1.0 / std::sqrt(1.25 + eps), s1 = 1.0 / std::sqrt(75.0 + eps);
  std::vector<float> expected = {
      float(-1.5 * s0), float(-0.5 * s0), float(-5 * s1), float(2 * (-5 * s1) + 1),
      float(0.5 * s0),  float(1.5 * s0),  float(-5 * s1), float(2 * (15 * s1) + 1)};
  Tensor y = Tensor::empty({1, 1, 2, 4});
  ref::group_norm(x, gamma, beta, 2, eps, false, y);
  expect_values(y, expected);
  // Fused SiLU is silu of the same values.
  ref::group_norm(x, gamma, beta, 2, eps, true, y);
  for (float& v : expected) v = static_cast<float>(ref::silu(v));
  expect_values(y, expected);
}

TEST(ReferenceOps, GroupNormGivesZeroMeanUnitVariancePerGroup) {
  // x: [2, 3, 5, 8], four groups of two channels; y may alias x.
  Tensor x = random_tensor({2, 3, 5, 8}, 20, -3.0f, 5.0f);
  Tensor ones = Tensor::from_vector({8}, std::vector<float>(8, 1.0f));
  Tensor zeros = Tensor::zeros({8});
  Tensor y = x.contiguous();
  ref::group_norm(y, ones, zeros, 4, 0.0f, false, y);
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t g = 0; g < 4; ++g) {
      double sum = 0, squares = 0;
      for (int64_t h = 0; h < 3; ++h)
        for (int64_t w = 0; w < 5; ++w)
          for (int64_t c = 2 * g; c < 2 * g + 2; ++c) {
            double v = y.at({n, h, w, c});
            sum += v;
            squares += v * v;
          }
      EXPECT_NEAR(sum / 30, 0.0, 1e-6);
      EXPECT_NEAR(squares / 30, 1.0, 1e-5);
    }
}

TEST(ReferenceOps, LayerNormByHand) {
  // [1, 2, 3]: mean 2, biased variance 2/3, so y = (x - 2) / sqrt(2/3) = (-1.2247, 0, 1.2247).
  Tensor x = Tensor::from_vector({2, 3}, {1, 2, 3, 5, 5, 5});
  Tensor gamma = Tensor::from_vector({3}, {1, 1, 2});
  Tensor beta = Tensor::from_vector({3}, {0, 1, 0});
  Tensor y = Tensor::empty({2, 3});
  ref::layer_norm(x, gamma, beta, 0.0f, y);
  expect_values(y.slice0(0, 1), {-1.2247449f, 1.0f, 2.4494897f});
  // A constant row normalises to zero (eps keeps it finite): y = beta.
  ref::layer_norm(x, gamma, beta, 1e-5f, x);  // in place
  expect_values(x.slice0(1, 1), {0, 1, 0});
}

// ---- softmax and attention ----

TEST(ReferenceOps, SoftmaxByHand) {
  Tensor x = Tensor::from_vector({3, 3}, {1, 2, 3, 0, 0, 0, 1000, 1001, -1000});
  Tensor y = Tensor::empty({3, 3});
  ref::softmax(x, y);
  expect_values(y, {0.09003057f, 0.24472847f, 0.66524096f,  // e^k / (e + e^2 + e^3)
                    1 / 3.0f, 1 / 3.0f, 1 / 3.0f,
                    0.26894142f, 0.73105858f, 0.0f});  // large values do not overflow
  for (int64_t r = 0; r < 3; ++r) EXPECT_NEAR(y.at({r, 0}) + y.at({r, 1}) + y.at({r, 2}), 1.0f, 1e-6f);
  // In place.
  ref::softmax(x, x);
  EXPECT_EQ(max_abs_diff(x, y), 0.0f);
}

TEST(ReferenceOps, AttentionWithOneKeyReturnsItsValue) {
  Tensor q = random_tensor({2, 3, 8}, 30);
  Tensor k = random_tensor({2, 1, 8}, 31);
  Tensor v = random_tensor({2, 1, 8}, 32);
  Tensor y = Tensor::empty({2, 3, 8});
  ref::attention(q, k, v, 2, false, y);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t c = 0; c < 8; ++c) EXPECT_NEAR(y.at({b, i, c}), v.at({b, 0, c}), 1e-6f);
}

TEST(ReferenceOps, AttentionByHand) {
  // Two heads of D = 2 in 4 channels; two keys. Scale 1/sqrt(2).
  // Head 0: q = (ln 3 sqrt 2, 0), keys (1, 0) and (0, 1): scores ln 3 and 0, weights 3/4 and 1/4,
  //   values (4, 0) and (8, 4) -> (5, 1).
  // Head 1: q = 0: equal weights -> the mean of the values (1, 2) and (3, 6) -> (2, 4).
  const float a = static_cast<float>(std::log(3.0) * std::sqrt(2.0));
  Tensor q = Tensor::from_vector({1, 1, 4}, {a, 0, 0, 0});
  Tensor k = Tensor::from_vector({1, 2, 4}, {1, 0, 5, 5, 0, 1, -7, 2});
  Tensor v = Tensor::from_vector({1, 2, 4}, {4, 0, 1, 2, 8, 4, 3, 6});
  Tensor y = Tensor::empty({1, 1, 4});
  ref::attention(q, k, v, 2, false, y);
  expect_values(y, {5, 1, 2, 4}, 1e-5f);
}

TEST(ReferenceOps, CausalAttentionMasksLaterKeys) {
  Tensor q = random_tensor({1, 3, 4}, 40);
  Tensor k = random_tensor({1, 3, 4}, 41);
  Tensor v = random_tensor({1, 3, 4}, 42);
  Tensor y = Tensor::empty({1, 3, 4});
  ref::attention(q, k, v, 1, true, y);
  // The first query sees only the first key, so it returns the first value.
  expect_values(y.reshape({3, 4}).slice0(0, 1), v.reshape({3, 4}).slice0(0, 1).to_vector());
  // The second query equals non-causal attention over the first two keys.
  Tensor y2 = Tensor::empty({1, 1, 4});
  Tensor q1 = Tensor::from_vector({1, 1, 4}, q.reshape({3, 4}).slice0(1, 1).to_vector());
  Tensor k01 = Tensor::from_vector({1, 2, 4}, k.reshape({3, 4}).slice0(0, 2).to_vector());
  Tensor v01 = Tensor::from_vector({1, 2, 4}, v.reshape({3, 4}).slice0(0, 2).to_vector());
  ref::attention(q1, k01, v01, 1, false, y2);
  expect_values(y2, y.reshape({3, 4}).slice0(1, 1).to_vector());
  // The last query sees every key: the same as without the mask.
  Tensor y_full = Tensor::empty({1, 3, 4});
  ref::attention(q, k, v, 1, false, y_full);
  expect_values(y.reshape({3, 4}).slice0(2, 1), y_full.reshape({3, 4}).slice0(2, 1).to_vector());
}

TEST(ReferenceOps, AttentionEqualsMatmulSoftmaxMatmulPerHead) {
  // q: [2, 5, 2*3], k, v: [2, 7, 2*3]: compose the same from matmul and softmax, head by head.
  const int64_t batch = 2, lq = 5, lk = 7, heads = 2, d = 3;
  Tensor q = random_tensor({batch, lq, heads * d}, 50);
  Tensor k = random_tensor({batch, lk, heads * d}, 51);
  Tensor v = random_tensor({batch, lk, heads * d}, 52);
  Tensor y = Tensor::empty({batch, lq, heads * d});
  ref::attention(q, k, v, heads, false, y);
  for (int64_t h = 0; h < heads; ++h) {
    // Gather head h into [B, L, D] tensors.
    auto head = [&](const Tensor& t) {
      Tensor out = Tensor::empty({t.dim(0), t.dim(1), d});
      for (int64_t b = 0; b < t.dim(0); ++b)
        for (int64_t l = 0; l < t.dim(1); ++l)
          for (int64_t c = 0; c < d; ++c) out.data<float>()[(b * t.dim(1) + l) * d + c] = t.at({b, l, h * d + c});
      return out;
    };
    Tensor scores = Tensor::empty({batch, lq, lk});
    ref::matmul(head(q), head(k), scores, true, static_cast<float>(1.0 / std::sqrt(double(d))));
    ref::softmax(scores, scores);
    Tensor out = Tensor::empty({batch, lq, d});
    ref::matmul(scores, head(v), out);
    EXPECT_LE(max_abs_diff(head(y), out), 1e-6f) << "head " << h;
  }
}

// ---- activations ----

TEST(ReferenceOps, ScalarActivationsAtKnownPoints) {
  EXPECT_NEAR(ref::gelu(1.0), 0.8413447460685429, 1e-12);
  EXPECT_NEAR(ref::gelu(-1.0), -0.15865525393145707, 1e-12);
  EXPECT_EQ(ref::gelu(0.0), 0.0);
  EXPECT_NEAR(ref::gelu(3.0), 2.9959503059, 1e-9);
  EXPECT_NEAR(ref::silu(1.0), 0.7310585786300049, 1e-12);
  EXPECT_NEAR(ref::silu(-1.0), -0.2689414213699951, 1e-12);
  EXPECT_NEAR(ref::quick_gelu(1.0), 1.0 / (1.0 + std::exp(-1.702)), 1e-12);
  EXPECT_NEAR(ref::quick_gelu(-2.0), -2.0 / (1.0 + std::exp(3.404)), 1e-12);
  // Far tails stay finite: no inf/inf.
  EXPECT_EQ(ref::silu(-1000.0), -0.0);
  EXPECT_EQ(ref::silu(1000.0), 1000.0);
  EXPECT_EQ(ref::gelu(-40.0), -0.0);
  EXPECT_EQ(ref::quick_gelu(-1000.0), -0.0);
}

TEST(ReferenceOps, ElementwiseActivations) {
  Tensor x = Tensor::from_vector({2, 2}, {1, -1, 0, 2});
  Tensor y = Tensor::empty({2, 2});
  ref::gelu(x, y);
  expect_values(y, {0.8413447f, -0.1586553f, 0.0f, 1.9544997f});
  ref::silu(x, y);
  expect_values(y, {0.7310586f, -0.2689414f, 0.0f, 1.7615942f});
  ref::quick_gelu(x, y);
  expect_values(y, {float(ref::quick_gelu(1)), float(ref::quick_gelu(-1)), 0.0f, float(ref::quick_gelu(2))});
  ref::silu(x, x);  // in place
  expect_values(x, {0.7310586f, -0.2689414f, 0.0f, 1.7615942f});
}

TEST(ReferenceOps, GegluSplitsHiddenThenGate) {
  // x: [2, 4] -> h = x[:, :2], gate = x[:, 2:]; y = h * gelu(gate).
  Tensor x = Tensor::from_vector({2, 4}, {2, 3, 1, -1, 5, 7, 0, 2});
  Tensor y = Tensor::empty({2, 2});
  ref::geglu(x, y);
  expect_values(y, {2 * 0.8413447f, 3 * -0.1586553f, 0.0f, 7 * 1.9544997f}, 1e-5f);
}

// ---- elementwise arithmetic, resampling, concatenation ----

TEST(ReferenceOps, AddAndMulBroadcastOverLeadingDims) {
  Tensor a = Tensor::from_vector({2, 2, 3}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  Tensor bias = Tensor::from_vector({3}, {100, 200, 300});
  Tensor y = Tensor::empty({2, 2, 3});
  ref::add(a, bias, y);
  expect_values(y, {100, 201, 302, 103, 204, 305, 106, 207, 308, 109, 210, 311});
  ref::mul(a, bias, y);
  expect_values(y, {0, 200, 600, 300, 800, 1500, 600, 1400, 2400, 900, 2000, 3300});
  // Trailing two dims [2, 3] over the leading one.
  Tensor plane = Tensor::from_vector({2, 3}, {1, 1, 1, -1, -1, -1});
  ref::add(a, plane, y);
  expect_values(y, {1, 2, 3, 2, 3, 4, 7, 8, 9, 8, 9, 10});
  // Same shape, in place (y aliases a).
  ref::add(a, a, a);
  expect_values(a, {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22});
}

TEST(ReferenceOps, Scale) {
  Tensor x = Tensor::from_vector({3}, {1, -2, 0.5f});
  Tensor y = Tensor::empty({3});
  ref::scale(x, 0.18215f, y);
  expect_values(y, {0.18215f, -0.3643f, 0.091075f});
  ref::scale(x, -2.0f, x);
  expect_values(x, {-2, 4, -1});
}

TEST(ReferenceOps, UpsampleNearest2x) {
  // x: [1, 2, 2, 2] (two channels: v and 10 v).
  Tensor x = Tensor::from_vector({1, 2, 2, 2}, {1, 10, 2, 20, 3, 30, 4, 40});
  Tensor y = Tensor::empty({1, 4, 4, 2});
  ref::upsample_nearest2x(x, y);
  const std::vector<float> channel0 = {1, 1, 2, 2,  //
                                       1, 1, 2, 2,  //
                                       3, 3, 4, 4,  //
                                       3, 3, 4, 4};
  for (int64_t h = 0; h < 4; ++h)
    for (int64_t w = 0; w < 4; ++w) {
      EXPECT_EQ(y.at({0, h, w, 0}), channel0[static_cast<size_t>(h * 4 + w)]);
      EXPECT_EQ(y.at({0, h, w, 1}), 10 * channel0[static_cast<size_t>(h * 4 + w)]);
    }
}

TEST(ReferenceOps, ConcatLast) {
  Tensor a = Tensor::from_vector({2, 1, 2}, {1, 2, 3, 4});
  Tensor b = Tensor::from_vector({2, 1, 1}, {9, 8});
  Tensor y = Tensor::empty({2, 1, 3});
  ref::concat_last(a, b, y);
  expect_values(y, {1, 2, 9, 3, 4, 8});
  ref::concat_last(b, a, y);
  expect_values(y, {9, 1, 2, 8, 3, 4});
}

}  // namespace
}  // namespace sdstack::tensor
