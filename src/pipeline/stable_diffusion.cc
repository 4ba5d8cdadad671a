// The Stable Diffusion text-to-image pipeline, step by step as diffusers' StableDiffusionPipeline.
#include "pipeline/stable_diffusion.h"

#include <cmath>
#include <cstring>
#include <random>

#include "base/strings.h"
#include "models/config_reader.h"
#include "pipeline/torch_rng.h"
#include "tensor/layout.h"

namespace sdstack::pipeline {

using base::Result;
using base::Status;
using tensor::Shape;

namespace {

// a and b stacked along dim 0 (shapes equal after dim 0).
Tensor concat0(const Tensor& a, const Tensor& b) {
  Shape shape = a.shape();
  shape[0] += b.dim(0);
  Tensor out = Tensor::empty(shape);
  std::memcpy(out.data<float>(), a.data<float>(), a.nbytes());
  std::memcpy(out.data<float>() + a.numel(), b.data<float>(), b.nbytes());
  return out;
}

// Each row of x repeated `times` times in place: [a, b] -> [a, a, b, b] (diffusers' repeat + view).
Tensor repeat_rows(const Tensor& x, int64_t times) {
  if (times == 1) return x;
  Shape shape = x.shape();
  shape[0] *= times;
  Tensor out = Tensor::empty(shape);
  const int64_t row = x.numel() / x.dim(0);
  for (int64_t i = 0; i < x.dim(0); ++i) {
    for (int64_t j = 0; j < times; ++j) {
      std::memcpy(out.data<float>() + (i * times + j) * row, x.data<float>() + i * row,
                  static_cast<size_t>(row) * sizeof(float));
    }
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<StableDiffusionPipeline>> StableDiffusionPipeline::load(const std::string& model_dir,
                                                                               backend::Backend& backend,
                                                                               const std::string& variant) {
  SD_ASSIGN_OR_RETURN(io::ModelFolder folder, io::ModelFolder::open(model_dir));
  std::unique_ptr<StableDiffusionPipeline> pipeline(new StableDiffusionPipeline());
  SD_ASSIGN_OR_RETURN(pipeline->tokenizer_, text::CLIPTokenizer::load(folder.component_dir("tokenizer")));
  SD_ASSIGN_OR_RETURN(pipeline->text_encoder_, models::CLIPTextModel::load(folder, backend, variant));
  SD_ASSIGN_OR_RETURN(pipeline->unet_, models::UNet2DConditionModel::load(folder, backend, variant));
  SD_ASSIGN_OR_RETURN(pipeline->vae_, models::AutoencoderKL::load(folder, backend, variant));
  SD_ASSIGN_OR_RETURN(pipeline->scheduler_config_, folder.config("scheduler"));
  SD_ASSIGN_OR_RETURN(nlohmann::json unet_config, folder.config("unet"));
  models::ConfigReader unet_reader(unet_config, "unet/config.json");
  SD_ASSIGN_OR_RETURN(pipeline->sample_size_, unet_reader.integer("sample_size", 64));
  return pipeline;
}

int64_t StableDiffusionPipeline::vae_scale_factor() const {
  return int64_t{1} << (vae_->config().block_out_channels.size() - 1);
}

int64_t StableDiffusionPipeline::default_size() const { return sample_size_ * vae_scale_factor(); }

Result<Tensor> StableDiffusionPipeline::encode_prompts(const std::vector<std::string>& prompts, int clip_skip) {
  const size_t max_length = static_cast<size_t>(text_encoder_->config().max_position_embeddings);
  std::vector<std::vector<int32_t>> ids;
  for (const std::string& prompt : prompts) ids.push_back(tokenizer_->encode_padded(prompt, max_length));
  return text_encoder_->encode(ids, clip_skip);
}

Result<GenerateResult> StableDiffusionPipeline::generate(const GenerateRequest& request, const StepCallback& on_step) {
  // 1. Check the inputs (diffusers' check_inputs).
  const int64_t width = request.width > 0 ? request.width : default_size();
  const int64_t height = request.height > 0 ? request.height : default_size();
  const int64_t factor = vae_scale_factor();
  if (width % factor != 0 || height % factor != 0) {
    return base::invalid_argument("width and height must be multiples of " + std::to_string(factor) + ", got " +
                                  std::to_string(width) + "x" + std::to_string(height) + " (try " +
                                  std::to_string(width / factor * factor) + "x" +
                                  std::to_string(height / factor * factor) + ")");
  }
  if (request.prompts.empty()) return base::invalid_argument("no prompt given (pass at least one -P/--prompt)");
  if (request.steps < 1) return base::invalid_argument("steps must be at least 1");
  if (request.num_images_per_prompt < 1) return base::invalid_argument("num_images_per_prompt must be at least 1");
  const size_t prompt_count = request.prompts.size();
  std::vector<std::string> negatives = request.negative_prompts;
  if (negatives.empty()) negatives.assign(prompt_count, "");
  if (negatives.size() == 1 && prompt_count > 1) negatives.assign(prompt_count, negatives[0]);
  if (negatives.size() != prompt_count) {
    return base::invalid_argument(std::to_string(negatives.size()) + " negative prompts for " +
                                  std::to_string(prompt_count) + " prompts: give one for all, or one per prompt");
  }
  const bool guidance = request.guidance_scale > 1.0f;
  const int64_t batch = static_cast<int64_t>(prompt_count) * request.num_images_per_prompt;

  // 2. Text embeddings, each prompt's repeated num_images_per_prompt times; with guidance the
  //    UNet batch is [uncond..., cond...].
  SD_ASSIGN_OR_RETURN(Tensor prompt_embeds, encode_prompts(request.prompts, request.clip_skip));
  prompt_embeds = repeat_rows(prompt_embeds, request.num_images_per_prompt);
  Tensor encoder_states = prompt_embeds;
  if (guidance) {
    SD_ASSIGN_OR_RETURN(Tensor negative_embeds, encode_prompts(negatives, request.clip_skip));
    encoder_states = concat0(repeat_rows(negative_embeds, request.num_images_per_prompt), prompt_embeds);
  }

  // 3. The scheduler and its timesteps.
  SD_ASSIGN_OR_RETURN(std::unique_ptr<schedulers::Scheduler> scheduler,
                      schedulers::make_scheduler(request.scheduler, scheduler_config_, request.scheduler_options));
  SD_RETURN_IF_ERROR(scheduler->set_timesteps(request.steps));

  // 4. Initial latents: torch.randn from the seeded generator (or the caller's), times the
  //    scheduler's initial sigma. The generator goes on to feed the scheduler's noise.
  GenerateResult result;
  result.seed = request.seed.has_value() ? *request.seed : std::random_device()();
  TorchGenerator generator(result.seed);
  const int64_t channels = unet_->config().in_channels;
  const Shape latent_shape = {batch, channels, height / factor, width / factor};
  Tensor latents;
  if (request.latents.defined()) {
    if (request.latents.shape() != latent_shape) {
      return base::invalid_argument("initial latents have shape " + request.latents.shape_string() + ", expected " +
                                    base::shape_to_string(latent_shape) + " for " + std::to_string(batch) +
                                    " images of " + std::to_string(width) + "x" + std::to_string(height));
    }
    latents = request.latents.to(tensor::DType::kF32);
    // With a seed too, the generator moves past the draw it would have made, so latents saved
    // from a seeded run reproduce that run, step noise included (the golden data's convention).
    if (request.seed.has_value()) generator.randn(latent_shape);
  } else {
    latents = generator.randn(latent_shape);
  }
  const float init_sigma = scheduler->init_noise_sigma();
  if (init_sigma != 1.0f) {
    float* p = latents.data<float>();
    for (int64_t i = 0; i < latents.numel(); ++i) p[i] *= init_sigma;
  }

  // 5. The denoising loop.
  const std::vector<float>& timesteps = scheduler->timesteps();
  const int total = static_cast<int>(timesteps.size());
  for (size_t i = 0; i < timesteps.size(); ++i) {
    Tensor model_input = scheduler->scale_model_input(latents, i);  // NCHW [B, 4, h, w]
    if (guidance) model_input = concat0(model_input, model_input);
    SD_ASSIGN_OR_RETURN(Tensor noise_pred_nhwc,
                        unet_->forward(tensor::nchw_to_nhwc(model_input), timesteps[i], encoder_states));
    const Tensor unet_output = tensor::nhwc_to_nchw(noise_pred_nhwc);
    Tensor noise_pred = unet_output;
    if (guidance) {
      // eps = eps_uncond + g * (eps_text - eps_uncond)
      Tensor guided = Tensor::empty(latents.shape());
      const float* uncond = noise_pred.data<float>();
      const float* text = uncond + latents.numel();
      float* out = guided.data<float>();
      for (int64_t j = 0; j < latents.numel(); ++j) out[j] = uncond[j] + request.guidance_scale * (text[j] - uncond[j]);
      noise_pred = guided;
    }
    latents = scheduler->step(noise_pred, i, latents, &generator);
    if (on_step) on_step(StepInfo{static_cast<int>(i) + 1, total, &unet_output, &latents});
  }
  result.final_latents = latents;
  result.scheduler = scheduler->class_name();

  // 6. Decode: image = clamp(vae.decode(latents / scaling_factor) / 2 + 0.5, 0, 1), NHWC.
  Tensor scaled = Tensor::empty(latents.shape());
  const float scaling_factor = vae_->scaling_factor();
  for (int64_t j = 0; j < latents.numel(); ++j) scaled.data<float>()[j] = latents.data<float>()[j] / scaling_factor;
  SD_ASSIGN_OR_RETURN(Tensor decoded, vae_->decode(tensor::nchw_to_nhwc(scaled)));
  float* pixels = decoded.data<float>();
  for (int64_t j = 0; j < decoded.numel(); ++j) pixels[j] = std::fmin(std::fmax(pixels[j] / 2.0f + 0.5f, 0.0f), 1.0f);
  result.images = decoded;
  return result;
}

}  // namespace sdstack::pipeline
