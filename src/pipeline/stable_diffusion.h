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

// When the pipeline holds its three models (text encoder, UNet, VAE) in memory.
enum class Residency {
  // Loaded by load() and kept: generate() again loads nothing. Memory holds all three at once,
  // and the VAE's activation buffers after its first decode (AutoencoderKL::buffer_bytes).
  kAllLoaded,
  // Each loaded by generate() when its stage starts and freed when it ends (the text encoder for
  // the prompts, the UNet for the denoising loop, the VAE's decoder for the images), so peak
  // memory is that of the largest (the UNet) alone. Every generate() loads them again: for one
  // generate() per process, as `sdstack generate` does.
  kOneAtATime,
};

struct PipelineOptions {
  std::string variant;  // weight files to prefer ("fp16": the .fp16 files)
  Residency residency = Residency::kAllLoaded;
};

// What generate() spent its time on, in seconds (wall clock).
struct GenerateTimings {
  double load_s = 0;           // loading models (with Residency::kOneAtATime)
  double encode_s = 0;         // tokenizing and the text encoder
  double denoise_s = 0;        // the denoising loop: UNet calls, guidance and scheduler steps
  double decode_s = 0;         // the VAE decode and the conversion to pixels
  std::vector<double> step_s;  // each step of the loop
};

// Holds one model's tokenizer and configs, and its components as `residency` says; load once,
// generate many times. Not thread-safe.
class StableDiffusionPipeline {
 public:
  // Opens a diffusers folder, reads its configs and tokenizer and finds the weight files; with
  // Residency::kAllLoaded also loads the text encoder, UNet and VAE (with kOneAtATime a corrupt
  // weight file is reported by generate()). The backend must outlive the pipeline.
  static base::Result<std::unique_ptr<StableDiffusionPipeline>> load(const std::string& model_dir,
                                                                     backend::Backend& backend,
                                                                     const PipelineOptions& options = {});

  // Errors: bad sizes (not a multiple of 8), a negative prompt count that fits no prompt count,
  // latents of the wrong shape, an unknown scheduler; with Residency::kOneAtATime, weight files
  // that do not load. `timings`, when given, receives where the time went.
  base::Result<GenerateResult> generate(const GenerateRequest& request, const StepCallback& on_step = {},
                                        GenerateTimings* timings = nullptr);

  // Which models are in memory now (for tests and tools that watch memory).
  bool text_encoder_loaded() const { return text_encoder_ != nullptr; }
  bool unet_loaded() const { return unet_ != nullptr; }
  bool vae_loaded() const { return vae_ != nullptr; }

  // The default image size: the UNet's sample_size times the VAE's scale factor.
  int64_t default_size() const;
  int64_t vae_scale_factor() const;
  const nlohmann::json& scheduler_config() const { return scheduler_config_; }

 private:
  StableDiffusionPipeline(io::ModelFolder folder, backend::Backend& backend, const PipelineOptions& options)
      : folder_(std::move(folder)), backend_(backend), options_(options) {}
  // Each loads its model unless it is loaded.
  base::Status load_text_encoder();
  base::Status load_unet();
  base::Status load_vae();
  // With Residency::kOneAtATime, frees a model whose stage is over and hands the freed heap back
  // to the system, so the next model's weights reuse that memory instead of adding to the peak.
  template <typename Model>
  void release(std::unique_ptr<Model>& model);
  // [B, 77, hidden] embeddings of `prompts`.
  base::Result<Tensor> encode_prompts(const std::vector<std::string>& prompts, int clip_skip);

  io::ModelFolder folder_;
  backend::Backend& backend_;
  PipelineOptions options_;
  std::shared_ptr<text::CLIPTokenizer> tokenizer_;
  models::CLIPTextConfig text_config_;
  models::UNet2DConditionConfig unet_config_;
  models::AutoencoderKLConfig vae_config_;
  std::unique_ptr<models::CLIPTextModel> text_encoder_;
  std::unique_ptr<models::UNet2DConditionModel> unet_;
  std::unique_ptr<models::AutoencoderKL> vae_;
  nlohmann::json scheduler_config_;
  int64_t sample_size_ = 64;
};

}  // namespace sdstack::pipeline
