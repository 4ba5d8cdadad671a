// Element types and their conversions.
#include "tensor/dtype.h"

#include <algorithm>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace sdstack::tensor {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
  }
  return "?";
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exponent = 127 - 15 + 1;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --exponent;
      }
      mantissa &= 0x3ffu;
      bits = sign | (exponent << 23) | (mantissa << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (magnitude < 0x38800000u) {  // result is subnormal or zero
    if (magnitude < 0x33000000u) return static_cast<uint16_t>(sign);  // below half the smallest subnormal
    uint32_t exponent = magnitude >> 23;
    uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exponent;  // 14 + (112 - exponent) ... bits to drop to reach 10-bit subnormal
    uint32_t value = mantissa >> (shift - 0);
    uint32_t remainder = mantissa & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (value & 1u))) ++value;
    return static_cast<uint16_t>(sign | value);
  }
  // Normal: rebias the exponent and round the mantissa to 10 bits, nearest even.
  uint32_t value = magnitude - 0x38000000u;  // exponent 127 -> 15
  uint32_t remainder = value & 0x1fffu;
  value >>= 13;
  if (remainder > 0x1000u || (remainder == 0x1000u && (value & 1u))) ++value;
  return static_cast<uint16_t>(sign | value);
}

namespace {

// f16_to_f32 over a run: eight at a time by vcvtph2ps where the CPU has F16C (the same values;
// a signalling NaN comes out quiet), which makes loading an fp16 checkpoint several times faster.
void f16_run_to_f32(const uint16_t* in, float* out, size_t count) {
  size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  }
#endif
  for (; i < count; ++i) out[i] = f16_to_f32(in[i]);
}

}  // namespace

void convert_to_f32(const void* src, DType from, float* dst, size_t count) {
  if (count == 0) return;  // empty tensors may have null data
  switch (from) {
    case DType::kF32:
      std::memcpy(dst, src, count * 4);
      return;
    case DType::kF16: {
      const uint16_t* in = static_cast<const uint16_t*>(src);
      constexpr size_t kRun = 4096;
#pragma omp parallel for schedule(static) if (count > (1u << 16))
      for (size_t i = 0; i < count; i += kRun) f16_run_to_f32(in + i, dst + i, std::min(kRun, count - i));
      return;
    }
    case DType::kBF16: {
      const uint16_t* in = static_cast<const uint16_t*>(src);
#pragma omp parallel for schedule(static) if (count > (1u << 16))
      for (size_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(in[i]);
      return;
    }
  }
}

void convert_from_f32(const float* src, void* dst, DType to, size_t count) {
  if (count == 0) return;
  switch (to) {
    case DType::kF32:
      std::memcpy(dst, src, count * 4);
      return;
    case DType::kF16: {
      uint16_t* out = static_cast<uint16_t*>(dst);
#pragma omp parallel for schedule(static) if (count > (1u << 16))
      for (size_t i = 0; i < count; ++i) out[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::kBF16: {
      uint16_t* out = static_cast<uint16_t*>(dst);
#pragma omp parallel for schedule(static) if (count > (1u << 16))
      for (size_t i = 0; i < count; ++i) out[i] = f32_to_bf16(src[i]);
      return;
    }
  }
}

void convert(const void* src, DType from, void* dst, DType to, size_t count) {
  if (count == 0) return;
  if (from == to) {
    std::memcpy(dst, src, count * dtype_size(from));
    return;
  }
  if (to == DType::kF32) return convert_to_f32(src, from, static_cast<float*>(dst), count);
  if (from == DType::kF32) return convert_from_f32(static_cast<const float*>(src), dst, to, count);
  // f16 <-> bf16 (both 16 bits) through f32, a run at a time in a buffer that stays in L1.
  constexpr size_t kRun = 2048;
#pragma omp parallel for schedule(static) if (count > (1u << 16))
  for (size_t i = 0; i < count; i += kRun) {
    float run[kRun];
    const size_t n = std::min(kRun, count - i);
    const uint16_t* in = static_cast<const uint16_t*>(src) + i;
    uint16_t* out = static_cast<uint16_t*>(dst) + i;
    if (from == DType::kF16) {
      f16_run_to_f32(in, run, n);
      for (size_t k = 0; k < n; ++k) out[k] = f32_to_bf16(run[k]);
    } else {
      for (size_t k = 0; k < n; ++k) run[k] = bf16_to_f32(in[k]);
      for (size_t k = 0; k < n; ++k) out[k] = f32_to_f16(run[k]);
    }
  }
}

}  // namespace sdstack::tensor
