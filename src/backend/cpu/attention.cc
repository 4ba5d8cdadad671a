// Multi-head attention on the CPU, three ways. On AVX-512: fused, flash-style: per (batch, head,
// tile of 64 queries) the keys and values stream by in tiles, scores and an online softmax stay in
// L1, and no score matrix is ever stored; in f32, or in bf16 for CPUs without AMX (FlashKernel: FMAs
// on widened bf16 values, or vdpbf16ps on bf16 pairs). In bf16 on AMX: the same idea with AMX tile
// products (attention_amx.cc). Otherwise: per tile of queries, scores = q k^T / sqrt(D) and out =
// P v as oneDNN batched matmuls over (batch, head), with an own softmax (and causal mask) in
// between; in bf16, q, k and v are rounded into head-major [B, H, L, D] copies first, and the
// probabilities are rounded before normalisation exactly as the AMX kernel rounds them (see there),
// so that bf16 attention computes the same numbers on every CPU that has it. Both matmuls
// accumulate in f32 and write f32. In bf16 compute q, k, v and y may also be bf16 (the backend's
// operands): the same numbers, without the rounding passes.
#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "backend/cpu/avx512_math.h"
#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/vec_math.h"

namespace sdstack::backend::cpu {
namespace {

using dnnl::memory;

// Score floats per query tile, all batches and heads together: 64 MB. SD at 512 px (B=2, H=8,
// Lk=4096) then runs 256 queries per tile instead of holding a 1 GB score matrix.
constexpr int64_t kScoreBudget = int64_t{16} << 20;

// x: [B, L, H*D] f32 or bf16 -> y: [B, H, rows, D] bf16 holding tokens [first, first + rows). Dense
// head-major, because oneDNN runs bf16 matmuls natively (AMX, AVX512-BF16) on dense operands
// only: through the interleaved layout's strides it falls back to a gemm that runs q k^T (K = D
// = 40) at 1/6 of f32's speed.
void to_bf16_head_major(const Bf16Source& x, int64_t batch, int64_t tokens, int64_t heads, int64_t d, int64_t first,
                        int64_t rows, uint16_t* y) {
  const int64_t channels = heads * d;
  // Below ~16K elements a parallel region costs more than the copy (the CLIP encoder's, tiny models').
#pragma omp parallel for collapse(2) schedule(static) if (batch * heads * rows * d > 16384)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t t = 0; t < rows; ++t) {
        x.read((b * tokens + first + t) * channels + h * d, y + ((b * heads + h) * rows + t) * d, d);
      }
    }
  }
}

#if defined(__AVX512F__)
// Queries per flash tile: the four 16-float vectors that every kernel below works across.
constexpr int64_t kQueryTile = 64;
// Keys per flash tile: their scores (128 x 64 floats, 32 KB) stay in L1 through the max, exp and
// P v passes.
constexpr int64_t kKeyTile = 128;

// The flash kernels' operands are 32-bit words, in one of two forms:
//  - floats (kPairs false): f32 values, or in FlashKernel::kBf16Widened bf16 values widened to f32;
//    a multiply-add is an FMA.
//  - bf16 pairs (kPairs true, FlashKernel::kBf16Pairs): a word holds two bf16 values (the even
//    index in its low half), and a multiply-add is vdpbf16ps, acc + a.low b.low + a.high b.high. q
//    and k pair up channels (2c, 2c + 1); the probabilities and v pair up keys (2j, 2j + 1).
//    Products of bf16 values are exact in f32, so both bf16 kernels add up the same products, in
//    another order (vdpbf16ps also reads and writes denormals as zero: terms below 2^-126 of the
//    largest, nothing at f32 precision).
#if defined(__AVX512BF16__)
constexpr bool kHasDotPairs = true;
#else
constexpr bool kHasDotPairs = false;
#endif

template <bool kPairs>
inline __m512 multiply_add(__m512 a, __m512 b, __m512 acc) {
  if constexpr (kPairs) {
    static_assert(kPairs && kHasDotPairs, "bf16 pairs need AVX512-BF16");
#if defined(__AVX512BF16__)
    return _mm512_dpbf16_ps(acc, __builtin_bit_cast(__m512bh, a), __builtin_bit_cast(__m512bh, b));
#endif
  } else {
    return _mm512_fmadd_ps(a, b, acc);
  }
}

// scores[j][0:64] = sum_c key_j[c] q_t[c][0:64] over `columns` words c, for kKeys keys, key j at
// keys + j * stride. kKeys x 4 accumulators stay in registers (24 of 32 for kKeys = 6).
template <bool kPairs, int kKeys>
inline void score_block(const float* q_t, int64_t columns, const float* keys, int64_t stride, float* scores) {
  __m512 acc[kKeys][4];
  for (int j = 0; j < kKeys; ++j) {
    for (int i = 0; i < 4; ++i) acc[j][i] = _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < columns; ++c) {
    __m512 query[4];
    for (int i = 0; i < 4; ++i) query[i] = _mm512_load_ps(q_t + c * kQueryTile + i * 16);
    for (int j = 0; j < kKeys; ++j) {
      const __m512 key = _mm512_set1_ps(keys[j * stride + c]);
      for (int i = 0; i < 4; ++i) acc[j][i] = multiply_add<kPairs>(key, query[i], acc[j][i]);
    }
  }
  for (int j = 0; j < kKeys; ++j) {
    for (int i = 0; i < 4; ++i) _mm512_store_ps(scores + j * kQueryTile + i * 16, acc[j][i]);
  }
}

// out_t[c][0:64] = out_t[c][0:64] * correction + sum_j value_j[c] probabilities[j][0:64] for kChannels
// channels from out_t's first, over `keys` rows j (keys, or key pairs), value j at values + j * stride.
template <bool kPairs, int kChannels>
inline void value_block(const float* probabilities, int64_t keys, const float* values, int64_t stride,
                        const __m512* correction, float* out_t) {
  __m512 acc[kChannels][4];
  for (int c = 0; c < kChannels; ++c) {
    for (int i = 0; i < 4; ++i) {
      acc[c][i] = _mm512_mul_ps(_mm512_load_ps(out_t + c * kQueryTile + i * 16), correction[i]);
    }
  }
  for (int64_t j = 0; j < keys; ++j) {
    __m512 p[4];
    for (int i = 0; i < 4; ++i) p[i] = _mm512_load_ps(probabilities + j * kQueryTile + i * 16);
    for (int c = 0; c < kChannels; ++c) {
      const __m512 value = _mm512_set1_ps(values[j * stride + c]);
      for (int i = 0; i < 4; ++i) acc[c][i] = multiply_add<kPairs>(value, p[i], acc[c][i]);
    }
  }
  for (int c = 0; c < kChannels; ++c) {
    for (int i = 0; i < 4; ++i) _mm512_store_ps(out_t + c * kQueryTile + i * 16, acc[c][i]);
  }
}

// The blocks by size, for a tile's remainder of keys or channels.
using ScoreBlock = void (*)(const float*, int64_t, const float*, int64_t, float*);
using ValueBlock = void (*)(const float*, int64_t, const float*, int64_t, const __m512*, float*);
template <bool kPairs>
constexpr ScoreBlock kScoreBlocks[] = {nullptr,
                                       score_block<kPairs, 1>,
                                       score_block<kPairs, 2>,
                                       score_block<kPairs, 3>,
                                       score_block<kPairs, 4>,
                                       score_block<kPairs, 5>,
                                       score_block<kPairs, 6>};
template <bool kPairs>
constexpr ValueBlock kValueBlocks[] = {nullptr,
                                       value_block<kPairs, 1>,
                                       value_block<kPairs, 2>,
                                       value_block<kPairs, 3>,
                                       value_block<kPairs, 4>,
                                       value_block<kPairs, 5>,
                                       value_block<kPairs, 6>};

// One (batch, head)'s operands for a query tile, as the kernels' words (see multiply_add).
struct HeadOperands {
  const float* queries;  // the tile's first query; `query_stride` words to the next, `columns` words each
  int64_t query_stride;
  const float* keys;    // [Lk][columns], head-major
  const float* values;  // [Lk][D] (f32), or [Lk / 2 rounded up][D] key pairs
  int64_t columns;      // words per query or key: D (f32), or (D + 1) / 2 channel pairs
  int64_t d;
};

// One (batch, head, query tile): `rows` (<= 64) queries against keys and values [0, key_end); out
// (y's rows, `out_stride` elements apart, f32 or bf16) = attention. With `causal`, key j is masked
// for query first_query + r where j > first_query + r. The bf16 kernels round as bf16 attention
// rounds (attention_amx.cc): the maxes up to integers and the probabilities to bf16 before P v (the
// caller has rounded q, k and v). Scratch, 64-byte aligned: q_t [columns][64], out_t [D][64],
// scores [kKeyTile][64].
template <FlashKernel kKernel>
void flash_tile(const HeadOperands& head, void* out, bool out_bf16, int64_t out_stride, int64_t rows,
                int64_t first_query, int64_t key_end, bool causal, float alpha, float* q_t, float* out_t,
                float* scores) {
  constexpr bool kPairs = kKernel == FlashKernel::kBf16Pairs;
  const int64_t columns = head.columns, d = head.d;
  // Queries transposed to [columns][64] (zeros past `rows`), so that a key's broadcast word meets
  // 64 queries in four vectors: gathered 16 queries at a time (moves of 32-bit words, bf16 pairs
  // alike).
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i query_offsets = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(head.query_stride)));
  __mmask16 row_mask[4];
  for (int i = 0; i < 4; ++i) row_mask[i] = first_lanes(rows - i * 16);
  for (int64_t c = 0; c < columns; ++c) {
    for (int i = 0; i < 4; ++i) {
      const __m512 gathered =
          _mm512_mask_i32gather_ps(_mm512_setzero_ps(), row_mask[i], query_offsets,
                                   head.queries + (row_mask[i] ? i * 16 : 0) * head.query_stride + c, 4);
      _mm512_store_ps(q_t + c * kQueryTile + i * 16, gathered);
    }
  }
  for (int64_t i = 0; i < d * kQueryTile; ++i) out_t[i] = 0.0f;
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  // exp(alpha s - max) as 2^(t - max) with t = log2(e) alpha s: maxes in log2 units.
  const __m512 scale = _mm512_set1_ps(alpha * 1.44269504088896341f);
  // Per query, in log2 units of scaled scores: the running max and the sum of 2^(t - max).
  __m512 row_max[4], row_sum[4];
  for (int i = 0; i < 4; ++i) {
    row_max[i] = neg_inf;
    row_sum[i] = _mm512_setzero_ps();
  }
  for (int64_t k0 = 0; k0 < key_end; k0 += kKeyTile) {
    const int64_t nk = k0 + kKeyTile < key_end ? kKeyTile : key_end - k0;
    // 1. Scores of the tile's keys, six at a time.
    const float* tile_keys = head.keys + k0 * columns;
    for (int64_t j = 0; j < nk; j += 6) {
      const int64_t n = nk - j < 6 ? nk - j : 6;
      kScoreBlocks<kPairs>[n](q_t, columns, tile_keys + j * columns, columns, scores + j * kQueryTile);
    }
    // 2. The causal mask (-inf) where a key of this tile is later than some query of the tile.
    const bool masked = causal && k0 + nk - 1 > first_query;
    if (masked) {
      for (int64_t j = 0; j < nk; ++j) {
        for (int i = 0; i < 4; ++i) {
          const __m512i query = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(first_query + i * 16)));
          const __mmask16 later = _mm512_cmplt_epi32_mask(query, _mm512_set1_epi32(static_cast<int>(k0 + j)));
          _mm512_mask_store_ps(scores + j * kQueryTile + i * 16, later, neg_inf);
        }
      }
    }
    // 3. Online softmax: the new running max, the factor that rescales what was summed under the
    // old one (0 on the first tile, whose old max is -inf), and the tile's probabilities
    // 2^(t - max) in place of its scores (0 for masked keys). Key 0 is never masked, so after the
    // first tile every max is finite.
    __m512 new_max[4], correction[4];
    for (int i = 0; i < 4; ++i) new_max[i] = neg_inf;
    for (int64_t j = 0; j < nk; ++j) {
      for (int i = 0; i < 4; ++i)
        new_max[i] = _mm512_maskz_max_ps(kAll, new_max[i], _mm512_load_ps(scores + j * kQueryTile + i * 16));
    }
    for (int i = 0; i < 4; ++i) {
      new_max[i] = _mm512_mul_ps(new_max[i], scale);
      if constexpr (kKernel != FlashKernel::kF32) {
        new_max[i] = _mm512_maskz_roundscale_ps(kAll, new_max[i], _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
      }
      new_max[i] = _mm512_maskz_max_ps(kAll, row_max[i], new_max[i]);
      const __mmask16 seen = _mm512_cmp_ps_mask(row_max[i], neg_inf, _CMP_NEQ_OQ);
      correction[i] = exp2_16(seen, _mm512_sub_ps(row_max[i], new_max[i]));
      row_max[i] = new_max[i];
    }
    __m512 tile_sum[4];
    for (int i = 0; i < 4; ++i) tile_sum[i] = _mm512_setzero_ps();
    // Key j's probabilities for queries [16 i, 16 i + 16), added to the tile's sum unrounded.
    auto probability = [&](int64_t j, int i) {
      const __m512 s = _mm512_load_ps(scores + j * kQueryTile + i * 16);
      const __mmask16 unmasked = masked ? _mm512_cmp_ps_mask(s, neg_inf, _CMP_NEQ_OQ) : kAll;
      const __m512 p = exp2_16(unmasked, _mm512_fmsub_ps(s, scale, new_max[i]));
      tile_sum[i] = _mm512_add_ps(tile_sum[i], p);
      return p;
    };
    if constexpr (kPairs) {
      // Keys 2j' and 2j' + 1 (zero past nk) rounded to bf16 into one word per query, in row j' of
      // the scores: rows 2j' and 2j' + 1 are read before it is written.
      for (int64_t j = 0; j < nk; j += 2) {
        for (int i = 0; i < 4; ++i) {
          const __m512i even = to_bf16_16_high(probability(j, i));
          const __m512i odd = j + 1 < nk ? to_bf16_16_high(probability(j + 1, i)) : _mm512_setzero_si512();
          const __m512i pair = _mm512_maskz_or_epi32(kAll, _mm512_maskz_srli_epi32(kAll, even, 16), odd);
          _mm512_store_si512(scores + j / 2 * kQueryTile + i * 16, pair);
        }
      }
    } else {
      for (int64_t j = 0; j < nk; ++j) {
        for (int i = 0; i < 4; ++i) {
          const __m512 p = probability(j, i);
          if constexpr (kKernel == FlashKernel::kBf16Widened) {
            _mm512_store_si512(scores + j * kQueryTile + i * 16, to_bf16_16_high(p));
          } else {
            _mm512_store_ps(scores + j * kQueryTile + i * 16, p);
          }
        }
      }
    }
    for (int i = 0; i < 4; ++i) row_sum[i] = _mm512_fmadd_ps(row_sum[i], correction[i], tile_sum[i]);
    // 4. out = out * correction + P v, six channels at a time, over keys or key pairs.
    const int64_t value_rows = kPairs ? (nk + 1) / 2 : nk;
    const float* tile_values = head.values + (kPairs ? k0 / 2 : k0) * d;
    for (int64_t c = 0; c < d; c += 6) {
      const int64_t n = d - c < 6 ? d - c : 6;
      kValueBlocks<kPairs>[n](scores, value_rows, tile_values + c, d, correction, out_t + c * kQueryTile);
    }
  }
  // out = out_t / sum, scattered back into the interleaved rows (f32), or row by row (bf16).
  if (!out_bf16) {
    const __m512i out_offsets = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(out_stride)));
    float* out_f32 = static_cast<float*>(out);
    for (int64_t c = 0; c < d; ++c) {
      for (int i = 0; i < 4; ++i) {
        const __m512 o = _mm512_div_ps(_mm512_load_ps(out_t + c * kQueryTile + i * 16), row_sum[i]);
        _mm512_mask_i32scatter_ps(out_f32 + (row_mask[i] ? i * 16 : 0) * out_stride + c, row_mask[i], out_offsets, o,
                                  4);
      }
    }
    return;
  }
  alignas(64) float sums[kQueryTile];
  for (int i = 0; i < 4; ++i) _mm512_store_ps(sums + i * 16, row_sum[i]);
  float row[512];  // one query's output; the caller sends D <= 512 here
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < d; ++c) row[c] = out_t[c * kQueryTile + r] / sums[r];
    to_bf16_row(row, static_cast<uint16_t*>(out) + r * out_stride, d);
  }
}

#endif  // __AVX512F__

}  // namespace

// q: [B, Lq, H*D]; k, v: [B, Lk, H*D]; y: [B, Lq, H*D]. Head h of token t is at t*H*D + h*D.
void attention_matmuls(MatmulCache& cache, const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads,
                       bool causal, std::vector<float>& scores, Tensor& y) {
  assert(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && y.is_contiguous());
  assert(q.dtype() == k.dtype() && q.dtype() == v.dtype());
  const int64_t batch = q.dim(0), lq = q.dim(1), channels = q.dim(2), lk = k.dim(1);
  assert(channels % heads == 0 && k.dim(2) == channels && v.dim(1) == lk && y.dim(1) == lq);
  const int64_t d = channels / heads;
  const float alpha = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  int64_t tile = kScoreBudget / (batch * heads * lk);
  tile = tile < 16 ? 16 : tile;
  tile = tile > lq ? lq : tile;
  if (scores.size() < static_cast<size_t>(batch * heads * tile * lk)) {
    scores.resize(static_cast<size_t>(batch * heads * tile * lk));
  }

  OneDnn& onednn = cache.onednn();
  const DType compute = onednn.compute_dtype;
  const bool bf16 = compute == DType::kBF16;
  assert(bf16 || (q.dtype() == DType::kF32 && y.dtype() == DType::kF32));
  std::vector<float> row_scale;  // bf16: per score row, 1 / the sum of its probabilities
  // bf16: P v of one query tile [B, H, rows, D], normalised from there into y's rows.
  std::vector<float> tile_out;
  // k and v as [B, H, Lk, D]: in place (interleaved), or head-major bf16 copies.
  const void* k_data = k.raw_data();
  const void* v_data = v.raw_data();
  memory::dims kv_strides = {lk * channels, d, channels, 1};
  uint16_t* q_tile = nullptr;
  uint16_t* probabilities = nullptr;
  if (bf16) {
    uint16_t* k16 = onednn.scratch.get(Bf16Scratch::Slot::kOperand, k.numel());
    uint16_t* v16 = onednn.scratch.get(Bf16Scratch::Slot::kValues, v.numel());
    to_bf16_head_major(Bf16Source(k), batch, lk, heads, d, 0, lk, k16);
    to_bf16_head_major(Bf16Source(v), batch, lk, heads, d, 0, lk, v16);
    k_data = k16;
    v_data = v16;
    kv_strides = {heads * lk * d, lk * d, d, 1};
    q_tile = onednn.scratch.get(Bf16Scratch::Slot::kSrc, batch * heads * tile * d);
    probabilities = onednn.scratch.get(Bf16Scratch::Slot::kProbabilities, batch * heads * tile * lk);
    tile_out.resize(static_cast<size_t>(batch * heads * tile * d));
  }
  // k^T as [B, H, D, Lk] (k's strides with the last two swapped) and v as [B, H, Lk, D].
  const memory::desc k_t = plain_desc(compute, {batch, heads, d, lk}, {kv_strides[0], kv_strides[1], 1, kv_strides[2]});
  const memory::desc v_desc = plain_desc(compute, {batch, heads, lk, d}, kv_strides);

  for (int64_t q0 = 0; q0 < lq; q0 += tile) {
    const int64_t rows = q0 + tile < lq ? tile : lq - q0;
    // Queries [q0, q0 + rows) as [B, H, rows, D]: in place, or a dense bf16 copy of the tile.
    memory::desc q_desc = plain_desc(compute, {batch, heads, rows, d}, {lq * channels, d, channels, 1});
    const void* q_data = bf16 ? nullptr : q.data<float>() + q0 * channels;
    if (bf16) {
      to_bf16_head_major(Bf16Source(q), batch, lq, heads, d, q0, rows, q_tile);
      q_desc = plain_desc(compute, {batch, heads, rows, d}, memory::format_tag::abcd);
      q_data = q_tile;
    }
    // Scores (and probabilities) [B, H, rows, Lk] contiguous.
    const memory::dims s_dims = {batch, heads, rows, lk};
    const memory::desc s_desc = plain_desc(DType::kF32, s_dims, memory::format_tag::abcd);
    cache.run(q_desc, q_data, k_t, k_data, s_desc, scores.data(), alpha);

    const int64_t score_rows = batch * heads * rows;
    if (row_scale.size() < static_cast<size_t>(score_rows)) row_scale.resize(static_cast<size_t>(score_rows));
#pragma omp parallel
    {
      const DenormalsFlushed flushed;  // which also keeps denormal probabilities out of the P v matmul
      // In bf16 the f32 probabilities go to a row in cache and only their bf16 copy to memory:
      // writing them back over the scores would cost another pass over the tile's 64 MB.
      std::vector<float> row_buffer(static_cast<size_t>(bf16 ? lk : 0));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < score_rows; ++r) {
        const float* row = scores.data() + r * lk;
        // Keys j > query are masked to probability 0.
        const int64_t query = q0 + r % rows;
        const int64_t valid = causal && query + 1 < lk ? query + 1 : lk;
        if (!bf16) {
          float* out = scores.data() + r * lk;
          softmax_row(row, out, valid);
          for (int64_t j = valid; j < lk; ++j) out[j] = 0.0f;
          continue;
        }
        // bf16(2^(t_j - m)) with t_j = log2(e) s_j and m = ceil(max_j t_j), normalised after P v.
        float* out = row_buffer.data();
        float max_score = row[0];
        for (int64_t j = 1; j < valid; ++j) max_score = row[j] > max_score ? row[j] : max_score;
        const double m = std::ceil(static_cast<double>(max_score) * 1.4426950408889634);
        const float shift = static_cast<float>(m * 0.6931471805599453);  // exp(s - m ln 2) = 2^(t - m)
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < valid; ++j) {
          out[j] = exp_approx(row[j] - shift);
          sum += out[j];
        }
        for (int64_t j = valid; j < lk; ++j) out[j] = 0.0f;
        to_bf16_row(out, probabilities + r * lk, lk);
        row_scale[static_cast<size_t>(r)] = 1.0f / sum;
      }
    }

    const memory::desc p_desc = plain_desc(compute, s_dims, memory::format_tag::abcd);
    const void* p_data = bf16 ? static_cast<const void*>(probabilities) : static_cast<const void*>(scores.data());
    if (!bf16) {
      // out[B, H, rows, D] written straight into y's interleaved channels.
      const memory::desc o_desc = plain_desc(DType::kF32, {batch, heads, rows, d}, {lq * channels, d, channels, 1});
      cache.run(p_desc, p_data, v_desc, v_data, o_desc, y.data<float>() + q0 * channels, 1.0f);
      continue;
    }
    // out[B, H, rows, D] dense, then each (batch, head, query) row divided by its probabilities'
    // sum into y's interleaved channels, in y's dtype.
    const memory::desc o_desc = plain_desc(DType::kF32, {batch, heads, rows, d}, memory::format_tag::abcd);
    cache.run(p_desc, p_data, v_desc, v_data, o_desc, tile_out.data(), 1.0f);
#pragma omp parallel for collapse(2) schedule(static) if (score_rows * d > 16384)
    for (int64_t bh = 0; bh < batch * heads; ++bh) {
      for (int64_t t = 0; t < rows; ++t) {
        float* out = tile_out.data() + (bh * rows + t) * d;
        const float inverse = row_scale[static_cast<size_t>(bh * rows + t)];
        for (int64_t c = 0; c < d; ++c) out[c] *= inverse;
        write_row(out, y, ((bh / heads) * lq + q0 + t) * channels + (bh % heads) * d, d);
      }
    }
  }
}

#if defined(__AVX512F__)
namespace {

// All (batch, head, query tile)s of flash_tile<kKernel> on the OpenMP pool. q: [B, Lq] tokens of
// heads x `columns` words (`q_token` words per token); k, v: per (batch, head) as HeadOperands
// wants them, `kv_head` and `v_head` words apart.
template <FlashKernel kKernel>
void flash_tiles(const float* q, int64_t q_token, const float* k, int64_t kv_head, const float* v, int64_t v_head,
                 int64_t columns, int64_t heads, int64_t lk, bool causal, Tensor& y) {
  const int64_t batch = y.dim(0), lq = y.dim(1), channels = y.dim(2), d = channels / heads;
  const float alpha = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const int64_t tiles = (lq + kQueryTile - 1) / kQueryTile;
  const bool y_bf16 = y.dtype() == DType::kBF16;
  char* py = static_cast<char*>(y.raw_data());
  const size_t y_element = tensor::dtype_size(y.dtype());
  // Below ~64K multiply-adds a parallel region costs more than the attention (tiny models').
#pragma omp parallel if (batch * heads * lq * lk * d > 65536)
  {
    const DenormalsFlushed flushed;
    struct alignas(64) Vector16 {
      float lanes[16];
    };
    // q_t [columns][64], out_t [D][64], scores [kKeyTile][64].
    std::vector<Vector16> scratch(static_cast<size_t>((columns + d + kKeyTile) * kQueryTile / 16));
    float* q_t = scratch.data()->lanes;
    float* out_t = q_t + columns * kQueryTile;
    float* scores = out_t + d * kQueryTile;
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t t = 0; t < tiles; ++t) {
          const int64_t q0 = t * kQueryTile;
          const int64_t rows = q0 + kQueryTile < lq ? kQueryTile : lq - q0;
          const int64_t key_end = causal && q0 + rows < lk ? q0 + rows : lk;
          const int64_t bh = b * heads + h;
          const HeadOperands head{
              q + (b * lq + q0) * q_token + h * columns, q_token, k + bh * kv_head, v + bh * v_head, columns, d};
          const int64_t at = (b * lq + q0) * channels + h * d;
          flash_tile<kKernel>(head, py + at * y_element, y_bf16, channels, rows, q0, key_end, causal, alpha, q_t, out_t,
                              scores);
        }
      }
    }
  }
}

}  // namespace

FlashKernel bf16_flash_kernel() {
  // vdpbf16ps does two FMAs' work: AMD's Zen 4 and Zen 5 issue it at the FMA's rate (their bf16
  // peak is twice their f32 peak), Intel's at half of it (measured on a Sapphire Rapids class
  // Xeon: 1 every 2 cycles against 2 FMAs a cycle, the pairs kernel 1.45x slower than the widened
  // one at SD's first level). Chosen by vendor, not by timing, so that a machine always computes the
  // same numbers.
  static const FlashKernel kernel =
      kHasDotPairs && __builtin_cpu_is("amd") ? FlashKernel::kBf16Pairs : FlashKernel::kBf16Widened;
  return kernel;
}

void flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal, FlashKernel kernel,
                     std::vector<float>& packed, Tensor& y) {
  assert(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && y.is_contiguous());
  assert(q.dtype() == k.dtype() && q.dtype() == v.dtype());
  const int64_t batch = q.dim(0), lq = q.dim(1), channels = q.dim(2), lk = k.dim(1);
  assert(channels % heads == 0 && k.dim(2) == channels && v.dim(1) == lk && y.dim(1) == lq);
  const int64_t d = channels / heads;
  assert(kernel != FlashKernel::kF32 || (q.dtype() == DType::kF32 && y.dtype() == DType::kF32));
  assert(d <= 512 || y.dtype() == DType::kF32);
  const Bf16Source q_source(q), k_source(k), v_source(v);
  // k and v are copied head-major, [B, H, Lk, ...]. Interleaved, a head's D floats of a token share
  // cache lines with the neighbouring heads' (160 bytes over 3 lines at D = 40); dense, one head's
  // keys and values (1.3 MB at Lk = 4096, D = 40) stay in L2 while all its query tiles pass.
  // Measured ~25% faster at SD's first level.
  if (kernel != FlashKernel::kBf16Pairs) {
    // Floats: [B, H, Lk, D] for k and v. bf16 values widened (rounded from f32, or from bf16
    // operands) for the bf16 kernel, which also gets such a copy of q in y's layout.
    const bool bf16 = kernel == FlashKernel::kBf16Widened;
    const bool q_copy = q.dtype() != DType::kF32 || bf16;
    const int64_t packed_size = 2 * batch * lk * channels + (q_copy ? batch * lq * channels : 0);
    if (packed.size() < static_cast<size_t>(packed_size)) packed.resize(static_cast<size_t>(packed_size));
    float* k_packed = packed.data();
    float* v_packed = k_packed + batch * lk * channels;
    float* q_rounded = v_packed + batch * lk * channels;
#pragma omp parallel for collapse(2) schedule(static) if (batch * lk * channels > 65536)
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t j = 0; j < lk; ++j) {
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t from = (b * lk + j) * channels + h * d, to = ((b * heads + h) * lk + j) * d;
          k_source.read_f32(from, k_packed + to, d, bf16);
          v_source.read_f32(from, v_packed + to, d, bf16);
        }
      }
    }
    if (q_copy) {
#pragma omp parallel for schedule(static) if (batch * lq * channels > 65536)
      for (int64_t t = 0; t < batch * lq; ++t) {
        q_source.read_f32(t * channels, q_rounded + t * channels, channels, bf16);
      }
    }
    const float* pq = q_copy ? q_rounded : q.data<float>();
    if (bf16) {
      flash_tiles<FlashKernel::kBf16Widened>(pq, channels, k_packed, lk * d, v_packed, lk * d, d, heads, lk, causal, y);
    } else {
      flash_tiles<FlashKernel::kF32>(pq, channels, k_packed, lk * d, v_packed, lk * d, d, heads, lk, causal, y);
    }
    return;
  }
#if defined(__AVX512BF16__)
  // bf16 pairs (see multiply_add), rounded from f32 operands or copied from bf16 ones, channels
  // padded to an even count and keys to an even count with zeros: k [B, H, Lk, pairs] and
  // v [B, H, Lk / 2, D] (key pairs). q as [B, Lq, H, pairs], gathered by the tiles: at an even D
  // that is q's own layout, read in place where q is bf16.
  const int64_t pairs = (d + 1) / 2, key_pairs = (lk + 1) / 2;
  const int64_t k_words = batch * heads * lk * pairs, v_words = batch * heads * key_pairs * d;
  const bool q_in_place = q.dtype() == DType::kBF16 && d % 2 == 0;
  const int64_t q_words = q_in_place ? 0 : batch * lq * heads * pairs;
  if (packed.size() < static_cast<size_t>(k_words + v_words + q_words)) {
    packed.resize(static_cast<size_t>(k_words + v_words + q_words));
  }
  float* k_packed = packed.data();
  float* v_packed = k_packed + k_words;
  float* q_packed = v_packed + v_words;
  // Token t's `count` bf16 from `source` at `at`, zero-padded to whole pairs per head, into the
  // words at `to`.
  auto read_pairs = [&](const Bf16Source& source, int64_t at, int64_t count, float* to) {
    uint16_t* halves = reinterpret_cast<uint16_t*>(to);
    if (d % 2 == 0) {
      source.read(at, halves, count);
      return;
    }
    for (int64_t c = 0; c < count; c += d, halves += 2 * pairs) {
      source.read(at + c, halves, d);
      halves[d] = 0;
    }
  };
#pragma omp parallel if (batch * lk * channels > 65536)
  {
    std::vector<uint16_t> two_keys(static_cast<size_t>(2 * channels));  // v's tokens 2j' and 2j' + 1
#pragma omp for collapse(2) schedule(static) nowait
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t j = 0; j < lk; ++j) {
        for (int64_t h = 0; h < heads; ++h) {
          read_pairs(k_source, (b * lk + j) * channels + h * d, d, k_packed + ((b * heads + h) * lk + j) * pairs);
        }
      }
    }
#pragma omp for collapse(2) schedule(static) nowait
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t jp = 0; jp < key_pairs; ++jp) {
        const bool odd_key = 2 * jp + 1 < lk;
        v_source.read((b * lk + 2 * jp) * channels, two_keys.data(), (odd_key ? 2 : 1) * channels);
        if (!odd_key) std::fill(two_keys.begin() + channels, two_keys.end(), uint16_t{0});
        for (int64_t h = 0; h < heads; ++h) {
          const uint16_t* even = two_keys.data() + h * d;
          const uint16_t* odd = even + channels;
          uint32_t* words = reinterpret_cast<uint32_t*>(v_packed + ((b * heads + h) * key_pairs + jp) * d);
          for (int64_t c = 0; c < d; ++c) words[c] = even[c] | static_cast<uint32_t>(odd[c]) << 16;
        }
      }
    }
    if (!q_in_place) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < batch * lq; ++t) {
        read_pairs(q_source, t * channels, channels, q_packed + t * heads * pairs);
      }
    }
  }
  const float* q_pairs = q_in_place ? static_cast<const float*>(q.raw_data()) : q_packed;
  flash_tiles<FlashKernel::kBf16Pairs>(q_pairs, heads * pairs, k_packed, lk * pairs, v_packed, key_pairs * d, pairs,
                                       heads, lk, causal, y);
#else
  assert(false && "the bf16 pairs kernel needs an AVX512-BF16 build");
#endif
}
#endif

void attention(MatmulCache& cache, const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal,
               std::vector<float>& scores, Tensor& y) {
  // bf16 operands only in bf16 compute (the operand dtype).
  assert(cache.onednn().compute_dtype == DType::kBF16 || (q.dtype() == DType::kF32 && y.dtype() == DType::kF32));
  const DType compute = cache.onednn().compute_dtype;
  if (compute == DType::kBF16 && flash_attention_amx(cache.onednn(), q, k, v, heads, causal, y)) return;
#if defined(__AVX512F__)
  // f32, and bf16 without AMX (AVX512-BF16 only, as Zen 4): oneDNN's bf16 matmuls run q k^T at
  // D = 40 at a quarter of the flash kernel's speed.
  if (compute == DType::kF32 || q.dim(2) / heads <= 512) {
    flash_attention(q, k, v, heads, causal, compute == DType::kF32 ? FlashKernel::kF32 : bf16_flash_kernel(), scores,
                    y);
    return;
  }
#endif
  attention_matmuls(cache, q, k, v, heads, causal, scores, y);
}

}  // namespace sdstack::backend::cpu
