// `sdstack bench`: times each Stable Diffusion component on this machine against its measured peak.
#include "pipeline/bench.h"

#include <cstdio>
#include <string>
#include <vector>

#include "base/strings.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "models/presets.h"

namespace sdstack::cli {
namespace {

// "clip,unet" -> {"clip", "unet"}.
std::vector<std::string> split_commas(const std::string& list) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    if (end > start) parts.push_back(list.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

void print_table(const pipeline::BenchResult& result) {
  const char* dtype = tensor::dtype_name(result.compute_dtype);
  std::printf("sdstack bench: %s, %lldx%lld, %s compute, %d threads\n", result.model.c_str(),
              static_cast<long long>(result.width), static_cast<long long>(result.height), dtype, result.threads);
  std::printf("peak (best of a 2048^3 matmul and a 320->320 3x3 conv): f32 %.1f GFLOP/s, bf16 ", result.peak.f32);
  if (result.peak.bf16) {
    std::printf("%.1f GFLOP/s\n", *result.peak.bf16);
  } else {
    std::printf("n/a (no native bf16)\n");
  }
  std::printf("\n%-6s %-28s %10s %10s %10s %8s\n", "", "workload", "median s", "GFLOP", "GFLOP/s", "% peak");
  for (const pipeline::ComponentBench& bench : result.components) {
    std::printf("%-6s %-28s %10.4f %10.2f %10.1f %7.1f%%\n", bench.name.c_str(), bench.workload.c_str(), bench.median_s,
                bench.gflop, bench.gflops, bench.pct_of_peak);
  }
  if (result.generate) {
    const pipeline::GenerateBench& generate = *result.generate;
    std::printf("\ngenerate, %d steps (%d UNet calls): %.2f s; predicted from the components %.2f s; ratio %.3f\n",
                generate.steps, generate.unet_calls, generate.seconds, generate.predicted_s, generate.overhead_ratio);
    std::printf("  load %.2f s, encode %.2f s, denoise %.2f s, decode %.2f s\n", generate.stages.load_s,
                generate.stages.encode_s, generate.stages.denoise_s, generate.stages.decode_s);
  }
  std::printf("\npeak RSS: %.0f MB\n", result.peak_rss_mb);
}

}  // namespace

int run_bench(int argc, char** argv) {
  CLI::App app(
      "Time each Stable Diffusion component on this machine: the CLIP text encoder (one prompt), one\n"
      "UNet forward at batch 2 (classifier-free guidance) and the VAE decode, each as the median of\n"
      "--repeat runs after a warm-up, with GFLOP/s (FLOPs counted from the architecture) and the\n"
      "percentage of this machine's peak, which the bench measures before and after them (the\n"
      "better of a 2048^3 matmul and SD's commonest 3x3 conv, in f32 and in bf16; the better of\n"
      "the two measurements, so that a moment of other load does not lower it).",
      argv[0]);
  app.footer(
      "On a CPU with AMX, bf16 runs on its tiles, and the bf16 peak is AMX's. To see how a CPU with\n"
      "AVX512-BF16 but no AMX (Zen 4, Cooper Lake) would do, peak included, cap the\n"
      "instruction set as oneDNN reads it: ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 sdstack bench ...\n"
      "(sdstack's own attention keeps to the same cap; its kernel then multiplies as this CPU's\n"
      "vendor does best: f32 FMAs on Intel, vdpbf16ps on AMD, whose bf16 runs at twice f32).");
  pipeline::BenchOptions options;
  std::string random, dtype = "f32", components = "clip,unet,vae";
  bool json = false;
  app.add_option("-m,--model", options.model_dir, "A diffusers model folder");
  app.add_option("--random", random, "Random weights in memory for a preset's architecture (no download)")
      ->check(CLI::IsMember(models::model_preset_names()));
  app.add_option("--dtype", dtype, "Compute type of convolutions, linears, attention (bf16: AVX512-BF16 or AMX)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  app.add_option("-W,--width", options.width, "Image width (default: the model's)")->check(CLI::PositiveNumber);
  app.add_option("-H,--height", options.height, "Image height (default: the model's)")->check(CLI::PositiveNumber);
  app.add_option("--repeat", options.repeat, "Timed runs per component")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--threads", options.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--components", components, "Which to run, comma-separated: clip, unet, vae")->capture_default_str();
  app.add_option("--generate-steps", options.generate_steps,
                 "Also time one whole generate of N steps (as 'sdstack generate' runs it, models loaded per\n"
                 "stage) against the sum of the components' medians; needs --model")
      ->check(CLI::Range(1, 1000));
  app.add_flag("--json", json, "Print the results as JSON");
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;

  if (options.model_dir.empty() == random.empty()) {
    std::fprintf(stderr, "sdstack: error: give exactly one of --model DIR and --random %s\n",
                 base::join(models::model_preset_names(), "|").c_str());
    return kExitUsage;
  }
  options.preset = random;
  options.compute_dtype = dtype == "bf16" ? tensor::DType::kBF16 : tensor::DType::kF32;
  options.components = split_commas(components);

  auto result = pipeline::run_bench(
      options, [](const std::string& what) { std::fprintf(stderr, "sdstack: %s\n", what.c_str()); });
  if (!result.is_ok()) return report(result.status());
  if (json) {
    std::printf("%s\n", pipeline::bench_json(*result).dump(2).c_str());
  } else {
    print_table(*result);
  }
  return 0;
}

}  // namespace sdstack::cli
