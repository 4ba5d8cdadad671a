// Shared by the CPU backend tests: the cpu and reference backends, made once per test binary.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "backend/backend.h"
#include "testing/testing.h"

namespace sdstack::backend::testing {

inline Backend& cpu_backend() {
  static std::unique_ptr<Backend> backend = std::move(make_backend("cpu").value());
  return *backend;
}

inline Backend& reference_backend() {
  static std::unique_ptr<Backend> backend = std::move(make_backend("reference").value());
  return *backend;
}

// A linear layer's test: x's shape, the output features, and the extras it runs with.
struct LinearCase {
  tensor::Shape x_shape;  // [..., in]
  int64_t out;
  bool bias;
  Activation activation;
  bool residual, residual_aliases_y;
};

// SD 1.x's linear shapes with every fusion, for the f32 and the bf16 tests.
inline std::vector<LinearCase> sd_linear_cases() {
  return {
      {{2, 256, 320}, 320, false, Activation::kNone, false, false},      // to_q (no bias)
      {{2, 77, 768}, 320, false, Activation::kNone, false, false},       // to_k from the text embedding
      {{2, 256, 320}, 2560, true, Activation::kNone, false, false},      // GEGLU proj (2 x 1280)
      {{2, 256, 1280}, 320, true, Activation::kNone, true, true},        // ff out + residual (aliasing y)
      {{2, 256, 320}, 320, true, Activation::kNone, true, false},        // to_out + residual (not aliasing)
      {{2, 1280}, 1280, true, Activation::kSiLU, false, false},          // time embedding MLP
      {{1, 77, 768}, 3072, true, Activation::kQuickGELU, false, false},  // CLIP MLP fc1
      {{3, 50, 64}, 96, true, Activation::kGELU, true, false},           // activation then residual
      {{5, 7}, 3, true, Activation::kNone, false, false},                // tiny, odd sizes
  };
}

// One case's random inputs, the weights scaled by 1/sqrt(in) as torch initialises them; each draw
// takes the next seed.
struct LinearInputs {
  tensor::Tensor weight, bias, x, residual;
};
inline LinearInputs linear_inputs(const LinearCase& c, uint64_t& seed) {
  using sdstack::testing::random_tensor;
  const int64_t in = c.x_shape.back();
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  LinearInputs inputs;
  inputs.weight = random_tensor({c.out, in}, seed++, -bound, bound);
  if (c.bias) inputs.bias = random_tensor({c.out}, seed++);
  inputs.x = random_tensor(c.x_shape, seed++);
  tensor::Shape y_shape = c.x_shape;
  y_shape.back() = c.out;
  inputs.residual = random_tensor(y_shape, seed++);
  return inputs;
}

// Runs `linear` on x (twice: the second run reuses the cached primitive) with the case's extras;
// y is shaped like the residual.
inline tensor::Tensor run_linear(Linear& linear, const tensor::Tensor& x, const LinearCase& c,
                                 const tensor::Tensor& residual) {
  tensor::Tensor y = tensor::Tensor::empty(residual.shape());
  LinearExtras extras;
  extras.activation = c.activation;
  if (c.residual) extras.residual = c.residual_aliases_y ? y : residual;
  for (int repeat = 0; repeat < 2; ++repeat) {
    if (c.residual_aliases_y) y.copy_from(residual);
    linear.run(x, y, extras);
  }
  return y;
}

}  // namespace sdstack::backend::testing
