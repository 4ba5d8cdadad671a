// `sdstack bench`: how fast this machine runs each Stable Diffusion component, against its own peak.
//
// FLOPs are counted, not estimated: each component is built from its config on a counting backend
// (shapes-only random weights, so no weight memory) and run once on inputs of the benchmark's size.
// The counting backend computes nothing; it adds 2 x multiply-adds of every op that does them as
// the model calls it:
//   - Conv2d:    2 * N * Ho * Wo * Cout * Cin * k * k
//   - Linear:    2 * rows * in * out
//   - matmul:    2 * B * M * N * K
//   - attention: 2 * 2 * B * heads * Lq * Lk * D   (q k^T and p v; a causal mask is counted as full,
//                which is what the kernels execute)
// Biases, residuals, norms, softmax and elementwise ops are not counted (they are memory-bound and a
// fraction of a percent of the total). SD 1.5's UNet at 512x512, batch 2: 1606 GFLOP by this count.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "models/clip_text_model.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipeline/stable_diffusion.h"
#include "tensor/dtype.h"

namespace sdstack::pipeline {

// FLOPs of one forward pass, counted as described above. Errors: configs the model code refuses,
// sizes the model cannot run (a latent size the UNet's downsamplers cannot halve, for example).
// The text encoder on `batch` sequences of `length` tokens.
base::Result<double> clip_text_flops(const models::CLIPTextConfig& config, int64_t batch, int64_t length);
// The UNet on latents [batch, latent_height, latent_width, in_channels] with text embeddings of
// `text_length` tokens.
base::Result<double> unet_flops(const models::UNet2DConditionConfig& config, int64_t batch, int64_t latent_height,
                                int64_t latent_width, int64_t text_length);
// The VAE's decoder (what txt2img runs) on latents [batch, latent_height, latent_width, latent_channels].
base::Result<double> vae_decode_flops(const models::AutoencoderKLConfig& config, int64_t batch, int64_t latent_height,
                                      int64_t latent_width);

// The benchmark's components, in the order they run.
inline const std::vector<std::string>& bench_component_names() {
  static const std::vector<std::string> names = {"clip", "unet", "vae"};
  return names;
}

struct BenchOptions {
  std::string model_dir;  // a diffusers folder, or empty for random weights of `preset`
  std::string preset;     // "tiny" or "sd15" (models::model_preset_names()), when model_dir is empty
  tensor::DType compute_dtype = tensor::DType::kF32;  // kF32 or kBF16
  int64_t width = 0;                                  // image size; 0: the model's default
  int64_t height = 0;
  int repeat = 3;   // timed runs per component, after one warm-up run
  int threads = 0;  // 0: all cores
  std::vector<std::string> components = bench_component_names();
  // > 0: after the components, one whole txt2img run of this many steps through
  // StableDiffusionPipeline as `sdstack generate` does it (models loaded per stage), compared with
  // what the components' medians predict. Needs model_dir and all three components.
  int generate_steps = 0;
};

struct ComponentBench {
  std::string name;             // "clip", "unet" or "vae"
  std::string workload;         // what one run is: "1 x 77 tokens", "batch 2, 64x64 latents", ...
  std::vector<double> seconds;  // each timed run
  double median_s = 0;
  double gflop = 0;        // counted, per run
  double gflops = 0;       // gflop / median_s
  double pct_of_peak = 0;  // of the measured peak for the compute dtype
};

// The best GFLOP/s of a large matmul and of a 320->320 3x3 conv at 64x64, batch 2, through the CPU
// backend (one warm-up, the best of at least four runs and a quarter second each), measured before
// and after the components and the better kept: what the kernels the models use reach on this
// machine. bf16 is absent where the CPU has no native bf16 (the backend refuses it).
struct PeakGflops {
  double f32 = 0;
  std::optional<double> bf16;
};

// One cold generate() (batch 1, guidance 7.5, the model's scheduler) against the sum of its parts
// as the component runs timed them:
//   predicted_s = unet_calls * unet.median_s + 2 * clip.median_s + vae.median_s
// (the prompt and the empty negative prompt are encoded separately). Whatever else the run spent
// time on (loading, first-call setup, scheduler steps, copies between steps) is the overhead.
struct GenerateBench {
  int steps = 0;
  int unet_calls = 0;  // steps, or one more for PNDM's first PLMS step
  double seconds = 0;  // the whole generate(), wall clock
  double predicted_s = 0;
  double overhead_ratio = 0;  // seconds / predicted_s: 1.10 is 10% over the sum of the parts
  GenerateTimings stages;     // where generate() says the time went
};

struct BenchResult {
  tensor::DType compute_dtype = tensor::DType::kF32;
  int64_t width = 0;
  int64_t height = 0;
  int threads = 0;    // the threads the backend ran on
  std::string model;  // "random sd15" or the folder
  PeakGflops peak;
  std::vector<ComponentBench> components;
  std::optional<GenerateBench> generate;  // with BenchOptions::generate_steps
  double peak_rss_mb = 0;  // the process's peak resident memory (getrusage), after everything
};

// Called with a line saying what the benchmark is doing now ("unet: building", ...).
using BenchProgress = std::function<void(const std::string& what)>;

// Measures the peaks, then builds, warms up and times each chosen component in turn (one alive at a
// time, so peak memory is that of the largest), then the peaks again. Errors: an unknown preset or component, a size the
// model cannot run (not a multiple of the VAE's scale factor, for example), bf16 on a CPU without
// it, a model folder that does not load, generate_steps without a model folder or without all
// three components. Not thread-safe (it sets the process's thread count).
base::Result<BenchResult> run_bench(const BenchOptions& options, const BenchProgress& progress = {});

// In this key order: {"dtype": "f32", "width": .., "height": .., "peak_gflops": {"f32": .., "bf16": ..|null},
//  "components": {"clip": {"median_s": .., "gflop": .., "gflops": .., "pct_of_peak": ..}, ...},
//  ["generate": {"steps": .., "unet_calls": .., "seconds": .., "predicted_s": .., "overhead_ratio": ..,
//                "load_s": .., "encode_s": .., "denoise_s": .., "decode_s": ..},]  (with generate_steps)
//  "peak_rss_mb": ..}
nlohmann::ordered_json bench_json(const BenchResult& result);

}  // namespace sdstack::pipeline
