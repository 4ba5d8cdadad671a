// `sdstack make-model`: a random-weight Stable Diffusion model as a diffusers folder, made offline.
#include <cstdio>
#include <optional>
#include <string>

#include "base/progress.h"
#include "base/strings.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "models/random_model.h"

namespace sdstack::cli {
namespace {

// 1234567 -> "1,234,567".
std::string with_commas(int64_t value) {
  std::string digits = std::to_string(value), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string human_bytes(uint64_t bytes) {
  char text[32];
  if (bytes >= 1000000000ull) {
    std::snprintf(text, sizeof text, "%.2f GB", static_cast<double>(bytes) / 1e9);
  } else {
    std::snprintf(text, sizeof text, "%.1f MB", static_cast<double>(bytes) / 1e6);
  }
  return text;
}

}  // namespace

int run_make_model(int argc, char** argv) {
  CLI::App app(
      "Make a Stable Diffusion model with random weights: a complete diffusers folder (configs,\n"
      "tokenizer, safetensors weights) with the layout and shapes of the real model, for running\n"
      "and benchmarking the engine without downloads. The images it makes are noise.",
      argv[0]);
  std::string preset_name, to, dtype = "f16";
  models::RandomModelOptions options;
  app.add_option("--preset", preset_name,
                 "Architecture: tiny (the test model, ~5 M parameters) or sd15 (SD 1.5, ~1.07 G parameters)")
      ->required()
      ->check(CLI::IsMember(models::model_preset_names()));
  app.add_option("--seed", options.seed, "Seed of the weights")->capture_default_str();
  app.add_option("--dtype", dtype, "Stored weight type")->check(CLI::IsMember({"f16", "f32"}))->capture_default_str();
  app.add_option("--to", to, "Folder to write (default: models/sdstack-random-<preset>)");
  app.add_option("--sample-size", options.sample_size,
                 "The UNet's latent size; the default image size is 8x it (default: the preset's)")
      ->check(CLI::Range(1, 1024));
  app.add_flag("--force", options.force, "Replace the folder if it exists and is not empty");
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;

  options.dtype = dtype == "f32" ? tensor::DType::kF32 : tensor::DType::kF16;
  if (to.empty()) to = "models/sdstack-random-" + preset_name;
  auto preset = models::model_preset(preset_name);
  if (!preset.is_ok()) return report(preset.status());

  std::optional<base::ProgressBar> progress;
  auto summary = models::write_random_model(*preset, to, options, [&](int done, int total, const std::string&) {
    if (!progress) progress.emplace("components", total);
    progress->update(done);
  });
  if (progress) progress->finish();
  if (!summary.is_ok()) return report(summary.status());

  std::printf("%s\n", summary->dir.c_str());
  for (const models::WrittenComponent& written : summary->components) {
    std::printf("  %-42s %15s parameters %10s\n", written.file.c_str(), with_commas(written.parameters).c_str(),
                human_bytes(written.bytes).c_str());
  }
  std::printf("  %-42s %15s merges\n", "tokenizer/",
              with_commas(static_cast<int64_t>(summary->tokenizer_merges)).c_str());
  std::printf("total: %s parameters, %s on disk (%s preset, random weights, seed %llu, %s)\n",
              with_commas(summary->parameters).c_str(), human_bytes(summary->bytes).c_str(), preset_name.c_str(),
              static_cast<unsigned long long>(options.seed), dtype.c_str());
  return 0;
}

}  // namespace sdstack::cli
