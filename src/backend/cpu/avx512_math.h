// AVX-512 math on 16 lanes: 2^t for the attention kernels' online softmax, SiLU and the bf16
// rounding for the group norm, GELU for GEGLU, and loads that widen bf16.
#pragma once

namespace sdstack::backend::cpu {

// Where erf(a) is 1 in f32 (1 - erf(9) = 4e-37), and the erfs of vec_math.h and gelu_16 stay clear
// of denormals: at a = 9 the term they subtract from 1 is ~2^-121, past 9.4 it would be a denormal,
// whose every operation costs x86 cores a ~100-cycle microcode assist (GELUs of |x| in [13, 60)
// took 12-20x their usual time). Capping a there changes no result.
constexpr float kErfSaturated = 9.0f;

}  // namespace sdstack::backend::cpu

#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

namespace sdstack::backend::cpu {

// All 16 lanes. GCC 12's unmasked forms of max, min, shuffle, permute, roundscale, scalef, rcp14 and
// several integer ops start from _mm512_undefined_*, which it reports as maybe-uninitialized; the
// all-lanes maskz forms compile the same.
constexpr __mmask16 kAll = 0xffff;

// The lanes [0, n) of a vector, n clamped to [0, 16]: a loop's tail, or rows past a tile's end.
inline __mmask16 first_lanes(int64_t n) { return n >= 16 ? kAll : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1); }

// 16 bf16 values as the f32 bits they stand for: each in the high half of a 32-bit lane, the low
// half zero (exact).
inline __m512i widen_bf16_16(__m256i bf16) {
  return _mm512_maskz_slli_epi32(kAll, _mm512_maskz_cvtepu16_epi32(kAll, bf16), 16);
}

// The `lanes` of 16 elements at p as f32 (0 in the others): f32 itself, or bf16 widened exactly.
inline __m512 load_16(__mmask16 lanes, const float* p) { return _mm512_maskz_loadu_ps(lanes, p); }
inline __m512 load_16(__mmask16 lanes, const uint16_t* p) {
  return _mm512_castsi512_ps(widen_bf16_16(_mm256_maskz_loadu_epi16(lanes, p)));
}

// 1 / d by vrcp14ps refined by one Newton step, r (2 - d r): within ~2 ulp, where a vdivps would
// take as long as all the rest of the loops that use it (SiLU's and GELU's).
inline __m512 reciprocal_16(__m512 d) {
  const __m512 r = _mm512_maskz_rcp14_ps(kAll, d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}

// 2^t in the `valid` lanes (0 in the others, whose t may be anything, -inf included), for t <= 0
// (a t slightly above 0 is fine): 2^floor(t) by vscalefps times 2^f, f = t - floor(t) in [0, 1) by
// a degree-5 polynomial (relative error 8e-8, fitted with the constant term 1 so that the max
// itself gets exactly 1). 8 instructions, half of a range-reduced e^x with clamping.
inline __m512 exp2_16(__mmask16 valid, __m512 t) {
#if defined(__AVX512DQ__)
  const __m512 f = _mm512_maskz_reduce_ps(valid, t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
#else
  const __m512 f =
      _mm512_maskz_sub_ps(valid, t, _mm512_maskz_roundscale_ps(valid, t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
#endif
  __m512 p = _mm512_set1_ps(1.8671307063e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.0170285514e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5799914849e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4016444945e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9315131190e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(valid, p, t);
}

// x sigmoid(x) = x / (1 + 2^(-x log2 e)): the power by exp2_16, its exponent kept to [-126, 126]
// (below, the power would be a denormal, which costs every x86 core a ~100-cycle assist, 15x the
// time of a vector of SiLUs, and 1 + 2^-126 is 1 as 1 + 0 is; above, the denominator stays finite
// where x < -87 and silu is -0 to f32 precision anyway), the division by reciprocal_16 (within
// ~2 ulp, like vec_math.h's silu).
inline __m512 silu_16(__m512 x) {
  const __m512 t = _mm512_maskz_max_ps(
      kAll, _mm512_maskz_min_ps(kAll, _mm512_mul_ps(x, _mm512_set1_ps(-1.44269504088896341f)), _mm512_set1_ps(126.0f)),
      _mm512_set1_ps(-126.0f));
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp2_16(kAll, t));
  return _mm512_mul_ps(x, reciprocal_16(d));
}

// gelu(x) = x/2 (1 + erf(x / sqrt(2))) with vec_math.h's erf (Abramowitz & Stegun 7.1.26, absolute
// error <= 1.5e-7): its division 1 / (1 + p a) by reciprocal_16, exp(-a^2) as 2^(-a^2 log2 e) by
// exp2_16. |x / sqrt(2)| is capped at kErfSaturated, as vec_math.h's erf caps it.
inline __m512 gelu_16(__m512 x) {
  const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
  const __m512i sign = _mm512_maskz_and_epi32(kAll, _mm512_castps_si512(z), _mm512_set1_epi32(INT32_MIN));
  const __m512 a =
      _mm512_maskz_min_ps(kAll, _mm512_castsi512_ps(_mm512_maskz_andnot_epi32(kAll, sign, _mm512_castps_si512(z))),
                          _mm512_set1_ps(kErfSaturated));
  const __m512 d = _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f));
  const __m512 t = reciprocal_16(d);
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  const __m512 gauss = exp2_16(kAll, _mm512_mul_ps(_mm512_mul_ps(a, a), _mm512_set1_ps(-1.44269504088896341f)));
  const __m512 e = _mm512_fnmadd_ps(_mm512_mul_ps(p, t), gauss, _mm512_set1_ps(1.0f));  // erf(a)
  const __m512 erf = _mm512_castsi512_ps(_mm512_maskz_or_epi32(kAll, _mm512_castps_si512(e), sign));
  return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), _mm512_add_ps(_mm512_set1_ps(1.0f), erf));
}

// The f32 bit patterns `bits` rounded to bf16 in integer arithmetic: nearest even, NaN kept quiet,
// as tensor::f32_to_bf16.
inline __m256i to_bf16_16_bits(__m512i bits) {
  const __m512i lsb = _mm512_maskz_and_epi32(kAll, _mm512_maskz_srli_epi32(kAll, bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_maskz_srli_epi32(
      kAll, _mm512_maskz_add_epi32(kAll, bits, _mm512_maskz_add_epi32(kAll, lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_maskz_and_epi32(kAll, bits, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i quiet = _mm512_maskz_or_epi32(kAll, _mm512_maskz_srli_epi32(kAll, bits, 16), _mm512_set1_epi32(0x40));
  return _mm512_maskz_cvtepi32_epi16(kAll, _mm512_mask_blend_epi32(nan, rounded, quiet));
}

// x rounded to bf16 as tensor::f32_to_bf16. With AVX512-BF16, vcvtneps2bf16 rounds and quiets NaNs
// the same way in one instruction (against ten) but flushes denormal inputs to zero: a vector with
// a denormal lane (rare) takes the integer path for those lanes.
inline __m256i to_bf16_16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
#if defined(__AVX512BF16__)
  const __m256i converted = __builtin_bit_cast(__m256i, _mm512_cvtneps_pbh(x));
  const __mmask16 denormal = _mm512_mask_test_epi32_mask(_mm512_testn_epi32_mask(bits, _mm512_set1_epi32(0x7f800000)),
                                                         bits, _mm512_set1_epi32(0x007fffff));
  if (denormal == 0) return converted;
  return _mm256_mask_blend_epi16(denormal, converted, to_bf16_16_bits(bits));
#else
  return to_bf16_16_bits(bits);
#endif
}

// x rounded to bf16 as to_bf16_16, each in the high half of a 32-bit lane (the low half zero): the
// f32 bits of the rounded values, or a bf16 ready to pair with another by a shift and an or.
inline __m512i to_bf16_16_high(__m512 x) { return widen_bf16_16(to_bf16_16(x)); }

}  // namespace sdstack::backend::cpu

#endif  // __AVX512F__
