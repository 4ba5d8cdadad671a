// Times the CPU backend's attention kernels at SD 1.5's first UNet level: self-attention
// [2, 4096, 320] and cross-attention to 77 text tokens, 8 heads of 40: in f32 the fused (flash)
// kernel against the oneDNN matmul path, and in bf16 the fused AMX kernel, the AVX-512 flash kernel
// in bf16 (CPUs without AMX) and the matmul path.
// Also the second level's self-attention [2, 1024, 640], 8 heads of 80, and the VAE's mid-block
// attention [1, 4096, 512], one head of 512, also with peaked scores (q and k ten times larger).
// Usage: attention_bench [threads] [runs] [kernel]; prints the median CPU time of `runs` of each,
// alternated (use one thread where other work shares the machine); with `kernel` (say "bf16 AMX
// flash") only the kernels whose names start so run, against the f32 matmuls for their error.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/cpu_internal.h"

using namespace sdstack;
using namespace sdstack::backend;

namespace {

// Uniform in [-amplitude, amplitude).
Tensor random_tensor(const Shape& shape, uint32_t seed, float amplitude = 1.0f) {
  Tensor t = Tensor::empty(shape);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    seed = seed * 1664525u + 1013904223u;
    p[i] = (static_cast<float>(seed >> 8) / 16777216.0f * 2.0f - 1.0f) * amplitude;
  }
  return t;
}

// The process's CPU time of run(), in ms: with one thread on a machine shared with other work, what
// the kernel computes, not the time slices others took.
template <typename Run>
double time_ms(Run run) {
  timespec start{}, end{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &start);
  run();
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &end);
  return static_cast<double>(end.tv_sec - start.tv_sec) * 1e3 + static_cast<double>(end.tv_nsec - start.tv_nsec) * 1e-6;
}

double median(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
#if defined(__AVX512F__)
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const int runs = argc > 2 ? std::atoi(argv[2]) : 7;
  const std::string only = argc > 3 ? argv[3] : "";
  set_num_threads(threads);
  cpu::MatmulCache cache(std::make_shared<cpu::OneDnn>());
  cpu::MatmulCache bf16_cache(std::make_shared<cpu::OneDnn>());
  bf16_cache.onednn().compute_dtype = DType::kBF16;
  std::vector<float> scores, packed;
  struct Case {
    const char* name;
    int64_t lq, lk, channels, heads;
    float amplitude = 1.0f;  // of q and k: 10 makes the scores peaked, their max rising over many chunks
  };
  for (const Case& c : {Case{"self  [2,4096,320] x [2,4096,320] H=8 D=40", 4096, 4096, 320, 8},
                        Case{"cross [2,4096,320] x [2,77,320]   H=8 D=40", 4096, 77, 320, 8},
                        Case{"self  [2,1024,640] x [2,1024,640] H=8 D=80", 1024, 1024, 640, 8},
                        Case{"VAE   [1,4096,512] x [1,4096,512] H=1 D=512", 4096, 4096, 512, 1},
                        Case{"VAE, peaked scores (q, k in [-10, 10))", 4096, 4096, 512, 1, 10.0f}}) {
    const int64_t batch = c.heads == 1 ? 1 : 2, heads = c.heads;
    const Tensor q = random_tensor({batch, c.lq, c.channels}, 1, c.amplitude),
                 k = random_tensor({batch, c.lk, c.channels}, 2, c.amplitude),
                 v = random_tensor({batch, c.lk, c.channels}, 3);
    const double gflop = 4.0 * batch * c.lq * c.lk * c.channels / 1e9;
    // As a bf16 model hands them over (the UNet's q, k, v and attention output are bf16).
    const Tensor q16 = q.to(DType::kBF16), k16 = k.to(DType::kBF16), v16 = v.to(DType::kBF16);
    struct Kernel {
      const char* name;
      std::function<void(Tensor&)> run;
      Tensor y;
      std::vector<double> ms;
      DType y_dtype = DType::kF32;
    };
    Kernel kernels[] = {
        {"f32 matmuls", [&](Tensor& y) { cpu::attention_matmuls(cache, q, k, v, heads, false, scores, y); }, {}, {}},
        {"f32 flash",
         [&](Tensor& y) { cpu::flash_attention(q, k, v, heads, false, cpu::FlashKernel::kF32, packed, y); },
         {},
         {}},
        {"bf16 matmuls",
         [&](Tensor& y) { cpu::attention_matmuls(bf16_cache, q, k, v, heads, false, scores, y); },
         {},
         {}},
        {"bf16 AVX-512 flash, widened",
         [&](Tensor& y) { cpu::flash_attention(q, k, v, heads, false, cpu::FlashKernel::kBf16Widened, packed, y); },
         {},
         {}},
#if defined(__AVX512BF16__)
        {"bf16 AVX-512 flash, pairs",
         [&](Tensor& y) { cpu::flash_attention(q, k, v, heads, false, cpu::FlashKernel::kBf16Pairs, packed, y); },
         {},
         {}},
#endif
        {"bf16 AMX flash",
         [&](Tensor& y) {
           if (!cpu::flash_attention_amx(bf16_cache.onednn(), q, k, v, heads, false, y)) {
             std::fprintf(stderr, "attention_bench: no AMX here\n");
             std::exit(1);
           }
         },
         {},
         {}},
        {"bf16 AMX flash, bf16 q/k/v/y",
         [&](Tensor& y) { cpu::flash_attention_amx(bf16_cache.onednn(), q16, k16, v16, heads, false, y); },
         {},
         {},
         DType::kBF16},
    };
    auto skipped = [&](const Kernel& kernel) {  // `only` as a prefix: "bf16 AMX flash" runs both of its kind
      return !only.empty() && std::string(kernel.name).rfind(only, 0) != 0 && &kernel != &kernels[0];
    };
    for (Kernel& kernel : kernels) {
      if (skipped(kernel)) continue;
      kernel.y = Tensor::empty(q.shape(), kernel.y_dtype);
      kernel.run(kernel.y);  // warm-up: primitives, scratch
    }
    // Alternating, so that load from other processes hits all alike.
    for (int i = 0; i < runs; ++i) {
      for (Kernel& kernel : kernels) {
        if (!skipped(kernel)) kernel.ms.push_back(time_ms([&] { kernel.run(kernel.y); }));
      }
    }
    std::printf("%s, %d threads:\n", c.name, threads);
    for (Kernel& kernel : kernels) {
      if (skipped(kernel)) continue;
      const Tensor y = kernel.y.to(DType::kF32);
      float diff = 0.0f;
      for (int64_t i = 0; i < q.numel(); ++i) {
        diff = std::max(diff, std::abs(y.data<float>()[i] - kernels[0].y.data<float>()[i]));
      }
      std::printf("  %-28s %8.1f ms CPU %8.1f GFLOP/s per core  (max |diff| to f32 matmuls %.2g)\n", kernel.name,
                  median(kernel.ms), gflop / (median(kernel.ms) / 1e3) / threads, diff);
    }
  }
  return 0;
#else
  (void)argc;
  (void)argv;
  std::fprintf(stderr, "attention_bench: the fused kernels need an AVX-512 build (SDSTACK_NATIVE on such a CPU)\n");
  return 1;
#endif
}
