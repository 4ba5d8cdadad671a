// Times the CPU backend's attention, fused (flash) against the oneDNN matmul path, in f32 at SD 1.5's
// first UNet level: self-attention [2, 4096, 320] and cross-attention to 77 text tokens, 8 heads.
// Usage: attention_bench [threads] [runs]; prints the median of `runs` of each, alternated.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "backend/cpu/cpu_internal.h"

using namespace sdstack;
using namespace sdstack::backend;

namespace {

Tensor random_tensor(const Shape& shape, uint32_t seed) {
  Tensor t = Tensor::empty(shape);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    seed = seed * 1664525u + 1013904223u;
    p[i] = static_cast<float>(seed >> 8) / 16777216.0f * 2.0f - 1.0f;
  }
  return t;
}

template <typename Run>
double time_ms(Run run) {
  const auto start = std::chrono::steady_clock::now();
  run();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
#if defined(__AVX512F__)
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int runs = argc > 2 ? std::atoi(argv[2]) : 7;
  set_num_threads(threads);
  cpu::MatmulCache cache(std::make_shared<cpu::OneDnn>());
  std::vector<float> scores, packed;
  struct Case {
    const char* name;
    int64_t lq, lk;
  };
  for (const Case& c :
       {Case{"self  [2,4096,320] x [2,4096,320]", 4096, 4096}, Case{"cross [2,4096,320] x [2,77,320]  ", 4096, 77}}) {
    const Tensor q = random_tensor({2, c.lq, 320}, 1), k = random_tensor({2, c.lk, 320}, 2),
                 v = random_tensor({2, c.lk, 320}, 3);
    Tensor y_old = Tensor::empty(q.shape()), y_new = Tensor::empty(q.shape());
    const auto run_old = [&] { cpu::attention_matmuls(cache, q, k, v, 8, false, scores, y_old); };
    const auto run_new = [&] { cpu::flash_attention(q, k, v, 8, false, packed, y_new); };
    run_old();  // warm-up: primitives, scratch
    run_new();
    // Alternating, so that load from other processes hits both alike.
    std::vector<double> old_ms, new_ms;
    for (int i = 0; i < runs; ++i) {
      old_ms.push_back(time_ms(run_old));
      new_ms.push_back(time_ms(run_new));
    }
    float diff = 0.0f;
    for (int64_t i = 0; i < q.numel(); ++i)
      diff = std::max(diff, std::abs(y_old.data<float>()[i] - y_new.data<float>()[i]));
    std::printf("%s H=8 D=40, %d threads: matmuls %.1f ms, flash %.1f ms, x%.2f (max |diff| %.2g)\n", c.name, threads,
                median(old_ms), median(new_ms), median(old_ms) / median(new_ms), diff);
  }
  return 0;
#else
  (void)argc;
  (void)argv;
  std::fprintf(stderr, "attention_bench: flash attention needs an AVX-512 build (SDSTACK_NATIVE on such a CPU)\n");
  return 1;
#endif
}
