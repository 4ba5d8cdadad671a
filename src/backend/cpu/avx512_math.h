// AVX-512 math shared by the attention kernels: 2^t on 16 lanes for the online softmax.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

namespace sdstack::backend::cpu {

// All 16 lanes. GCC 12's unmasked forms of max, shuffle, permute, roundscale and scalef start from
// _mm512_undefined_ps, which it reports as maybe-uninitialized; the all-lanes maskz forms compile
// the same.
constexpr __mmask16 kAll = 0xffff;

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

}  // namespace sdstack::backend::cpu

#endif  // __AVX512F__
