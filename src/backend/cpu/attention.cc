// Multi-head attention on the CPU: per tile of queries, scores = q k^T / sqrt(D) and out = P v as
// oneDNN batched matmuls over (batch, head), with an own softmax (and causal mask) in between. Not
// fused (flash) yet. In f32 the matmuls read the interleaved [B, L, H*D] layout in place through
// strides. In bf16 q, k and v are rounded into head-major [B, H, L, D] copies first, and each
// tile's probabilities after the (f32) softmax; both matmuls accumulate in f32 and write f32.
#include <cassert>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/vec_math.h"

namespace sdstack::backend::cpu {
namespace {

using dnnl::memory;

// Score floats per query tile, all batches and heads together: 64 MB. SD at 512 px (B=2, H=8,
// Lk=4096) then runs 256 queries per tile instead of holding a 1 GB score matrix.
constexpr int64_t kScoreBudget = int64_t{16} << 20;

// x: [B, L, H*D] f32 -> y: [B, H, rows, D] bf16 holding tokens [first, first + rows). Dense
// head-major, because oneDNN runs bf16 matmuls natively (AMX, AVX512-BF16) on dense operands
// only: through the interleaved layout's strides it falls back to a gemm that runs q k^T (K = D
// = 40) at 1/6 of f32's speed.
void to_bf16_head_major(const float* x, int64_t batch, int64_t tokens, int64_t heads, int64_t d, int64_t first,
                        int64_t rows, uint16_t* y) {
  const int64_t channels = heads * d;
  // Below ~16K elements a parallel region costs more than the copy (the CLIP encoder's, tiny models').
#pragma omp parallel for collapse(2) schedule(static) if (batch * heads * rows * d > 16384)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t t = 0; t < rows; ++t) {
        to_bf16_row(x + (b * tokens + first + t) * channels + h * d, y + ((b * heads + h) * rows + t) * d, d);
      }
    }
  }
}

}  // namespace

// q: [B, Lq, H*D]; k, v: [B, Lk, H*D]; y: [B, Lq, H*D]. Head h of token t is at t*H*D + h*D.
void attention(MatmulCache& cache, const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal,
               std::vector<float>& scores, Tensor& y) {
  assert(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && y.is_contiguous());
  assert(q.dtype() == DType::kF32 && k.dtype() == DType::kF32 && v.dtype() == DType::kF32);
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
  // k and v as [B, H, Lk, D]: in place (interleaved), or head-major bf16 copies.
  const void* k_data = k.raw_data();
  const void* v_data = v.raw_data();
  memory::dims kv_strides = {lk * channels, d, channels, 1};
  uint16_t* q_tile = nullptr;
  uint16_t* probabilities = nullptr;
  if (bf16) {
    uint16_t* k16 = onednn.scratch.get(Bf16Scratch::Slot::kOperand, k.numel());
    uint16_t* v16 = onednn.scratch.get(Bf16Scratch::Slot::kValues, v.numel());
    to_bf16_head_major(k.data<float>(), batch, lk, heads, d, 0, lk, k16);
    to_bf16_head_major(v.data<float>(), batch, lk, heads, d, 0, lk, v16);
    k_data = k16;
    v_data = v16;
    kv_strides = {heads * lk * d, lk * d, d, 1};
    q_tile = onednn.scratch.get(Bf16Scratch::Slot::kSrc, batch * heads * tile * d);
    probabilities = onednn.scratch.get(Bf16Scratch::Slot::kProbabilities, batch * heads * tile * lk);
  }
  // k^T as [B, H, D, Lk] (k's strides with the last two swapped) and v as [B, H, Lk, D].
  const memory::desc k_t = plain_desc(compute, {batch, heads, d, lk}, {kv_strides[0], kv_strides[1], 1, kv_strides[2]});
  const memory::desc v_desc = plain_desc(compute, {batch, heads, lk, d}, kv_strides);

  for (int64_t q0 = 0; q0 < lq; q0 += tile) {
    const int64_t rows = q0 + tile < lq ? tile : lq - q0;
    // Queries [q0, q0 + rows) as [B, H, rows, D]: in place, or a dense bf16 copy of the tile.
    memory::desc q_desc = plain_desc(compute, {batch, heads, rows, d}, {lq * channels, d, channels, 1});
    const void* q_data = q.data<float>() + q0 * channels;
    if (bf16) {
      to_bf16_head_major(q.data<float>(), batch, lq, heads, d, q0, rows, q_tile);
      q_desc = plain_desc(compute, {batch, heads, rows, d}, memory::format_tag::abcd);
      q_data = q_tile;
    }
    // Scores (and probabilities) [B, H, rows, Lk] contiguous.
    const memory::dims s_dims = {batch, heads, rows, lk};
    const memory::desc s_desc = plain_desc(DType::kF32, s_dims, memory::format_tag::abcd);
    cache.run(q_desc, q_data, k_t, k_data, s_desc, scores.data(), alpha);

    const int64_t score_rows = batch * heads * rows;
#pragma omp parallel
    {
      // In bf16 the f32 probabilities go to a row in cache and only their bf16 copy to memory:
      // writing them back over the scores would cost another pass over the tile's 64 MB.
      std::vector<float> row_buffer(static_cast<size_t>(bf16 ? lk : 0));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < score_rows; ++r) {
        const float* row = scores.data() + r * lk;
        float* out = bf16 ? row_buffer.data() : scores.data() + r * lk;
        if (!causal) {
          softmax_row(row, out, lk);
        } else {
          const int64_t query = q0 + r % rows;  // keys j > query are masked to probability 0
          const int64_t valid = query + 1 < lk ? query + 1 : lk;
          softmax_row(row, out, valid);
          for (int64_t j = valid; j < lk; ++j) out[j] = 0.0f;
        }
        if (bf16) to_bf16_row(out, probabilities + r * lk, lk);
      }
    }

    // out[B, H, rows, D] written straight into y's interleaved channels.
    const memory::desc p_desc = plain_desc(compute, s_dims, memory::format_tag::abcd);
    const void* p_data = bf16 ? static_cast<const void*>(probabilities) : static_cast<const void*>(scores.data());
    const memory::desc o_desc = plain_desc(DType::kF32, {batch, heads, rows, d}, {lq * channels, d, channels, 1});
    cache.run(p_desc, p_data, v_desc, v_data, o_desc, y.data<float>() + q0 * channels, 1.0f);
  }
}

}  // namespace sdstack::backend::cpu
