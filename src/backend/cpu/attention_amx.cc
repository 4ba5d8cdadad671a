// Fused (flash-style) multi-head attention in bf16 on AMX: per (batch, head, tile of 32 queries)
// the keys and values stream by in chunks of 64; q k^T and P v run as AMX tile products (bf16
// inputs, f32 accumulation), the online softmax runs on AVX-512 in f32 between them, and no score
// matrix is ever stored.
//
// Probabilities are rounded to bf16 before they are normalised: p_j = bf16(2^(t_j - m)) with
// t_j = log2(e) q.k_j / sqrt(D) and m the running max of t rounded up to an integer, and
// y = sum_j p_j v_j / sum_j 2^(t_j - m) (the sum from the unrounded f32 terms). Because m is an
// integer, the rescaling when m grows is by a power of two, exact, and p_j is the same bf16 number
// (up to that power of two) whichever chunk raised the max: the result does not depend on the
// chunking (up to the f32 rounding of t - m, an ulp of t), and attention_matmuls computes the
// same. m may also lag behind the max by up to kMaxHeadroom (see chunk_softmax), for the same reason.
#include <cassert>
#include <cmath>
#include <vector>

#if defined(__AMX_BF16__) && defined(__AMX_TILE__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "backend/cpu/avx512_math.h"
#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/vec_math.h"

namespace sdstack::backend::cpu {

#if defined(__AMX_BF16__) && defined(__AMX_TILE__) && defined(__AVX512BF16__)
namespace {

// Queries per tile: two AMX tiles of 16 rows.
constexpr int64_t kQueries = 32;  // also the bits of chunk_softmax's mask of rows
// Keys per chunk: the chunk's f32 scores (32 x 64, 8 KB), its two bf16 probability buffers (8 KB),
// the running output (6 KB at D = 40) and the queries (4 KB) stay in L1 together. Measured about
// 5-10% faster than chunks of 128 at SD's first level (5% slower at the second, D = 80).
constexpr int64_t kChunk = 64;
// Keys per AMX step of q k^T and P v: two key tiles of 16, or one 64-byte row of bf16 pairs.
constexpr int64_t kKeyStep = 32;
// How far (in log2 units) a chunk's scores may rise above a row's running max before the max is
// raised: probabilities up to 2^16, sums up to 2^16 per key, far inside f32's range. (Checked on
// the sum of each lane's terms in the chunk, which any single term past it exceeds.)
constexpr float kMaxHeadroom = 16.0f;

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// Linux hands out AMX's 8 KB of tile state only on request, once per process.
// The kernel also keeps to ONEDNN_MAX_CPU_ISA, as oneDNN's own primitives do: with it set below
// AMX (say AVX512_CORE_BF16, to see how a CPU without AMX would run) attention takes the AVX-512
// kernel.
bool amx_permitted() {
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  static const bool permitted = [] {
    const unsigned amx = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_amx);
    if ((static_cast<unsigned>(dnnl::get_effective_cpu_isa()) & amx) != amx) return false;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return permitted;
}

// Every tile register as 16 rows of 64 bytes: the A operands (16 queries x 32 bf16), the B operands
// (16 rows of 16 bf16 pairs) and the f32 accumulators (16 x 16) alike.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// An operand's tile for step s at data + s * step bytes, its rows `stride` bytes apart.
struct Operand {
  const void* data;
  int64_t stride;
  int64_t step;
  const void* at(int64_t s) const { return static_cast<const char*>(data) + s * step; }
};

// c[i][j] (+)= sum over `steps` of a_i(s) b_j(s), for two A tiles (i) and one or two B tiles (j;
// b1.data null for one). Accumulators start from c (c_i_j at c + i * 16 rows + j * 64 bytes) or
// from zero, and are stored back there.
void tile_product(int64_t steps, Operand a0, Operand a1, Operand b0, Operand b1, float* c, int64_t c_stride,
                  bool accumulate) {
  char* c_bytes = reinterpret_cast<char*>(c);
  char* c00 = c_bytes;
  char* c01 = c_bytes + 64;
  char* c10 = c_bytes + 16 * c_stride;
  char* c11 = c10 + 64;
  const bool two = b1.data != nullptr;
  if (accumulate) {
    _tile_loadd(0, c00, c_stride);
    _tile_loadd(2, c10, c_stride);
    if (two) _tile_loadd(1, c01, c_stride);
    if (two) _tile_loadd(3, c11, c_stride);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t s = 0; s < steps; ++s) {
    _tile_loadd(4, a0.at(s), a0.stride);
    _tile_loadd(6, b0.at(s), b0.stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(5, a1.at(s), a1.stride);
    _tile_dpbf16ps(2, 5, 6);
    if (two) {
      _tile_loadd(7, b1.at(s), b1.stride);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c00, c_stride);
  _tile_stored(2, c10, c_stride);
  if (two) _tile_stored(1, c01, c_stride);
  if (two) _tile_stored(3, c11, c_stride);
}

// The max of x's lanes, in every lane: a butterfly of shuffles.
inline __m512 broadcast_max(__m512 x) {
  x = _mm512_maskz_max_ps(kAll, x, _mm512_maskz_shuffle_f32x4(kAll, x, x, 0x4e));  // 256-bit halves swapped
  x = _mm512_maskz_max_ps(kAll, x, _mm512_maskz_shuffle_f32x4(kAll, x, x, 0xb1));  // 128-bit quarters swapped
  x = _mm512_maskz_max_ps(kAll, x, _mm512_maskz_permute_ps(kAll, x, 0x4e));        // pairs swapped
  return _mm512_maskz_max_ps(kAll, x, _mm512_maskz_permute_ps(kAll, x, 0xb1));     // neighbours swapped
}

// The sum of x's lanes, in every lane: the same butterfly.
inline __m512 broadcast_sum(__m512 x) {
  x = _mm512_add_ps(x, _mm512_maskz_shuffle_f32x4(kAll, x, x, 0x4e));
  x = _mm512_add_ps(x, _mm512_maskz_shuffle_f32x4(kAll, x, x, 0xb1));
  x = _mm512_add_ps(x, _mm512_maskz_permute_ps(kAll, x, 0x4e));
  return _mm512_add_ps(x, _mm512_maskz_permute_ps(kAll, x, 0xb1));
}

// Head-major bf16 copies, zero-padded, laid out as the AMX operands want them (dp = D rounded up
// to 32, dv = D rounded up to 16; q and k zero past D, so the padding adds nothing to q.k):
//   q: [32][dp] per query tile (`rows` real queries, `channels` floats apart), row-major: A tiles
//      of 16 queries x 32 channels; packed by the thread that runs the tile.
//   k: [BH][lk_pad / 16][dp / 2][16][2]: per 16 keys, B tiles of channel pairs x keys.
//   v: [BH][lk_pad / 2][dv][2]: B tiles of key pairs x channels.
void pack_q(const Bf16Source& q, int64_t at, int64_t rows, int64_t channels, int64_t d, int64_t dp, uint16_t* out) {
  for (int64_t t = 0; t < kQueries; ++t) {
    uint16_t* row = out + t * dp;  // 64-byte aligned: dp is a multiple of 32
    for (int64_t c = 0; c < dp; c += 32) _mm512_store_si512(row + c, _mm512_setzero_si512());
    if (t < rows) q.read(at + t * channels, row, d);
  }
}

// out[c][r] = x[r][c] for 16 x 16 32-bit words (row r of x at x + r * stride words; out contiguous):
// pairs of words, then of pairs, interleaved within 128-bit lanes, then the lanes gathered.
inline void transpose_16x16(const uint32_t* x, int64_t stride, uint32_t* out) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(x + i * stride);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_epi32(kAll, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_epi32(kAll, r[i], r[i + 1]);
  }
  // r[4g + k], lane L: column 4L + k of rows 4g .. 4g + 3.
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_maskz_unpacklo_epi64(0xff, t[i], t[i + 2]);
    r[i + 1] = _mm512_maskz_unpackhi_epi64(0xff, t[i], t[i + 2]);
    r[i + 2] = _mm512_maskz_unpacklo_epi64(0xff, t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_maskz_unpackhi_epi64(0xff, t[i + 1], t[i + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512i even_lanes_low = _mm512_maskz_shuffle_i32x4(kAll, r[k], r[4 + k], 0x88);  // lanes 0, 2
    const __m512i odd_lanes_low = _mm512_maskz_shuffle_i32x4(kAll, r[k], r[4 + k], 0xdd);   // lanes 1, 3
    const __m512i even_lanes_high = _mm512_maskz_shuffle_i32x4(kAll, r[8 + k], r[12 + k], 0x88);
    const __m512i odd_lanes_high = _mm512_maskz_shuffle_i32x4(kAll, r[8 + k], r[12 + k], 0xdd);
    _mm512_storeu_si512(out + k * 16, _mm512_maskz_shuffle_i32x4(kAll, even_lanes_low, even_lanes_high, 0x88));
    _mm512_storeu_si512(out + (8 + k) * 16, _mm512_maskz_shuffle_i32x4(kAll, even_lanes_low, even_lanes_high, 0xdd));
    _mm512_storeu_si512(out + (4 + k) * 16, _mm512_maskz_shuffle_i32x4(kAll, odd_lanes_low, odd_lanes_high, 0x88));
    _mm512_storeu_si512(out + (12 + k) * 16, _mm512_maskz_shuffle_i32x4(kAll, odd_lanes_low, odd_lanes_high, 0xdd));
  }
}

// pack_k and pack_v run inside the caller's parallel region (one region for both and the
// attention: under load a barrier costs a time slice). Each reads 16 keys' whole rows (all heads)
// at a time, so that k and v are read once, in order, and moves bf16 pairs as 32-bit words: per
// head a transposition of [16 keys][dp / 2 pairs] into [dp / 2 pairs][16 keys] for k, an
// interleaving of each key pair's channels for v. `rows` holds 16 x channels bf16.
void pack_k(const Bf16Source& k, int64_t batch, int64_t lk, int64_t heads, int64_t d, int64_t lk_pad, int64_t dp,
            uint16_t* rows, uint16_t* out) {
  const int64_t channels = heads * d;
#pragma omp for collapse(2) schedule(static) nowait
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t tile = 0; tile < lk_pad / 16; ++tile) {
      const int64_t keys = lk - tile * 16 < 16 ? (lk > tile * 16 ? lk - tile * 16 : 0) : 16;  // real ones
      k.read((b * lk + tile * 16) * channels, rows, keys * channels);
      for (int64_t h = 0; h < heads; ++h) {
        alignas(64) uint32_t head[16][256];  // the head's 16 keys, channel pairs (dp <= 512), zero-padded
        for (int64_t j = 0; j < 16; ++j) {
          const uint16_t* key = rows + j * channels + h * d;
          const int64_t real = j < keys ? d : 0;
          for (int64_t c = 0; c < dp; c += 32) {
            const __mmask32 lanes = real - c >= 32 ? ~0u : real <= c ? 0u : (1u << (real - c)) - 1;
            _mm512_store_si512(reinterpret_cast<uint16_t*>(head[j]) + c, _mm512_maskz_loadu_epi16(lanes, key + c));
          }
        }
        uint32_t* packed = reinterpret_cast<uint32_t*>(out + ((b * heads + h) * lk_pad + tile * 16) * dp);
        for (int64_t pair = 0; pair < dp / 2; pair += 16) transpose_16x16(&head[0][pair], 256, packed + pair * 16);
      }
    }
  }
}

void pack_v(const Bf16Source& v, int64_t batch, int64_t lk, int64_t heads, int64_t d, int64_t lk_pad, int64_t dv,
            uint16_t* rows, uint16_t* out) {
  const int64_t channels = heads * d;
#pragma omp for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t tile = 0; tile < lk_pad / 16; ++tile) {
      const int64_t keys = lk - tile * 16 < 16 ? (lk > tile * 16 ? lk - tile * 16 : 0) : 16;  // real ones
      v.read((b * lk + tile * 16) * channels, rows, keys * channels);
      for (int64_t j = keys * channels; j < 16 * channels; ++j) rows[j] = 0;
      for (int64_t h = 0; h < heads; ++h) {
        uint32_t* packed = reinterpret_cast<uint32_t*>(out + ((b * heads + h) * lk_pad + tile * 16) * dv);
        for (int64_t pair = 0; pair < 8; ++pair) {
          const uint16_t* even = rows + 2 * pair * channels + h * d;
          const uint16_t* odd = even + channels;
          for (int64_t c = 0; c < d; ++c) packed[pair * dv + c] = even[c] | static_cast<uint32_t>(odd[c]) << 16;
          for (int64_t c = d; c < dv; ++c) packed[pair * dv + c] = 0;
        }
      }
    }
  }
}

// Asks for the cache lines of `rows` rows of d elements (element_size bytes) at base + at elements,
// `channels` elements apart: the next query tile's q and y, which a head's tiles read and write
// with a stride that the hardware prefetchers do not follow (each row a few lines, `channels`
// apart). Measured 30% off the cross-attention at SD's first level, 10% off the second level's
// self-attention.
void prefetch_rows(const void* base, int64_t element_size, int64_t at, int64_t rows, int64_t channels, int64_t d,
                   bool for_write) {
  for (int64_t r = 0; r < rows; ++r) {
    const char* first = static_cast<const char*>(base) + (at + r * channels) * element_size;
    const uintptr_t line = reinterpret_cast<uintptr_t>(first) & ~uintptr_t{63};
    for (const char* p = reinterpret_cast<const char*>(line); p < first + d * element_size; p += 64) {
      if (for_write) {
        _m_prefetchw(const_cast<char*>(p));
      } else {
        _mm_prefetch(p, _MM_HINT_T0);
      }
    }
  }
}

// Per-thread buffers of one query tile: scores [32][kChunk] f32, two chunks' probabilities
// [32][kChunk] bf16, the running output [32][dv] f32, per query its running max and sum, the
// correction of a chunk that moved some row's max and the chunk's terms, and the packed queries.
struct TileScratch {
  float* scores;
  uint16_t* probabilities[2];
  float* out;
  __m512* row_max;  // [32] each
  __m512* row_sum;
  __m512* row_correction;
  __m512* row_terms;  // a chunk's terms (lane sums) per row, added to the sum once checked
  uint16_t* queries;  // [32][dp], packed by pack_q
};

// The keys [k0, k0 + kChunk) that a chunk runs over, rounded up to whole AMX steps.
inline int64_t chunk_keys(int64_t k0, int64_t key_end) {
  return round_up(key_end - k0 < kChunk ? key_end - k0 : kChunk, kKeyStep);
}

// 2^(t_j - max), t_j = scale s_j, for a row's `valid` keys of a chunk of scores s (in whole AMX
// steps, `chunk` keys): the bf16 roundings into p (zeros past valid), the f32 values' sum lane by
// lane returned. Inlined, so that whole chunks (valid and chunk kChunk) run without masks.
__attribute__((always_inline)) inline __m512 row_probabilities(const float* s, int64_t valid, int64_t chunk,
                                                               __m512 scale, __m512 max, uint16_t* p) {
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < chunk; j += 32) {
    const __mmask16 low = first_lanes(valid - j), high = first_lanes(valid - j - 16);
    const __m512 p_low = exp2_16(low, _mm512_fmsub_ps(_mm512_loadu_ps(s + j), scale, max));
    const __m512 p_high = exp2_16(high, _mm512_fmsub_ps(_mm512_loadu_ps(s + j + 16), scale, max));
    sum = _mm512_add_ps(sum, _mm512_add_ps(p_low, p_high));
    // vcvtne2ps2bf16 rounds to nearest even, as tensor::f32_to_bf16; the cast only retypes the bits.
    _mm512_storeu_si512(p + j, (__m512i)_mm512_cvtne2ps_pbh(p_high, p_low));
  }
  return sum;
}

// Online softmax of one chunk's scores (keys [k0, key_end) of it real), per query row in f32: the
// bf16 probabilities, and where a row's (integer) max moves, the new max and the power of two
// 2^(old - new) that rescales what was summed under the old one (into scratch.row_correction).
// Returns the rows whose max moved, a bit each.
uint32_t chunk_softmax(const TileScratch& scratch, int64_t q0, int64_t k0, int64_t key_end, bool causal, __m512 scale,
                       uint16_t* probabilities) {
  const int64_t valid_keys = key_end - k0 < kChunk ? key_end - k0 : kChunk;
  const int64_t chunk = round_up(valid_keys, kKeyStep);
  __m512* const row_max = scratch.row_max;  // locals: the compiler cannot tell that p's stores miss them
  __m512* const row_sum = scratch.row_sum;
  __m512* const correction = scratch.row_correction;
  const float* const scores = scratch.scores;
  const __m512 headroom = _mm512_set1_ps(std::exp2(kMaxHeadroom));
  uint32_t moved = 0;
  // Row r's chunk with its max raised to the ceiling of its scores' (valid of them): the
  // probabilities and the sum again, and the correction 2^(old - new) of what was summed before
  // (exact, and 0 at first: 2^-inf).
  const auto raise_max = [&](int64_t r, int64_t valid) {
    const float* s = scores + r * kChunk;
    __m512 max16 = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < chunk; j += 16) {
      max16 = _mm512_mask_max_ps(max16, first_lanes(valid - j), max16, _mm512_loadu_ps(s + j));
    }
    const __m512 max = _mm512_maskz_max_ps(kAll, row_max[r],
                                           _mm512_maskz_roundscale_ps(kAll, _mm512_mul_ps(broadcast_max(max16), scale),
                                                                      _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC));
    correction[r] = _mm512_maskz_scalef_ps(kAll, _mm512_set1_ps(1.0f), _mm512_sub_ps(row_max[r], max));
    row_max[r] = max;
    const __m512 terms = row_probabilities(s, valid, chunk, scale, max, probabilities + r * kChunk);
    row_sum[r] = _mm512_add_ps(_mm512_mul_ps(row_sum[r], correction[r]), terms);
    moved |= 1u << r;
  };
  // The common case: a whole chunk of keys that every row sees, after the first (every row has a
  // max). Tried against the rows' maxes with no branch per row: one check of the largest lane sum
  // after all rows (the per-row checks and branches cost ~10% of the softmax). Past the headroom,
  // only the rows past it are redone, the others keep their terms: with peaked scores (large q.k,
  // whose max keeps rising for many chunks; attention_bench's peaked case) 66 -> 59-64 ms CPU.
  if (k0 > 0 && valid_keys == kChunk && (!causal || q0 >= k0 + kChunk - 1)) {
    __m512 largest = _mm512_setzero_ps();
    for (int64_t r = 0; r < kQueries; ++r) {
      const __m512 terms =
          row_probabilities(scores + r * kChunk, kChunk, kChunk, scale, row_max[r], probabilities + r * kChunk);
      largest = _mm512_maskz_max_ps(kAll, largest, terms);
      scratch.row_terms[r] = terms;
    }
    const bool past_headroom = _mm512_cmp_ps_mask(largest, headroom, _CMP_GT_OQ) != 0;
    for (int64_t r = 0; r < kQueries; ++r) {
      if (past_headroom && _mm512_cmp_ps_mask(scratch.row_terms[r], headroom, _CMP_GT_OQ) != 0) {
        raise_max(r, kChunk);
      } else {
        row_sum[r] = _mm512_add_ps(row_sum[r], scratch.row_terms[r]);
      }
    }
    return moved;
  }
  for (int64_t r = 0; r < kQueries; ++r) {
    const int64_t query = q0 + r;
    const int64_t valid = causal ? (query + 1 - k0 < valid_keys ? query + 1 - k0 : valid_keys) : valid_keys;
    const float* s = scores + r * kChunk;
    uint16_t* p = probabilities + r * kChunk;
    if (valid <= 0) {  // a causal row that sees none of this chunk's keys
      for (int64_t j = 0; j < chunk; ++j) p[j] = 0;
      continue;
    }
    // Once a row has a max, a chunk is first tried against it as it is: p_j = 2^(t_j - max) may
    // then exceed 1, by up to 2^kMaxHeadroom, which changes no rounded p_j (powers of two scale
    // bf16 exactly; up to the f32 rounding of t - m) and saves the max pass, the lanes' reduction
    // and the rescaling: 22% of the kernel at SD's first level. A lane whose terms add up past
    // 2^kMaxHeadroom (as any single term past it does) has the chunk redone with a new max;
    // checking the sum rather than a max of t saves an instruction per 16 scores.
    if (_mm512_cmp_ps_mask(row_max[r], _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ) != 0) {
      const __m512 terms = valid == kChunk ? row_probabilities(s, kChunk, kChunk, scale, row_max[r], p)
                                           : row_probabilities(s, valid, chunk, scale, row_max[r], p);
      if (_mm512_cmp_ps_mask(terms, headroom, _CMP_GT_OQ) == 0) {
        row_sum[r] = _mm512_add_ps(row_sum[r], terms);
        continue;
      }
    }
    raise_max(r, valid);
  }
  return moved;
}

// One (batch, head, query tile): queries [q0, q0 + 32) of the packed q (rows past Lq are zeros and
// not written) against keys [0, key_end). Writes y's rows from element `at` (interleaved heads,
// `channels` apart).
//
// Software-pipelined by one chunk: iteration i runs q k^T of chunk i, out += P v of chunk i - 1
// (accumulated in place: out is loaded into the accumulator tiles), and the softmax of chunk i, in
// that order. Only after a chunk that moved some rows' max (at the first chunk, and rarely after:
// the max may lag) are those rows of out rescaled on AVX-512 before the next P v. AMX tile loads
// cannot take data from pending vector stores (nor vector loads from tile stores): each waits until
// the stores reach the cache. In this order every buffer but the rare rescale's is read one step of
// other work after it was written, not right away.
//
// The AMX unit and AVX-512 do not overlap here: at SD's first level the tile products alone take
// ~55% of the kernel's time and the softmax alone ~45%, and together they take the sum. They can
// overlap: a microbenchmark of 4 tile products (with their loads and stores) between ~130 vector
// instructions ran both in the time of the longer. But spreading this kernel's products over the
// softmax's rows measured slower: P v of chunk i - 1 among the rows of chunk i, 93 -> 112-117 ms
// CPU (attention_bench, 2 threads); q k^T of chunk i + 1 too, into a second scores buffer,
// 120-127 ms (the per-thread buffers then outgrow the 48 KB L1).
void amx_tile(const uint16_t* k, const uint16_t* v, int64_t d, int64_t dp, int64_t dv, int64_t lq, int64_t q0,
              int64_t key_end, bool causal, float log2e_alpha, Tensor& y, int64_t at, int64_t channels,
              const TileScratch& scratch) {
  // Per query, in log2 units: the running max (an integer, in every lane), and the running sum of
  // 2^(t - max) lane by lane, added up at the end. All vector: a scalar reduction per row and chunk
  // cost as much as the chunk's exps.
  for (int64_t r = 0; r < kQueries; ++r) {
    scratch.row_max[r] = _mm512_set1_ps(-INFINITY);
    scratch.row_sum[r] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < kQueries * dv; ++i) scratch.out[i] = 0.0f;
  uint32_t moved = 0;  // rows whose max the latest softmax moved: their out rows are rescaled before P v
  const Operand q0_tile{scratch.queries, dp * 2, 64}, q1_tile{scratch.queries + 16 * dp, dp * 2, 64};
  const __m512 scale = _mm512_set1_ps(log2e_alpha);
  const int64_t chunks = (key_end + kChunk - 1) / kChunk;
  for (int64_t i = 0; i <= chunks; ++i) {
    const int64_t k0 = i * kChunk;
    if (i < chunks) {
      // Scores of 32 queries x 32 keys per product, over D in steps of 32 channels.
      const int64_t chunk = chunk_keys(k0, key_end);
      for (int64_t j = 0; j < chunk; j += kKeyStep) {
        const uint16_t* keys = k + (k0 + j) * dp;  // 16 keys' tile: 16 * dp bf16
        tile_product(dp / 32, q0_tile, q1_tile, Operand{keys, 64, 16 * 64}, Operand{keys + 16 * dp, 64, 16 * 64},
                     scratch.scores + j, kChunk * 4, false);
      }
    }
    const int64_t previous = i - 1;  // the chunk whose P v runs now
    if (previous >= 0) {
      for (uint32_t rows = moved; rows != 0; rows &= rows - 1) {  // only those (at D = 512, out is 64 KB)
        const int r = __builtin_ctz(rows);
        float* o = scratch.out + r * dv;
        for (int64_t c = 0; c < dv; c += 16) {
          _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), scratch.row_correction[r]));
        }
      }
      // 32 queries x 32 channels per product, over the chunk in steps of 32 keys.
      const int64_t p_k0 = previous * kChunk;
      const uint16_t* values = v + p_k0 * dv;  // key pairs from p_k0: dv * 2 bf16 each
      const uint16_t* probabilities = scratch.probabilities[previous % 2];
      const Operand p0{probabilities, kChunk * 2, 64}, p1{probabilities + 16 * kChunk, kChunk * 2, 64};
      for (int64_t c = 0; c < dv; c += 32) {
        const Operand v0{values + c * 2, dv * 4, 16 * dv * 4};
        const Operand v1{c + 16 < dv ? values + (c + 16) * 2 : nullptr, dv * 4, 16 * dv * 4};
        tile_product(chunk_keys(p_k0, key_end) / kKeyStep, p0, p1, v0, v1, scratch.out + c, dv * 4, true);
      }
    }
    if (i < chunks) moved = chunk_softmax(scratch, q0, k0, key_end, causal, scale, scratch.probabilities[i % 2]);
  }
  // y = out / sum for the tile's real queries and channels.
  for (int64_t r = 0; r < kQueries && q0 + r < lq; ++r) {
    const __m512 inverse = _mm512_div_ps(_mm512_set1_ps(1.0f), broadcast_sum(scratch.row_sum[r]));
    float* o = scratch.out + r * dv;  // normalised in place, then written in y's dtype
    for (int64_t c = 0; c < dv; c += 16) _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), inverse));
    write_row(o, y, at + r * channels, d);
  }
}

}  // namespace

bool flash_attention_amx(OneDnn& onednn, const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal,
                         Tensor& y) {
  assert(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && y.is_contiguous());
  assert(q.dtype() == k.dtype() && q.dtype() == v.dtype());
  const int64_t batch = q.dim(0), lq = q.dim(1), channels = q.dim(2), lk = k.dim(1);
  assert(channels % heads == 0 && k.dim(2) == channels && v.dim(1) == lk && y.dim(1) == lq);
  const int64_t d = channels / heads;
  if (d > 512 || !amx_permitted()) return false;
  const int64_t dp = round_up(d, 32), dv = round_up(d, 16);
  const int64_t lk_pad = round_up(lk, kChunk);
  const int64_t bh_count = batch * heads;
  uint16_t* k_packed = onednn.scratch.get(Bf16Scratch::Slot::kOperand, bh_count * lk_pad * dp);
  uint16_t* v_packed = onednn.scratch.get(Bf16Scratch::Slot::kValues, bh_count * lk_pad * dv);
  const float log2e_alpha = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(d)));
  const int64_t tiles = (lq + kQueries - 1) / kQueries;
  const Bf16Source q_rows(q), k_rows(k), v_rows(v);
  const int64_t q_size = dtype_size(q.dtype()), y_size = dtype_size(y.dtype());
  // Below ~64K multiply-adds a parallel region costs more than the attention (tiny models').
#pragma omp parallel if (bh_count * lq * lk * d > 65536)
  {
    const DenormalsFlushed flushed;
    std::vector<uint16_t> key_rows(static_cast<size_t>(16 * channels));
    pack_k(k_rows, batch, lk, heads, d, lk_pad, dp, key_rows.data(), k_packed);
    pack_v(v_rows, batch, lk, heads, d, lk_pad, dv, key_rows.data(), v_packed);  // ends with the barrier
    struct alignas(64) Line {
      float lanes[16];
    };
    const int64_t probabilities = kQueries * kChunk / 2;  // floats' worth of one chunk's bf16
    std::vector<Line> buffer(
        static_cast<size_t>((kQueries * kChunk + 2 * probabilities + kQueries * dv + kQueries * dp / 2) / 16));
    std::vector<Line> rows(4 * kQueries);
    float* scores = buffer.data()->lanes;
    float* out = scores + kQueries * kChunk + 2 * probabilities;
    __m512* row_vectors = reinterpret_cast<__m512*>(rows.data());
    const TileScratch scratch{scores,
                              {reinterpret_cast<uint16_t*>(scores + kQueries * kChunk),
                               reinterpret_cast<uint16_t*>(scores + kQueries * kChunk + probabilities)},
                              out,
                              row_vectors,
                              row_vectors + kQueries,
                              row_vectors + 2 * kQueries,
                              row_vectors + 3 * kQueries,
                              reinterpret_cast<uint16_t*>(out + kQueries * dv)};
    const TileConfig config;
    _tile_loadconfig(&config);
#pragma omp for collapse(2) schedule(static)
    for (int64_t bh = 0; bh < bh_count; ++bh) {
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t q0 = t * kQueries;
        const int64_t key_end = causal && q0 + kQueries < lk ? q0 + kQueries : lk;
        const int64_t at = ((bh / heads) * lq + q0) * channels + (bh % heads) * d;
        if (q0 + 2 * kQueries <= lq) {  // the next tile's rows, while this one runs
          const int64_t next = at + kQueries * channels;
          prefetch_rows(q.raw_data(), q_size, next, kQueries, channels, d, false);
          prefetch_rows(y.raw_data(), y_size, next, kQueries, channels, d, true);
        }
        pack_q(q_rows, at, lq - q0 < kQueries ? lq - q0 : kQueries, channels, d, dp, scratch.queries);
        amx_tile(k_packed + bh * lk_pad * dp, v_packed + bh * lk_pad * dv, d, dp, dv, lq, q0, key_end, causal,
                 log2e_alpha, y, at, channels, scratch);
      }
    }
    _tile_release();
  }
  return true;
}

#else

bool flash_attention_amx(OneDnn&, const Tensor&, const Tensor&, const Tensor&, int64_t, bool, Tensor&) { return false; }

#endif

}  // namespace sdstack::backend::cpu
