// TorchGenerator: torch.Generator('cpu').manual_seed(seed) and torch.randn(shape, generator=g)
// reproduced draw for draw, so a seed gives diffusers' initial latents and step noise on the CPU.
#pragma once

#include <cstdint>
#include <optional>
#include <random>

#include "schedulers/scheduler.h"
#include "tensor/tensor.h"

namespace sdstack::pipeline {

// PyTorch's CPU generator: an mt19937 seeded as torch seeds it, plus the cached second
// Box-Muller sample of its scalar normal path. Draws continue across calls, as with one
// torch.Generator passed around a pipeline. Not thread-safe.
class TorchGenerator : public schedulers::NoiseSource {
 public:
  explicit TorchGenerator(uint64_t seed) { manual_seed(seed); }

  // generator.manual_seed(seed): restarts the sequence (only the low 32 bits seed mt19937).
  void manual_seed(uint64_t seed);

  // torch.randn(shape, generator=g, dtype=torch.float32), row-major (for latents: NCHW).
  // torch fills >= 16 contiguous floats 16 at a time by Box-Muller on 24-bit uniforms and redoes
  // the last 16 when the count isn't a multiple of 16; fewer than 16 go through its double path
  // one sample at a time, which caches every second sample for the next call. The 16-wide fill
  // reproduces torch's x86 (AVX2) build bit for bit; torch built without AVX2 would differ by an ulp.
  tensor::Tensor randn(const tensor::Shape& shape) override;

  // The generator's raw draws (torch's generator->random() and random64()).
  uint32_t random();
  uint64_t random64();

 private:
  void fill_normal_16(float* data) const;
  double next_double_normal();

  std::mt19937 engine_;
  std::optional<double> next_double_normal_sample_;
};

}  // namespace sdstack::pipeline
