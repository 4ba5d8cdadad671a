// Element types (f32, f16, bf16) and their conversions to and from f32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace sdstack::tensor {

enum class DType { kF32, kF16, kBF16 };

inline size_t dtype_size(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

// "f32", "f16", "bf16".
const char* dtype_name(DType dtype);

// IEEE half <-> float, exact for every half (subnormals, inf, NaN) and round-to-nearest-even
// from float.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// bfloat16 is the top half of a float; from float we round to nearest even (NaN stays NaN).
inline float bf16_to_f32(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  // A select rather than an early return for NaN, so that loops over it vectorise.
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// Converts `count` elements from `src` (of type `from`) to f32 in `dst`.
void convert_to_f32(const void* src, DType from, float* dst, size_t count);
// Converts `count` f32 elements to `to` in `dst`.
void convert_from_f32(const float* src, void* dst, DType to, size_t count);
// Converts `count` elements of any dtype to any other (f16 <-> bf16 through f32, as if by the two
// conversions above).
void convert(const void* src, DType from, void* dst, DType to, size_t count);

}  // namespace sdstack::tensor
