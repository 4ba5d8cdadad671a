// Elementwise CPU kernels: activations, GEGLU, add/mul with broadcast, scale, nearest upsampling,
// concatenation. Plain loops over contiguous f32, parallel over rows, vectorised by the compiler
// (GEGLU by hand on AVX-512).
#include <cassert>
#include <cstring>
#include <vector>

#include "backend/cpu/avx512_math.h"
#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/vec_math.h"

namespace sdstack::backend::cpu {
namespace {

// Chunks of this many floats per parallel iteration: big enough to amortise scheduling, small
// enough to balance two to dozens of threads on SD's tensors (1e5 to 1e7 elements).
constexpr int64_t kChunk = 16384;

void check_f32_contiguous(const Tensor& t) {
  assert(t.dtype() == DType::kF32 && t.is_contiguous());
  (void)t;
}

}  // namespace

void parallel_copy(const void* x, void* y, int64_t bytes) {
  if (x == y) return;
  constexpr int64_t kChunkBytes = kChunk * sizeof(float);
  const int64_t chunks = (bytes + kChunkBytes - 1) / kChunkBytes;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunkBytes;
    const int64_t n = begin + kChunkBytes < bytes ? kChunkBytes : bytes - begin;
    std::memcpy(static_cast<char*>(y) + begin, static_cast<const char*>(x) + begin, static_cast<size_t>(n));
  }
}

void activation(const Tensor& x, Activation act, Tensor& y) {
  check_f32_contiguous(x);
  check_f32_contiguous(y);
  assert(x.numel() == y.numel());
  const float* in = x.data<float>();
  float* out = y.data<float>();
  const int64_t count = x.numel();
  const int64_t chunks = (count + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk;
    const int64_t end = begin + kChunk < count ? begin + kChunk : count;
    // One loop per activation so that each is a straight vectorisable loop.
    switch (act) {
      case Activation::kNone:
        if (in != out) std::memcpy(out + begin, in + begin, static_cast<size_t>(end - begin) * sizeof(float));
        break;
      case Activation::kSiLU:
        for (int64_t i = begin; i < end; ++i) out[i] = silu(in[i]);
        break;
      case Activation::kGELU:
        for (int64_t i = begin; i < end; ++i) out[i] = gelu(in[i]);
        break;
      case Activation::kQuickGELU:
        for (int64_t i = begin; i < end; ++i) out[i] = quick_gelu(in[i]);
        break;
    }
  }
}

// x: [rows, 2F] -> y: [rows, F] = x[:, :F] * gelu(x[:, F:]); x f32, or bf16 (widened exactly, so
// that a bf16 x gives what its f32 values give). On AVX-512 by gelu_16 (erf's division as vrcp14ps)
// and to_bf16_16 (vcvtneps2bf16): at [128, 2560], one thread, 29% faster into bf16 and 22% into f32
// than the compiler's vectorisation of vec_math.h's gelu, whose vdivps and integer rounding bounded
// the loop; now it runs at about L3's bandwidth.
namespace {

template <typename T>
void geglu_rows(const T* in, int64_t rows, int64_t features, Tensor& y) {
  const bool bf16_out = y.dtype() == DType::kBF16;
  uint16_t* const y_bf16 = bf16_out ? y.data<uint16_t>() : nullptr;
  float* const y_f32 = bf16_out ? nullptr : y.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* h = in + r * 2 * features;
    const T* gate = h + features;
    uint16_t* o16 = bf16_out ? y_bf16 + r * features : nullptr;
    float* o32 = bf16_out ? nullptr : y_f32 + r * features;
#if defined(__AVX512F__)
    for (int64_t f = 0; f < features; f += 16) {
      const __mmask16 lanes = first_lanes(features - f);
      const __m512 out = _mm512_mul_ps(load_16(lanes, h + f), gelu_16(load_16(lanes, gate + f)));
      if (bf16_out) {
        _mm256_mask_storeu_epi16(o16 + f, lanes, to_bf16_16(out));
      } else {
        _mm512_mask_storeu_ps(o32 + f, lanes, out);
      }
    }
#else
    if (bf16_out) {  // rounded in the same loop, as the norms do
#pragma omp simd
      for (int64_t f = 0; f < features; ++f) o16[f] = tensor::f32_to_bf16(widen(h[f]) * gelu(widen(gate[f])));
    } else {
#pragma omp simd
      for (int64_t f = 0; f < features; ++f) o32[f] = widen(h[f]) * gelu(widen(gate[f]));
    }
#endif
  }
}

}  // namespace

void geglu(const Tensor& x, Tensor& y) {
  assert(x.is_contiguous() && (x.dtype() == DType::kF32 || x.dtype() == DType::kBF16));
  assert(y.is_contiguous() && (y.dtype() == DType::kF32 || y.dtype() == DType::kBF16));
  const int64_t features = y.dim(-1);
  assert(x.dim(-1) == 2 * features);
  const int64_t rows = y.numel() / features;
  if (x.dtype() == DType::kBF16) {
    geglu_rows(x.data<uint16_t>(), rows, features, y);
  } else {
    geglu_rows(x.data<float>(), rows, features, y);
  }
}

// b is a's shape, or a's trailing dims: then a is [outer, inner] and b is [inner].
void add(const Tensor& a, const Tensor& b, Tensor& y) {
  check_f32_contiguous(a);
  check_f32_contiguous(b);
  check_f32_contiguous(y);
  const int64_t inner = b.numel();
  const int64_t outer = a.numel() / inner;
  assert(outer * inner == a.numel() && y.numel() == a.numel());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.data<float>();
  if (outer == 1) {  // same shape: chunk the flat range
    const int64_t chunks = (inner + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t end = (c + 1) * kChunk < inner ? (c + 1) * kChunk : inner;
      for (int64_t i = c * kChunk; i < end; ++i) py[i] = pa[i] + pb[i];
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < outer; ++o) {
    const float* ra = pa + o * inner;
    float* ry = py + o * inner;
    for (int64_t i = 0; i < inner; ++i) ry[i] = ra[i] + pb[i];
  }
}

void mul(const Tensor& a, const Tensor& b, Tensor& y) {
  check_f32_contiguous(a);
  check_f32_contiguous(b);
  check_f32_contiguous(y);
  const int64_t inner = b.numel();
  const int64_t outer = a.numel() / inner;
  assert(outer * inner == a.numel() && y.numel() == a.numel());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.data<float>();
  if (outer == 1) {
    const int64_t chunks = (inner + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t end = (c + 1) * kChunk < inner ? (c + 1) * kChunk : inner;
      for (int64_t i = c * kChunk; i < end; ++i) py[i] = pa[i] * pb[i];
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < outer; ++o) {
    const float* ra = pa + o * inner;
    float* ry = py + o * inner;
    for (int64_t i = 0; i < inner; ++i) ry[i] = ra[i] * pb[i];
  }
}

void scale(const Tensor& x, float factor, Tensor& y) {
  check_f32_contiguous(x);
  check_f32_contiguous(y);
  assert(x.numel() == y.numel());
  const float* in = x.data<float>();
  float* out = y.data<float>();
  const int64_t count = x.numel();
  const int64_t chunks = (count + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = (c + 1) * kChunk < count ? (c + 1) * kChunk : count;
    for (int64_t i = c * kChunk; i < end; ++i) out[i] = in[i] * factor;
  }
}

// x: [N, H, W, C] -> y: [N, 2H, 2W, C]; each input pixel's C values land in four output pixels.
// x and y of one dtype (copied); or x f32 and y bf16: each input row rounded once into a
// per-thread row, then copied.
void upsample_nearest2x(const Tensor& x, Tensor& y) {
  assert(x.is_contiguous() && y.is_contiguous() && (y.dtype() == DType::kF32 || y.dtype() == DType::kBF16));
  assert(x.dtype() == y.dtype() || x.dtype() == DType::kF32);
  const int64_t n = x.dim(0), h = x.dim(1), w = x.dim(2), c = x.dim(3);
  assert(y.dim(0) == n && y.dim(1) == 2 * h && y.dim(2) == 2 * w && y.dim(3) == c);
  const bool rounds = y.dtype() != x.dtype();
  const size_t element = tensor::dtype_size(y.dtype()), x_element = tensor::dtype_size(x.dtype());
  const size_t pixel_bytes = static_cast<size_t>(c) * element;
  const char* in = static_cast<const char*>(x.raw_data());
  char* out = static_cast<char*>(y.raw_data());
#pragma omp parallel
  {
    std::vector<uint16_t> rounded(static_cast<size_t>(rounds ? w * c : 0));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < n * h; ++row) {  // row = image * h + input row
      const char* src = in + static_cast<size_t>(row * w * c) * x_element;
      if (rounds) {
        to_bf16_row(reinterpret_cast<const float*>(src), rounded.data(), w * c);
        src = reinterpret_cast<const char*>(rounded.data());
      }
      char* dst0 = out + static_cast<size_t>(row * 2 * (2 * w * c)) * element;  // output rows 2i and 2i+1
      char* dst1 = dst0 + static_cast<size_t>(2 * w * c) * element;
      for (int64_t j = 0; j < w; ++j) {
        std::memcpy(dst0 + (2 * j) * pixel_bytes, src + j * pixel_bytes, pixel_bytes);
        std::memcpy(dst0 + (2 * j + 1) * pixel_bytes, src + j * pixel_bytes, pixel_bytes);
      }
      std::memcpy(dst1, dst0, 2 * static_cast<size_t>(w) * pixel_bytes);
    }
  }
}

// a: [rows, Ca], b: [rows, Cb] -> y: [rows, Ca + Cb].
void concat_last(const Tensor& a, const Tensor& b, Tensor& y) {
  check_f32_contiguous(a);
  check_f32_contiguous(b);
  check_f32_contiguous(y);
  const int64_t ca = a.dim(-1), cb = b.dim(-1);
  assert(y.dim(-1) == ca + cb);
  const int64_t rows = a.numel() / ca;
  assert(b.numel() / cb == rows && y.numel() == rows * (ca + cb));
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(py + r * (ca + cb), pa + r * ca, static_cast<size_t>(ca) * sizeof(float));
    std::memcpy(py + r * (ca + cb) + ca, pb + r * cb, static_cast<size_t>(cb) * sizeof(float));
  }
}

}  // namespace sdstack::backend::cpu
