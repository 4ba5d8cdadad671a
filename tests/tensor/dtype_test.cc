// Tests of the f16 and bf16 conversions: exhaustive round trips, known values, rounding edge cases.
#include "tensor/dtype.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

namespace sdstack::tensor {
namespace {

float float_from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint32_t bits_of(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

bool is_f16_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }
bool is_bf16_nan(uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0; }

TEST(DType, NamesAndSizes) {
  EXPECT_STREQ(dtype_name(DType::kF32), "f32");
  EXPECT_STREQ(dtype_name(DType::kF16), "f16");
  EXPECT_STREQ(dtype_name(DType::kBF16), "bf16");
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kF16), 2u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
}

// Every half survives f16 -> f32 -> f16 bit for bit, except that a NaN need only stay a NaN.
TEST(DType, F16RoundTripIsExactForAllHalves) {
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const uint16_t half = static_cast<uint16_t>(h);
    const float f = f16_to_f32(half);
    const uint16_t back = f32_to_f16(f);
    if (is_f16_nan(half)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      ASSERT_TRUE(is_f16_nan(back)) << std::hex << h;
      ASSERT_EQ(back & 0x8000u, half & 0x8000u) << std::hex << h;
    } else {
      ASSERT_EQ(back, half) << std::hex << h << " -> " << f;
    }
  }
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(f16_to_f32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);                      // largest finite
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));         // smallest normal
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));         // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));      // largest subnormal
  EXPECT_EQ(f16_to_f32(0x8200), -std::ldexp(512.0f, -24));      // negative subnormal
  EXPECT_EQ(f16_to_f32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));

  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(0.1f), 0x2e66);
  EXPECT_EQ(f32_to_f16(1.0f / 3.0f), 0x3555);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_TRUE(is_f16_nan(f32_to_f16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(is_f16_nan(f32_to_f16(float_from_bits(0x7f800001u))));  // signalling NaN stays NaN
}

TEST(DType, F16RoundsToNearestEven) {
  const float ulp = std::ldexp(1.0f, -10);  // f16 spacing in [1, 2)
  // Exactly halfway: to the even neighbour.
  EXPECT_EQ(f32_to_f16(1.0f + ulp / 2), 0x3c00);                  // between 0x3c00 and 0x3c01
  EXPECT_EQ(f32_to_f16(1.0f + 3 * ulp / 2), 0x3c02);              // between 0x3c01 and 0x3c02
  EXPECT_EQ(f32_to_f16(-(1.0f + 3 * ulp / 2)), 0xbc02);
  // Just off halfway: to the nearer one.
  EXPECT_EQ(f32_to_f16(std::nextafter(1.0f + ulp / 2, 2.0f)), 0x3c01);
  EXPECT_EQ(f32_to_f16(std::nextafter(1.0f + 3 * ulp / 2, 0.0f)), 0x3c01);
  // A carry out of the mantissa bumps the exponent: just under 2 rounds up to 2.
  EXPECT_EQ(f32_to_f16(2.0f - ulp / 4), 0x4000);
  // The last normal below 2^-14 rounds up into the smallest normal.
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -14), 0.0f)), 0x0400);
}

TEST(DType, F16Subnormals) {
  const float tiny = std::ldexp(1.0f, -24);  // the smallest f16 subnormal, 0x0001
  EXPECT_EQ(f32_to_f16(tiny), 0x0001);
  EXPECT_EQ(f32_to_f16(-tiny), 0x8001);
  EXPECT_EQ(f32_to_f16(5 * tiny), 0x0005);
  EXPECT_EQ(f32_to_f16(1023 * tiny), 0x03ff);
  // Halfway cases round to even.
  EXPECT_EQ(f32_to_f16(tiny / 2), 0x0000);         // between 0 and 0x0001
  EXPECT_EQ(f32_to_f16(-tiny / 2), 0x8000);
  EXPECT_EQ(f32_to_f16(1.5f * tiny), 0x0002);      // between 0x0001 and 0x0002
  EXPECT_EQ(f32_to_f16(2.5f * tiny), 0x0002);      // between 0x0002 and 0x0003
  EXPECT_EQ(f32_to_f16(1023.5f * tiny), 0x0400);   // between the largest subnormal and the smallest normal
  // Just above half the smallest subnormal rounds up, just below flushes to zero.
  EXPECT_EQ(f32_to_f16(std::nextafter(tiny / 2, 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::nextafter(tiny / 2, 0.0f)), 0x0000);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(f32_to_f16(1e-30f), 0x0000);
  EXPECT_EQ(f32_to_f16(-1e-30f), 0x8000);
}

TEST(DType, F16Overflow) {
  // 65520 is halfway between 65504 (0x7bff, odd) and 65536 (which would be 0x7c00): to even, inf.
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-65520.0f), 0xfc00);
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-1e10f), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::max()), 0x7c00);
}

#ifdef __FLT16_MAX__
// The compiler's own _Float16 conversion (F16C or libgcc, round to nearest even) as an independent
// oracle, over a stride through all floats plus every float near each half's rounding boundaries.
TEST(DType, F16MatchesCompilerConversion) {
  auto check = [](uint32_t bits) {
    const float f = float_from_bits(bits);
    const _Float16 expected_half = static_cast<_Float16>(f);
    uint16_t expected;
    std::memcpy(&expected, &expected_half, 2);
    const uint16_t actual = f32_to_f16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(is_f16_nan(actual)) << std::hex << bits;
    } else {
      ASSERT_EQ(actual, expected) << std::hex << "f32 bits 0x" << bits << " (" << f << ")";
    }
  };
  for (uint64_t bits = 0; bits <= 0xffffffffu; bits += 4093) check(static_cast<uint32_t>(bits));
  for (uint32_t h = 0; h < 0x7c00u; ++h) {
    // The float of h and of h + 1, and the floats around their midpoint (in value, so that
    // subnormal spacing is handled too).
    const float lo = f16_to_f32(static_cast<uint16_t>(h));
    const float hi = f16_to_f32(static_cast<uint16_t>(h + 1));
    const uint32_t mid = bits_of(lo + (hi - lo) / 2);  // exact: a half has 11 significant bits
    for (uint32_t sign : {0u, 0x80000000u}) {
      for (int64_t delta = -2; delta <= 2; ++delta) check(sign | static_cast<uint32_t>(mid + delta));
      check(sign | bits_of(lo));
      check(sign | (bits_of(lo) + 1));
    }
  }
}
#endif

// Every bfloat16 survives bf16 -> f32 -> bf16, except that a NaN need only stay a NaN.
TEST(DType, BF16RoundTripIsExactForAllValues) {
  for (uint32_t b = 0; b <= 0xffffu; ++b) {
    const uint16_t value = static_cast<uint16_t>(b);
    const float f = bf16_to_f32(value);
    EXPECT_EQ(bits_of(f), b << 16);
    if (is_bf16_nan(value)) {
      ASSERT_TRUE(is_bf16_nan(f32_to_bf16(f))) << std::hex << b;
    } else {
      ASSERT_EQ(f32_to_bf16(f), value) << std::hex << b;
    }
  }
}

TEST(DType, BF16Rounding) {
  const float ulp = std::ldexp(1.0f, -7);  // bf16 spacing in [1, 2)
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_bf16(1.0f + ulp / 2), 0x3f80);      // tie: to even
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * ulp / 2), 0x3f82);  // tie: to even
  EXPECT_EQ(f32_to_bf16(std::nextafter(1.0f + ulp / 2, 2.0f)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(std::nextafter(1.0f + ulp / 2, 0.0f)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(3.14159265f), 0x4049);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to inf
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::denorm_min()), 0x0000);
  // A NaN whose payload lives only in the low 16 bits must not become inf.
  EXPECT_TRUE(is_bf16_nan(f32_to_bf16(float_from_bits(0x7f800001u))));
  EXPECT_TRUE(is_bf16_nan(f32_to_bf16(float_from_bits(0xff800001u))));
  EXPECT_TRUE(is_bf16_nan(f32_to_bf16(std::numeric_limits<float>::quiet_NaN())));
}

// The array conversions (parallel above 2^16 elements) agree with the scalar ones.
TEST(DType, ArrayConversionsMatchScalar) {
  const size_t count = (1u << 17) + 3;
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = std::ldexp(static_cast<float>(i % 1000) - 500.0f, static_cast<int>(i % 40) - 30);

  for (DType dtype : {DType::kF16, DType::kBF16}) {
    std::vector<uint16_t> packed(count);
    convert_from_f32(values.data(), packed.data(), dtype, count);
    std::vector<float> unpacked(count);
    convert_to_f32(packed.data(), dtype, unpacked.data(), count);
    for (size_t i = 0; i < count; ++i) {
      const uint16_t expected = dtype == DType::kF16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
      ASSERT_EQ(packed[i], expected) << i;
      ASSERT_EQ(bits_of(unpacked[i]), bits_of(dtype == DType::kF16 ? f16_to_f32(expected) : bf16_to_f32(expected)));
    }
  }
  std::vector<float> copy(count);
  convert_from_f32(values.data(), copy.data(), DType::kF32, count);
  EXPECT_EQ(copy, values);
  convert_to_f32(values.data(), DType::kF32, copy.data(), count);
  EXPECT_EQ(copy, values);
}

// Every f16 and every bf16 bit pattern (twice over, and a tail that is no whole run) through the
// array conversions, the bulk f16 path included: the scalar functions' values, NaN for NaN.
TEST(DType, ArrayConversionsOfEveryHalfMatchScalar) {
  const size_t count = 2 * 65536 + 5;
  std::vector<uint16_t> halves(count);
  for (size_t i = 0; i < count; ++i) halves[i] = static_cast<uint16_t>(i * 40503u);  // odd: a permutation
  std::vector<float> wide(count);
  convert_to_f32(halves.data(), DType::kF16, wide.data(), count);
  std::vector<uint16_t> to_bf16(count), from_bf16(count);
  convert(halves.data(), DType::kF16, to_bf16.data(), DType::kBF16, count);
  convert(halves.data(), DType::kBF16, from_bf16.data(), DType::kF16, count);
  for (size_t i = 0; i < count; ++i) {
    const uint16_t h = halves[i];
    if (is_f16_nan(h)) {
      ASSERT_TRUE(std::isnan(wide[i])) << h;
      ASSERT_TRUE(is_bf16_nan(to_bf16[i])) << h;
    } else {
      ASSERT_EQ(bits_of(wide[i]), bits_of(f16_to_f32(h))) << h;
      ASSERT_EQ(to_bf16[i], f32_to_bf16(f16_to_f32(h))) << h;
    }
    if (is_bf16_nan(h)) {
      ASSERT_TRUE(is_f16_nan(from_bf16[i])) << h;
    } else {
      ASSERT_EQ(from_bf16[i], f32_to_f16(bf16_to_f32(h))) << h;
    }
  }
}

}  // namespace
}  // namespace sdstack::tensor
