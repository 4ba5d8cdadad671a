// `sdstack generate`: prompts to PNG images (output/0.png, 1.png, ...) with a Stable Diffusion model.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "base/file.h"
#include "base/progress.h"
#include "base/strings.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "hub/pull.h"
#include "io/npy.h"
#include "io/png.h"
#include "pipeline/stable_diffusion.h"

namespace sdstack::cli {
namespace {

// A model given as a folder, as a Hub id found under ./models/ (where the seed's workflow puts it),
// or as a Hub id in the Hugging Face cache (what `sdstack pull` and diffusers download): refs/main
// -> snapshots/COMMIT, read offline.
base::Result<std::string> resolve_model(const std::string& model) {
  if (base::is_directory(model)) return model;
  std::string under_models = base::join_path("models", model);
  if (base::is_directory(under_models)) return under_models;
  if (model.find('/') == std::string::npos || !hub::validate_repo_id(model).is_ok()) {
    return base::not_found("no model folder '" + model + "' (looked in ./" + model + " and ./" + under_models +
                           "); pass a diffusers model folder with --model DIR");
  }
  auto cached = hub::find_cached_pipeline(hub::HubSettings::from_environment().cache_dir, model);
  if (cached.is_ok()) return cached;
  return base::not_found("no model '" + model + "' (no folder ./" + model + " or ./" + under_models + "): " +
                         cached.status().message() + ", or pass a diffusers model folder with --model DIR");
}

base::Status make_directories(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return base::io_error(dir + ": cannot create folder: " + error.message());
  return base::Status::ok();
}

// The sampler's name as AUTOMATIC1111's webui writes it ("Euler a", "DPM++ 2M Karras", ...).
std::string sampler_name(const std::string& class_name, bool karras) {
  static const std::vector<std::pair<std::string, std::string>> names = {
      {"PNDMScheduler", "PNDM"},
      {"DDIMScheduler", "DDIM"},
      {"EulerDiscreteScheduler", "Euler"},
      {"EulerAncestralDiscreteScheduler", "Euler a"},
      {"DPMSolverMultistepScheduler", "DPM++ 2M"},
      {"LMSDiscreteScheduler", "LMS"}};
  std::string name = class_name;
  for (const auto& [cls, webui] : names) {
    if (cls == class_name) name = webui;
  }
  return karras ? name + " Karras" : name;
}

// The model's name for metadata: a Hub id as given, or a folder's last component.
std::string model_name(const std::string& model) {
  std::string trimmed = model;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  if (base::is_directory(trimmed) && trimmed.find('/') != std::string::npos) {
    return trimmed.substr(trimmed.rfind('/') + 1);
  }
  return trimmed;
}

// The AUTOMATIC1111 "parameters" text that image viewers and webui read, and a JSON record of it.
std::vector<std::pair<std::string, std::string>> png_metadata(const pipeline::GenerateRequest& request,
                                                              const pipeline::GenerateResult& result,
                                                              const std::string& prompt, const std::string& negative,
                                                              const std::string& model, int64_t width,
                                                              int64_t height) {
  const std::string sampler = sampler_name(result.scheduler, request.scheduler_options.karras);
  char settings[512];
  std::snprintf(settings, sizeof settings, "Steps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %lldx%lld, Model: %s",
                request.steps, sampler.c_str(), static_cast<double>(request.guidance_scale),
                static_cast<unsigned long long>(result.seed), static_cast<long long>(width),
                static_cast<long long>(height), model_name(model).c_str());
  std::string parameters = prompt + "\n";
  if (!negative.empty()) parameters += "Negative prompt: " + negative + "\n";
  parameters += settings;
  nlohmann::json record = {{"prompt", prompt},
                           {"negative_prompt", negative},
                           {"steps", request.steps},
                           {"guidance_scale", request.guidance_scale},
                           {"scheduler", result.scheduler},
                           {"karras", request.scheduler_options.karras},
                           {"eta", request.scheduler_options.eta},
                           {"seed", result.seed},
                           {"width", width},
                           {"height", height},
                           {"model", model}};
  return {{"parameters", parameters}, {"sdstack", record.dump()}, {"Software", "sdstack"}};
}

}  // namespace

int run_generate(int argc, char** argv) {
  CLI::App app("Generate images from prompts with a Stable Diffusion model (diffusers folder layout).\n"
               "One image per prompt (times --num-images-per-prompt), written as OUTPUT/0.png, 1.png, ...\n"
               "The same seed gives the same image as diffusers on the CPU.",
               argv[0]);
  pipeline::GenerateRequest request;
  std::string model = "runwayml/stable-diffusion-v1-5", output = "output", backend_name = "cpu", variant;
  std::string dtype = "f32", save_latents, latents_path;
  uint64_t seed = 0;
  int threads = 0;
  app.add_option("-P,--prompt", request.prompts, "Prompt (repeatable: one image each)")->required();
  app.add_option("-N,--negative-prompt", request.negative_prompts,
                 "Negative prompt (repeatable: one for all prompts, or one per prompt)");
  app.add_option("-m,--model", model, "Model folder, or a Hub id (from the Hugging Face cache: see 'sdstack pull')")
      ->capture_default_str();
  app.add_option("-o,--output", output, "Folder for the images")->capture_default_str();
  app.add_option("-s,--steps", request.steps, "Denoising steps")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_option("-g,--guidance-scale", request.guidance_scale, "Classifier-free guidance scale (<= 1: none)")
      ->capture_default_str();
  app.add_option("--scheduler", request.scheduler,
                 "Scheduler: " + base::join(schedulers::scheduler_names(), ", ") + " (default: the model's)");
  app.add_option("--seed", seed, "Seed of the torch-compatible generator (default: random, printed)");
  app.add_option("-W,--width", request.width, "Image width, a multiple of 8 (default: the model's)")
      ->check(CLI::PositiveNumber);
  app.add_option("-H,--height", request.height, "Image height, a multiple of 8 (default: the model's)")
      ->check(CLI::PositiveNumber);
  app.add_option("-n,--num-images-per-prompt", request.num_images_per_prompt, "Images per prompt")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--eta", request.scheduler_options.eta, "DDIM's eta (0: deterministic)");
  app.add_flag("--karras", request.scheduler_options.karras, "Karras sigmas (euler, dpmpp_2m, lms)");
  app.add_option("--clip-skip", request.clip_skip, "Skip the last N text encoder layers")->check(CLI::NonNegativeNumber);
  app.add_option("--latents", latents_path, "Initial latents from a .npy file [batch, 4, h/8, w/8] instead of noise");
  app.add_option("--save-latents", save_latents, "Save the final latents (before the VAE) as .npy");
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--dtype", dtype, "Compute type of convolutions, linears, attention (bf16: AVX512-BF16 or AMX)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  app.add_option("--backend", backend_name, "Compute backend")->check(CLI::IsMember({"cpu", "reference"}));
  app.add_option("--variant", variant, "Weight variant to prefer (fp16)")->check(CLI::IsMember({"", "fp16"}));
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  if (app.count("--seed") > 0) request.seed = seed;

  auto model_dir = resolve_model(model);
  if (!model_dir.is_ok()) return report(model_dir.status());
  if (!latents_path.empty()) {
    auto latents = io::read_npy(latents_path);
    if (!latents.is_ok()) return report(latents.status());
    request.latents = *latents;
  }
  const tensor::DType compute_dtype = dtype == "bf16" ? tensor::DType::kBF16 : tensor::DType::kF32;
  auto backend = backend::make_backend(backend_name, {.threads = threads, .compute_dtype = compute_dtype});
  if (!backend.is_ok()) return report(backend.status());
  // One generate() per process: each model is loaded for its stage and freed after it, so peak
  // memory is the UNet's alone.
  auto pipeline = pipeline::StableDiffusionPipeline::load(
      *model_dir, **backend, {.variant = variant, .residency = pipeline::Residency::kOneAtATime});
  if (!pipeline.is_ok()) return report(pipeline.status());
  if (base::Status status = make_directories(output); !status.is_ok()) return report(status);

  std::optional<base::ProgressBar> progress;
  auto result = (*pipeline)->generate(request, [&](const pipeline::StepInfo& step) {
    if (!progress) progress.emplace("denoising", step.total);
    progress->update(step.done);
  });
  if (progress) progress->finish();
  if (!result.is_ok()) return report(result.status());

  const int64_t count = result->images.dim(0), height = result->images.dim(1), width = result->images.dim(2);
  std::vector<std::string> negatives = request.negative_prompts;
  for (int64_t i = 0; i < count; ++i) {
    const size_t prompt_index = static_cast<size_t>(i / request.num_images_per_prompt);
    const std::string negative =
        negatives.empty() ? "" : negatives[negatives.size() == 1 ? 0 : prompt_index];
    io::Image image = io::image_from_float(result->images.slice0(i, 1).reshape({height, width, 3}));
    image.text = png_metadata(request, *result, request.prompts[prompt_index], negative, model, width, height);
    const std::string path = base::join_path(output, std::to_string(i) + ".png");
    if (base::Status status = io::write_png(path, image); !status.is_ok()) return report(status);
    std::printf("%s\n", path.c_str());
  }
  if (!save_latents.empty()) {
    if (base::Status status = io::write_npy(save_latents, result->final_latents); !status.is_ok()) {
      return report(status);
    }
  }
  std::fprintf(stderr, "sdstack: %lld image%s, %dx%d, %d steps, %s, seed %llu\n", static_cast<long long>(count),
               count == 1 ? "" : "s", static_cast<int>(width), static_cast<int>(height), request.steps,
               result->scheduler.c_str(), static_cast<unsigned long long>(result->seed));
  return 0;
}

}  // namespace sdstack::cli
