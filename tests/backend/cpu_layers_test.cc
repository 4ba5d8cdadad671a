// The CPU backend's conv2d, linear and matmul against the reference backend, at SD 1.x's channel
// counts and kernel shapes (spatial sizes scaled down so the plain-loop oracle stays quick), with
// every fused extra.
//
// Tolerance: max_rel_diff (|a-b| / (|b|+1)) <= 1e-4. oneDNN sums in f32 in its own order (blocked
// over channels and taps) while the oracle sums in double; for K up to 5760 terms of O(1/sqrt(K))
// weights the f32 rounding error is ~1e-6..1e-5, so 1e-4 leaves margin without hiding a wrong tap.
#include <cmath>

#include "backend/backend.h"
#include "cpu_test_util.h"
#include "testing/testing.h"

namespace sdstack::backend {
namespace {

using backend::testing::cpu_backend;
using backend::testing::linear_inputs;
using backend::testing::LinearCase;
using backend::testing::LinearInputs;
using backend::testing::reference_backend;
using backend::testing::run_linear;
using backend::testing::sd_linear_cases;
using sdstack::testing::max_rel_diff;
using sdstack::testing::random_tensor;

constexpr float kLayerTolerance = 1e-4f;

struct ConvCase {
  int64_t n, h, w, cin, cout, k, stride, padding;
  int64_t extra_top = 0, extra_left = 0, extra_bottom = 0, extra_right = 0;  // on top of `padding`

  Conv2dParams params() const {
    Conv2dParams p{stride, padding};
    p.extra_top = extra_top;
    p.extra_left = extra_left;
    p.extra_bottom = extra_bottom;
    p.extra_right = extra_right;
    return p;
  }
};

struct ConvFusion {
  bool bias = true;
  bool extra_bias = false;
  bool residual = false;
  bool residual_aliases_y = false;
  float residual_scale = 1.0f;
  Activation activation = Activation::kNone;
};

// Runs one conv on both backends with the same inputs and returns max_rel_diff.
float conv_diff(const ConvCase& c, const ConvFusion& f, uint64_t seed) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(c.cin * c.k * c.k));  // torch's default init scale
  const Tensor weight = random_tensor({c.cout, c.cin, c.k, c.k}, seed, -bound, bound);
  const Tensor bias = f.bias ? random_tensor({c.cout}, seed + 1) : Tensor();
  const Tensor x = random_tensor({c.n, c.h, c.w, c.cin}, seed + 2);
  const Conv2dParams params = c.params();
  const int64_t ho = params.out_height(c.h, c.k), wo = params.out_width(c.w, c.k);
  Conv2dExtras extras;
  if (f.extra_bias) extras.extra_bias = random_tensor({c.cout}, seed + 3);
  extras.residual_scale = f.residual_scale;
  extras.activation = f.activation;
  const Tensor residual = random_tensor({c.n, ho, wo, c.cout}, seed + 4);

  Tensor ys[2];
  Backend* backends[2] = {&cpu_backend(), &reference_backend()};
  for (int i = 0; i < 2; ++i) {
    std::unique_ptr<Conv2d> conv = backends[i]->make_conv2d(weight, bias, params);
    EXPECT_EQ(conv->out_channels(), c.cout);
    ys[i] = Tensor::empty({c.n, ho, wo, c.cout});
    if (f.residual && f.residual_aliases_y) {
      ys[i].copy_from(residual);
      extras.residual = ys[i];
    } else if (f.residual) {
      extras.residual = residual;
    }
    conv->run(x, ys[i], extras);
  }
  return max_rel_diff(ys[0], ys[1]);
}

TEST(CpuConv2d, ShapesOfSd) {
  const ConvCase cases[] = {
      {2, 16, 16, 4, 320, 3, 1, 1},    // UNet conv_in (Cin = 4)
      {2, 16, 16, 320, 4, 3, 1, 1},    // UNet conv_out (Cout = 4)
      {2, 16, 16, 320, 320, 3, 1, 1},  // resnet conv, 3x3 s1 p1
      {1, 8, 8, 640, 640, 3, 1, 1},    // deeper resnet conv
      {2, 16, 16, 320, 320, 3, 2, 1},  // UNet downsample, 3x3 s2 p1
      {2, 15, 15, 64, 64, 3, 2, 1},    // odd input size, s2
      {2, 16, 16, 320, 640, 1, 1, 0},  // resnet shortcut, 1x1
      {2, 16, 16, 320, 320, 1, 1, 0},  // attention proj_in/out as 1x1 convs
      {1, 12, 12, 32, 20, 3, 1, 1},    // channel counts that are no multiple of 16
      {1, 12, 12, 3, 32, 3, 1, 1},     // VAE-like Cin = 3
      {2, 8, 8, 2560, 64, 3, 1, 1},    // up-block conv after the skip concat: 4 parts of 640 channels
      {1, 9, 7, 1920, 32, 3, 2, 1},    // 3 parts, stride 2, odd sizes
  };
  uint64_t seed = 100;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "n" << c.n << " " << c.h << "x" << c.w << " " << c.cin << "->" << c.cout
                                      << " k" << c.k << " s" << c.stride << " p" << c.padding);
    EXPECT_LE(conv_diff(c, {}, seed++), kLayerTolerance);
  }
}

// Every fusion, on one convolution and on one that runs in two parts of 640 input channels (the
// bias with the first, the residual before it, the activation after the last).
TEST(CpuConv2d, FusedExtras) {
  const ConvCase cases[] = {{2, 12, 12, 64, 64, 3, 1, 1}, {1, 7, 6, 1280, 48, 3, 1, 1}};
  ConvFusion fusions[9];
  fusions[0].bias = false;
  fusions[1].extra_bias = true;  // the time embedding
  fusions[2].residual = true;
  fusions[3].residual = true;
  fusions[3].residual_aliases_y = true;
  fusions[4].residual = true;
  fusions[4].residual_scale = 0.5f;  // diffusers' 1 / output_scale_factor
  fusions[5].activation = Activation::kSiLU;
  fusions[6].extra_bias = true;
  fusions[6].residual = true;
  fusions[6].residual_aliases_y = true;
  fusions[6].residual_scale = 0.7f;
  fusions[6].activation = Activation::kSiLU;
  fusions[7].bias = false;
  fusions[7].activation = Activation::kGELU;
  fusions[8].extra_bias = true;  // a residual read by a binary-add post-op, then the activation
  fusions[8].residual = true;
  fusions[8].activation = Activation::kSiLU;
  uint64_t seed = 200;
  for (const ConvCase& c : cases) {
    for (int i = 0; i < 9; ++i) {
      SCOPED_TRACE(::testing::Message() << "Cin " << c.cin << ", fusion " << i);
      EXPECT_LE(conv_diff(c, fusions[i], seed++), kLayerTolerance);
    }
  }
}

// Per-side padding: diffusers' VAE encoder Downsample2D pads (right 1, bottom 1) and convolves
// with stride 2 and no other padding; also uneven padding on all four sides, with fused extras.
TEST(CpuConv2d, AsymmetricPadding) {
  const ConvCase cases[] = {
      {2, 16, 16, 32, 32, 3, 2, 0, 0, 0, 1, 1},  // VAE encoder downsample: 16x16 -> 8x8
      {1, 15, 17, 64, 64, 3, 2, 0, 0, 0, 1, 1},  // odd sizes: 15x17 -> 7x8
      {1, 12, 10, 16, 24, 3, 1, 0, 2, 0, 1, 3},  // every side different, stride 1
      {2, 9, 9, 20, 12, 3, 2, 1, 0, 1, 1, 0},    // extras on top of symmetric padding
      {1, 8, 8, 320, 320, 3, 2, 0, 0, 0, 1, 1},  // SD-sized channel count
  };
  ConvFusion fused;
  fused.extra_bias = true;
  fused.residual = true;
  fused.activation = Activation::kSiLU;
  uint64_t seed = 250;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.h << "x" << c.w << " s" << c.stride << " p" << c.padding << " extra "
                                      << c.extra_top << "," << c.extra_left << "," << c.extra_bottom << ","
                                      << c.extra_right);
    EXPECT_LE(conv_diff(c, {}, seed++), kLayerTolerance);
    EXPECT_LE(conv_diff(c, fused, seed++), kLayerTolerance);
  }
}

// The oracle itself: padding (0, 1, 0, 1) equals torch's F.pad with zeros and an unpadded conv.
TEST(CpuConv2d, AsymmetricPaddingMatchesExplicitZeroPad) {
  const int64_t n = 1, h = 7, w = 6, c = 5;
  const Tensor x = random_tensor({n, h, w, c}, 260);
  Tensor padded = Tensor::zeros({n, h + 1, w + 1, c});
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t j = 0; j < w; ++j) {
      for (int64_t k = 0; k < c; ++k) {
        padded.data<float>()[(i * (w + 1) + j) * c + k] = x.data<float>()[(i * w + j) * c + k];
      }
    }
  }
  const Tensor weight = random_tensor({4, c, 3, 3}, 261);
  const Tensor bias = random_tensor({4}, 262);
  Conv2dParams asymmetric{2, 0};
  asymmetric.extra_bottom = 1;
  asymmetric.extra_right = 1;
  ASSERT_EQ(asymmetric.out_height(h, 3), 3);
  ASSERT_EQ(asymmetric.out_width(w, 3), 3);
  Tensor expected = Tensor::empty({n, 3, 3, 4}), actual = Tensor::empty({n, 3, 3, 4});
  reference_backend().make_conv2d(weight, bias, {2, 0})->run(padded, expected);
  reference_backend().make_conv2d(weight, bias, asymmetric)->run(x, actual);
  EXPECT_EQ(max_rel_diff(actual, expected), 0.0f);
  cpu_backend().make_conv2d(weight, bias, asymmetric)->run(x, actual);
  EXPECT_LE(max_rel_diff(actual, expected), kLayerTolerance);
}

// One Conv2d object, several input shapes (and fusions): each gets its own cached primitive,
// all sharing the weights reordered once; going back to a shape reuses its primitive.
TEST(CpuConv2d, CachedPrimitivesAcrossShapes) {
  const Tensor weight = random_tensor({32, 16, 3, 3}, 300, -0.1f, 0.1f);
  const Tensor bias = random_tensor({32}, 301);
  std::unique_ptr<Conv2d> cpu = cpu_backend().make_conv2d(weight, bias, {1, 1});
  std::unique_ptr<Conv2d> ref = reference_backend().make_conv2d(weight, bias, {1, 1});
  const Shape shapes[] = {{2, 16, 16, 16}, {1, 8, 12, 16}, {2, 16, 16, 16}, {1, 8, 12, 16}};
  uint64_t seed = 310;
  for (const Shape& shape : shapes) {
    const Tensor x = random_tensor(shape, seed++);
    Tensor y_cpu = Tensor::empty({shape[0], shape[1], shape[2], 32});
    Tensor y_ref = Tensor::empty(y_cpu.shape());
    Conv2dExtras extras;
    extras.activation = seed % 2 ? Activation::kSiLU : Activation::kNone;
    cpu->run(x, y_cpu, extras);
    ref->run(x, y_ref, extras);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kLayerTolerance) << x.shape_string();
  }
}

// Conv2d::run_upsampled2x (diffusers' Upsample2D) against the reference's upsample-then-convolve:
// the CPU's four 2x2 convolutions per output parity for 3x3/s1/p1, its fallback for the rest.
TEST(CpuConv2d, UpsampledTwice) {
  const ConvCase cases[] = {
      {2, 8, 8, 320, 320, 3, 1, 1},  // UNet upsampler, batch 2 (CFG)
      {1, 5, 7, 64, 48, 3, 1, 1},    // odd, non-square sizes; Cout != Cin
      {1, 6, 4, 1280, 32, 3, 1, 1},  // input channels in two parts
      {1, 1, 1, 16, 16, 3, 1, 1},    // one pixel: every tap but the centre row/column on padding
      {1, 6, 5, 16, 24, 1, 1, 0},    // 1x1: the fallback
      {1, 6, 5, 16, 24, 3, 1, 0},    // no padding: the fallback
  };
  uint64_t seed = 420;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.h << "x" << c.w << " " << c.cin << "->" << c.cout << " k" << c.k << " p"
                                      << c.padding);
    const float bound = 1.0f / std::sqrt(static_cast<float>(c.cin * c.k * c.k));
    const Tensor weight = random_tensor({c.cout, c.cin, c.k, c.k}, seed++, -bound, bound);
    const Tensor bias = random_tensor({c.cout}, seed++);
    const Tensor x = random_tensor({c.n, c.h, c.w, c.cin}, seed++);
    const Conv2dParams params = c.params();
    const Shape y_shape = {c.n, params.out_height(2 * c.h, c.k), params.out_width(2 * c.w, c.k), c.cout};
    Tensor y_cpu = Tensor::empty(y_shape), y_ref = Tensor::empty(y_shape), scratch = Tensor::empty(y_shape);
    std::unique_ptr<Conv2d> cpu = cpu_backend().make_conv2d(weight, bias, params);
    cpu->run_upsampled2x(x, y_cpu, scratch);
    reference_backend().make_conv2d(weight, bias, params)->run_upsampled2x(x, y_ref, scratch);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kLayerTolerance);
    // The same layer still runs plain convolutions (on an input of the upsampled size).
    const Tensor big = random_tensor({c.n, 2 * c.h, 2 * c.w, c.cin}, seed++);
    cpu->run(big, y_cpu);
    reference_backend().make_conv2d(weight, bias, params)->run(big, y_ref);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kLayerTolerance) << "plain run after an upsampled one";
  }
}

TEST(CpuConv2d, HalfPrecisionWeights) {
  const Tensor weight = random_tensor({32, 16, 3, 3}, 400, -0.1f, 0.1f).to(DType::kF16);
  const Tensor bias = random_tensor({32}, 401).to(DType::kBF16);
  const Tensor x = random_tensor({1, 8, 8, 16}, 402);
  Tensor y_cpu = Tensor::empty({1, 8, 8, 32}), y_ref = Tensor::empty({1, 8, 8, 32});
  cpu_backend().make_conv2d(weight, bias, {1, 1})->run(x, y_cpu);
  reference_backend().make_conv2d(weight, bias, {1, 1})->run(x, y_ref);
  EXPECT_LE(max_rel_diff(y_cpu, y_ref), kLayerTolerance);
}

TEST(CpuLinear, ShapesAndFusions) {
  std::vector<LinearCase> cases = sd_linear_cases();
  cases.push_back({{2, 40, 36}, 20, true, Activation::kSiLU, true, true});  // activation then residual, aliasing y
  uint64_t seed = 500;
  for (const LinearCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "in " << c.x_shape.back() << " out " << c.out << " rows " << c.x_shape[0]);
    const LinearInputs in = linear_inputs(c, seed);
    const Tensor y_cpu = run_linear(*cpu_backend().make_linear(in.weight, in.bias), in.x, c, in.residual);
    const Tensor y_ref = run_linear(*reference_backend().make_linear(in.weight, in.bias), in.x, c, in.residual);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kLayerTolerance);
  }
}

TEST(CpuMatmul, TransposeAndAlpha) {
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
  uint64_t seed = 600;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.b << "x" << c.m << "x" << c.k << "x" << c.n << " t" << c.transpose_b);
    const Tensor a = random_tensor({c.b, c.m, c.k}, seed++);
    const Tensor b = c.transpose_b ? random_tensor({c.b, c.n, c.k}, seed++) : random_tensor({c.b, c.k, c.n}, seed++);
    Tensor y_cpu = Tensor::empty({c.b, c.m, c.n}), y_ref = Tensor::empty({c.b, c.m, c.n});
    cpu_backend().matmul(a, b, y_cpu, c.transpose_b, c.alpha);
    cpu_backend().matmul(a, b, y_cpu, c.transpose_b, c.alpha);  // cached primitive
    reference_backend().matmul(a, b, y_ref, c.transpose_b, c.alpha);
    EXPECT_LE(max_rel_diff(y_cpu, y_ref), kLayerTolerance);
  }
}

}  // namespace
}  // namespace sdstack::backend
