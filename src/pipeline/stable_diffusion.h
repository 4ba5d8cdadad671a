// The Stable Diffusion text-to-image pipeline (diffusers' StableDiffusionPipeline.__call__):
// prompts -> text embeddings -> denoising loop with classifier-free guidance -> VAE -> images.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/model_folder.h"
#include "models/clip_text_model.h"
#include "models/unet.h"
#include "models/vae.h"
#include "schedulers/scheduler.h"
#include "text/clip_tokenizer.h"

namespace sdstack::pipeline {

using tensor::Tensor;

struct GenerateRequest {
  std::vector<std::string> prompts;           // one image (or num_images_per_prompt) each
  std::vector<std::string> negative_prompts;  // none ("" for all), one for all, or one per prompt
  int num_images_per_prompt = 1;
  int steps = 50;
  float guidance_scale = 7.5f;  // <= 1: no unconditional branch
  int64_t width = 0;            // 0: the UNet's sample_size times the VAE's scale factor
  int64_t height = 0;
  std::optional<uint64_t> seed;  // none: a random seed, reported in the result
  std::string scheduler;         // "" : the model's own
  schedulers::SchedulerOptions scheduler_options;
  // Optional initial latents, NCHW [batch, 4, h/8, w/8] (before init_noise_sigma). With a seed as
  // well, the generator skips the draw it would have made for them, so latents saved from a seeded
  // run plus the same seed reproduce that run exactly (ancestral noise included).
  Tensor latents;
  int clip_skip = 0;
};

struct GenerateResult {
  Tensor images;         // NHWC [batch, H, W, 3] in [0, 1]
  Tensor final_latents;  // NCHW [batch, 4, h, w], what goes to the VAE (before 1/scaling_factor)
  uint64_t seed = 0;
  std::string scheduler;  // diffusers' class name of the scheduler used
};

// What the pipeline reports after each denoising step (one UNet call and one scheduler step).
struct StepInfo {
  int done = 0;   // steps done, 1-based
  int total = 0;  // steps in all
  const Tensor* unet_output = nullptr;  // the UNet's raw output, NCHW; with guidance [uncond..., cond...]
  const Tensor* latents = nullptr;      // the latents after the step, NCHW
};
using StepCallback = std::function<void(const StepInfo& step)>;

// Holds the loaded components of one model; load once, generate many times. Not thread-safe.
class StableDiffusionPipeline {
 public:
  // Loads tokenizer, text encoder, UNet and VAE from a diffusers folder. The backend must outlive
  // the pipeline.
  static base::Result<std::unique_ptr<StableDiffusionPipeline>> load(const std::string& model_dir,
                                                                     backend::Backend& backend,
                                                                     const std::string& variant = "");

  // Errors: bad sizes (not a multiple of 8), a negative prompt count that fits no prompt count,
  // latents of the wrong shape, an unknown scheduler.
  base::Result<GenerateResult> generate(const GenerateRequest& request, const StepCallback& on_step = {});

  // The default image size: the UNet's sample_size times the VAE's scale factor.
  int64_t default_size() const;
  int64_t vae_scale_factor() const;
  const nlohmann::json& scheduler_config() const { return scheduler_config_; }

 private:
  StableDiffusionPipeline() = default;
  // [B, 77, hidden] embeddings of `prompts`.
  base::Result<Tensor> encode_prompts(const std::vector<std::string>& prompts, int clip_skip);

  std::shared_ptr<text::CLIPTokenizer> tokenizer_;
  std::unique_ptr<models::CLIPTextModel> text_encoder_;
  std::unique_ptr<models::UNet2DConditionModel> unet_;
  std::unique_ptr<models::AutoencoderKL> vae_;
  nlohmann::json scheduler_config_;
  int64_t sample_size_ = 64;
};

}  // namespace sdstack::pipeline
