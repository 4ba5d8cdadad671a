// TorchGenerator: PyTorch's CPU mt19937 generator and its float32 normal fills.
#include "pipeline/torch_rng.h"

#include <bit>
#include <cmath>

namespace sdstack::pipeline {
namespace {

constexpr double kPi = 3.14159265358979323846;

// torch's uniform_real_distribution<float>(0, 1): the low 24 bits of one 32-bit draw, so every
// value is an exact float in [0, 1).
float uniform_float(uint32_t bits) { return static_cast<float>(bits & ((1u << 24) - 1)) * (1.0f / (1u << 24)); }

// torch's uniform_real_distribution<double>(0, 1): the low 53 bits of a 64-bit draw.
double uniform_double(uint64_t bits) {
  return static_cast<double>(bits & ((uint64_t{1} << 53) - 1)) * (1.0 / static_cast<double>(uint64_t{1} << 53));
}

// torch's AVX2 normal fill takes its log and sincos from avx_mathfun (Cephes' single-precision
// algorithms). Below are the same algorithms for one float, step for step, with a fused
// multiply-add wherever torch's compiler fused one (g++ contracts the intrinsics' a * b + c):
// that reproduces torch's initial latents bit for bit, where libm's log/sin/cos differ by an ulp.

// avx_mathfun's constants are double literals rounded to float (which can differ from a float literal).
constexpr float f32(double value) { return static_cast<float>(value); }

// Natural log for x in (0, 1] (u1 is never 0 or denormal).
float cephes_log(float x) {
  // 1. Split x = m * 2^e with m in [sqrt(1/2), sqrt(2)), and take m - 1.
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 0x7f) + 1.0f;
  x = std::bit_cast<float>((bits & ~0x7f800000u) | std::bit_cast<uint32_t>(0.5f));  // m in [0.5, 1)
  const bool below = x < static_cast<float>(0.707106781186547524);                  // sqrt(1/2)
  const float doubled = below ? x : 0.0f;
  x = x - 1.0f;
  e = e - (below ? 1.0f : 0.0f);
  x = x + doubled;
  // 2. log(1 + x) = x - x^2 / 2 + x^3 P(x), with P a degree-8 polynomial.
  const float z = x * x;
  static constexpr float kP[9] = {f32(7.0376836292E-2),  f32(-1.1514610310E-1), f32(1.1676998740E-1),
                                  f32(-1.2420140846E-1), f32(1.4249322787E-1),  f32(-1.6668057665E-1),
                                  f32(2.0000714765E-1),  f32(-2.4999993993E-1), f32(3.3333331174E-1)};
  float y = kP[0];
  for (int k = 1; k < 9; ++k) y = std::fma(y, x, kP[k]);
  y = y * x;
  // 3. Add e * log(2), split in two parts for precision.
  y = std::fma(y, z, e * f32(-2.12194440e-4));
  y = y - z * 0.5f;
  x = x + y;
  return std::fma(e, f32(0.693359375), x);
}

// sin and cos of x >= 0 (here x < 2 pi).
void cephes_sincos(float x, float* sine, float* cosine) {
  // 1. Reduce to [-pi/4, pi/4]: j = the octant rounded up to even; x -= j * pi/4 in three parts.
  const int32_t j = (static_cast<int32_t>(x * f32(1.27323954473516)) + 1) & ~1;  // 4 / pi
  const float octant = static_cast<float>(j);
  x = std::fma(octant, f32(-0.78515625), x);
  x = std::fma(octant, f32(-2.4187564849853515625e-4), x);
  x = std::fma(octant, f32(-3.77489497744594108e-8), x);
  const uint32_t sin_sign = static_cast<uint32_t>(j & 4) << 29;
  const uint32_t cos_sign = static_cast<uint32_t>(~(j - 2) & 4) << 29;
  const bool sine_is_sin_poly = (j & 2) == 0;
  // 2. The cosine polynomial and the sine polynomial on the reduced x.
  const float z = x * x;
  float cos_poly = std::fma(f32(2.443315711809948E-005), z, f32(-1.388731625493765E-003));
  cos_poly = std::fma(cos_poly, z, f32(4.166664568298827E-002));
  cos_poly = cos_poly * z;
  cos_poly = std::fma(cos_poly, z, -(z * 0.5f));
  cos_poly = cos_poly + 1.0f;
  float sin_poly = std::fma(f32(-1.9515295891E-4), z, f32(8.3321608736E-3));
  sin_poly = std::fma(sin_poly, z, f32(-1.6666654611E-1));
  sin_poly = sin_poly * z;
  sin_poly = std::fma(sin_poly, x, x);
  // 3. Each result takes one polynomial by octant (sums with zero, as the vector code does), then its sign.
  const float sin_part_of_sin = sine_is_sin_poly ? sin_poly : 0.0f;
  const float cos_part_of_sin = sine_is_sin_poly ? 0.0f : cos_poly;
  const float s = cos_part_of_sin + sin_part_of_sin;
  const float c = (cos_poly - cos_part_of_sin) + (sin_poly - sin_part_of_sin);
  *sine = std::bit_cast<float>(std::bit_cast<uint32_t>(s) ^ sin_sign);
  *cosine = std::bit_cast<float>(std::bit_cast<uint32_t>(c) ^ cos_sign);
}

}  // namespace

void TorchGenerator::manual_seed(uint64_t seed) {
  // torch's mt19937 initialisation is the standard one on the seed's low 32 bits; std::mt19937
  // produces the same 32-bit stream, and torch's generator->random() is one draw of it.
  engine_.seed(static_cast<uint32_t>(seed & 0xffffffffu));
  next_double_normal_sample_.reset();
}

uint32_t TorchGenerator::random() { return static_cast<uint32_t>(engine_()); }

uint64_t TorchGenerator::random64() {
  const uint64_t hi = random();
  const uint64_t lo = random();
  return (hi << 32) | lo;
}

// Box-Muller on 16 uniforms in place: pairs (data[j], data[j + 8]) become two normals, as torch's
// x86 build computes them (normal_fill_16_AVX2, with avx_mathfun's log and sincos).
void TorchGenerator::fill_normal_16(float* data) const {
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - data[j];  // [0, 1) -> (0, 1] for the log
    const float u2 = data[j + 8];
    const float radius = std::sqrt(-2.0f * cephes_log(u1));
    const float theta = static_cast<float>(2.0 * kPi) * u2;
    float sine, cosine;
    cephes_sincos(theta, &sine, &cosine);
    data[j] = radius * cosine;
    data[j + 8] = radius * sine;
  }
}

// torch's normal_distribution<double>: Box-Muller on two 53-bit uniforms, returning the cosine
// sample and caching the sine one on the generator. (torch 1.13 takes log(1 - u2); later versions
// use log1p(-u2), which can differ in the last bit.)
double TorchGenerator::next_double_normal() {
  if (next_double_normal_sample_.has_value()) {
    const double cached = *next_double_normal_sample_;
    next_double_normal_sample_.reset();
    return cached;
  }
  const double u1 = uniform_double(random64());
  const double u2 = uniform_double(random64());
  const double r = std::sqrt(-2.0 * std::log(1.0 - u2));
  const double theta = 2.0 * kPi * u1;
  next_double_normal_sample_ = r * std::sin(theta);
  return r * std::cos(theta);
}

tensor::Tensor TorchGenerator::randn(const tensor::Shape& shape) {
  tensor::Tensor out = tensor::Tensor::empty(shape);
  float* data = out.data<float>();
  const int64_t size = out.numel();
  if (size < 16) {
    for (int64_t i = 0; i < size; ++i) data[i] = static_cast<float>(next_double_normal());
    return out;
  }
  // 1. One uniform per element, in order.
  for (int64_t i = 0; i < size; ++i) data[i] = uniform_float(random());
  // 2. Transform each whole block of 16.
  for (int64_t i = 0; i + 16 <= size; i += 16) fill_normal_16(data + i);
  // 3. A partial last block: draw 16 fresh uniforms over the last 16 elements and transform them
  //    (overwriting normals the previous block already made).
  if (size % 16 != 0) {
    float* tail = data + size - 16;
    for (int i = 0; i < 16; ++i) tail[i] = uniform_float(random());
    fill_normal_16(tail);
  }
  return out;
}

}  // namespace sdstack::pipeline
