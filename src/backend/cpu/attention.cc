// Multi-head attention on the CPU: per tile of queries, scores = q k^T / sqrt(D) and out = P v as
// oneDNN batched matmuls over (batch, head) that read the interleaved [B, L, H*D] layout in place
// through strides, with an own softmax (and causal mask) in between. Not fused (flash) yet.
#include <cassert>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/vec_math.h"

namespace sdstack::backend::cpu {
namespace {

// Score floats per query tile, all batches and heads together: 64 MB. SD at 512 px (B=2, H=8,
// Lk=4096) then runs 256 queries per tile instead of holding a 1 GB score matrix.
constexpr int64_t kScoreBudget = int64_t{16} << 20;

}  // namespace

// q: [B, Lq, H*D]; k, v: [B, Lk, H*D]; y: [B, Lq, H*D]. Head h of token t is at t*H*D + h*D.
void attention(MatmulCache& cache, const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal,
               std::vector<float>& scores, Tensor& y) {
  assert(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && y.is_contiguous());
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

  // k^T as [B, H, D, Lk] and v as [B, H, Lk, D], both read in place.
  const dnnl::memory::desc k_t = f32_desc({batch, heads, d, lk}, {lk * channels, d, 1, channels});
  const dnnl::memory::desc v_desc = f32_desc({batch, heads, lk, d}, {lk * channels, d, channels, 1});
  for (int64_t q0 = 0; q0 < lq; q0 += tile) {
    const int64_t rows = q0 + tile < lq ? tile : lq - q0;
    // Queries [q0, q0 + rows) as [B, H, rows, D]; scores [B, H, rows, Lk] contiguous.
    const dnnl::memory::desc q_desc = f32_desc({batch, heads, rows, d}, {lq * channels, d, channels, 1});
    const dnnl::memory::desc s_desc =
        f32_desc({batch, heads, rows, lk}, {heads * rows * lk, rows * lk, lk, 1});
    cache.run(q_desc, q.data<float>() + q0 * channels, k_t, k.data<float>(), s_desc, scores.data(), alpha);

    const int64_t score_rows = batch * heads * rows;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < score_rows; ++r) {
      float* row = scores.data() + r * lk;
      if (!causal) {
        softmax_row(row, row, lk);
        continue;
      }
      const int64_t query = q0 + r % rows;  // keys j > query are masked to probability 0
      const int64_t valid = query + 1 < lk ? query + 1 : lk;
      softmax_row(row, row, valid);
      for (int64_t j = valid; j < lk; ++j) row[j] = 0.0f;
    }

    // out[B, H, rows, D] written straight into y's interleaved channels.
    const dnnl::memory::desc o_desc = f32_desc({batch, heads, rows, d}, {lq * channels, d, channels, 1});
    cache.run(s_desc, scores.data(), v_desc, v.data<float>(), o_desc, y.data<float>() + q0 * channels, 1.0f);
  }
}

}  // namespace sdstack::backend::cpu
