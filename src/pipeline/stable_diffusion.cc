// The Stable Diffusion text-to-image pipeline, step by step as diffusers' StableDiffusionPipeline.
#include "pipeline/stable_diffusion.h"

#include <malloc.h>

#include <chrono>
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

// Wall-clock seconds between laps.
class Stopwatch {
 public:
  void restart() { start_ = std::chrono::steady_clock::now(); }
  // Seconds since the last restart or lap, and restarts.
  double lap() {
    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - start_).count();
    start_ = now;
    return seconds;
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

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
                                                                               const PipelineOptions& options) {
  SD_ASSIGN_OR_RETURN(io::ModelFolder folder, io::ModelFolder::open(model_dir));
  std::unique_ptr<StableDiffusionPipeline> pipeline(new StableDiffusionPipeline(std::move(folder), backend, options));
  const io::ModelFolder& opened = pipeline->folder_;
  SD_ASSIGN_OR_RETURN(pipeline->tokenizer_, text::CLIPTokenizer::load(opened.component_dir("tokenizer")));
  SD_ASSIGN_OR_RETURN(nlohmann::json text_json, opened.config("text_encoder"));
  SD_ASSIGN_OR_RETURN(pipeline->text_config_, models::CLIPTextConfig::from_json(text_json, "text_encoder/config.json"));
  SD_ASSIGN_OR_RETURN(nlohmann::json unet_json, opened.config("unet"));
  SD_ASSIGN_OR_RETURN(pipeline->unet_config_, models::UNet2DConditionConfig::from_json(unet_json, "unet/config.json"));
  models::ConfigReader unet_reader(unet_json, "unet/config.json");
  SD_ASSIGN_OR_RETURN(pipeline->sample_size_, unet_reader.integer("sample_size", 64));
  SD_ASSIGN_OR_RETURN(nlohmann::json vae_json, opened.config("vae"));
  SD_ASSIGN_OR_RETURN(pipeline->vae_config_, models::AutoencoderKLConfig::from_json(vae_json, "vae/config.json"));
  SD_ASSIGN_OR_RETURN(pipeline->scheduler_config_, opened.config("scheduler"));
  if (options.residency == Residency::kAllLoaded) {
    SD_RETURN_IF_ERROR(pipeline->load_text_encoder());
    SD_RETURN_IF_ERROR(pipeline->load_unet());
    SD_RETURN_IF_ERROR(pipeline->load_vae());
  } else {
    // Found now, read later: a missing weight file is reported before any work is done.
    for (const char* component : {"text_encoder", "unet", "vae"}) {
      SD_RETURN_IF_ERROR(opened.weight_files(component, options.variant).status());
    }
  }
  return pipeline;
}

Status StableDiffusionPipeline::load_text_encoder() {
  if (text_encoder_ != nullptr) return Status::ok();
  SD_ASSIGN_OR_RETURN(text_encoder_, models::CLIPTextModel::load(folder_, backend_, options_.variant));
  return Status::ok();
}

Status StableDiffusionPipeline::load_unet() {
  if (unet_ != nullptr) return Status::ok();
  SD_ASSIGN_OR_RETURN(unet_, models::UNet2DConditionModel::load(folder_, backend_, options_.variant));
  return Status::ok();
}

Status StableDiffusionPipeline::load_vae() {
  if (vae_ != nullptr) return Status::ok();
  // A pipeline that keeps its VAE may be asked to encode later (img2img); one that loads it per
  // call only decodes.
  const auto parts = options_.residency == Residency::kAllLoaded ? models::AutoencoderKL::Parts::kEncoderAndDecoder
                                                                 : models::AutoencoderKL::Parts::kDecoderOnly;
  SD_ASSIGN_OR_RETURN(vae_, models::AutoencoderKL::load(folder_, backend_, options_.variant, parts));
  return Status::ok();
}

template <typename Model>
void StableDiffusionPipeline::release(std::unique_ptr<Model>& model) {
  if (options_.residency != Residency::kOneAtATime) return;
  model.reset();
  // glibc keeps freed chunks below its mmap threshold (which grows to 32 MB as large blocks are
  // freed) in its arenas; handing them back lets the next model's weights take that memory
  // instead of adding to the peak.
  malloc_trim(0);
}

int64_t StableDiffusionPipeline::vae_scale_factor() const {
  return int64_t{1} << (vae_config_.block_out_channels.size() - 1);
}

int64_t StableDiffusionPipeline::default_size() const { return sample_size_ * vae_scale_factor(); }

Result<Tensor> StableDiffusionPipeline::encode_prompts(const std::vector<std::string>& prompts, int clip_skip) {
  const size_t max_length = static_cast<size_t>(text_config_.max_position_embeddings);
  std::vector<std::vector<int32_t>> ids;
  for (const std::string& prompt : prompts) ids.push_back(tokenizer_->encode_padded(prompt, max_length));
  return text_encoder_->encode(ids, clip_skip);
}

Result<GenerateResult> StableDiffusionPipeline::generate(const GenerateRequest& request, const StepCallback& on_step,
                                                         GenerateTimings* timings) {
  GenerateTimings spent;
  Stopwatch stopwatch;
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
  stopwatch.restart();
  SD_RETURN_IF_ERROR(load_text_encoder());
  spent.load_s += stopwatch.lap();
  SD_ASSIGN_OR_RETURN(Tensor prompt_embeds, encode_prompts(request.prompts, request.clip_skip));
  prompt_embeds = repeat_rows(prompt_embeds, request.num_images_per_prompt);
  Tensor encoder_states = prompt_embeds;
  if (guidance) {
    SD_ASSIGN_OR_RETURN(Tensor negative_embeds, encode_prompts(negatives, request.clip_skip));
    encoder_states = concat0(repeat_rows(negative_embeds, request.num_images_per_prompt), prompt_embeds);
  }
  spent.encode_s = stopwatch.lap();
  release(text_encoder_);

  // 3. The scheduler and its timesteps.
  SD_ASSIGN_OR_RETURN(std::unique_ptr<schedulers::Scheduler> scheduler,
                      schedulers::make_scheduler(request.scheduler, scheduler_config_, request.scheduler_options));
  SD_RETURN_IF_ERROR(scheduler->set_timesteps(request.steps));

  // 4. Initial latents: torch.randn from the seeded generator (or the caller's), times the
  //    scheduler's initial sigma. The generator goes on to feed the scheduler's noise.
  GenerateResult result;
  result.seed = request.seed.has_value() ? *request.seed : std::random_device()();
  TorchGenerator generator(result.seed);
  const int64_t channels = unet_config_.in_channels;
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
  stopwatch.restart();
  SD_RETURN_IF_ERROR(load_unet());
  spent.load_s += stopwatch.lap();
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
    // (No malloc_trim after the first call, whose weight reorders leave holes in the heap: it
    // lowered what later steps hold by ~250 MB but not the peak, which that first call sets, and
    // handed back the activations' pages too, which the second step then faulted in again: +0.2 s.)
    spent.step_s.push_back(stopwatch.lap());
    if (on_step) on_step(StepInfo{static_cast<int>(i) + 1, total, &unet_output, &latents});
    stopwatch.restart();  // the callback's time (a progress bar, a test's checks) is not the loop's
  }
  for (double step : spent.step_s) spent.denoise_s += step;
  release(unet_);
  result.final_latents = latents;
  result.scheduler = scheduler->class_name();

  // 6. Decode: image = clamp(vae.decode(latents / scaling_factor) / 2 + 0.5, 0, 1), NHWC.
  stopwatch.restart();
  SD_RETURN_IF_ERROR(load_vae());
  spent.load_s += stopwatch.lap();
  Tensor scaled = Tensor::empty(latents.shape());
  const float scaling_factor = vae_->scaling_factor();
  for (int64_t j = 0; j < latents.numel(); ++j) scaled.data<float>()[j] = latents.data<float>()[j] / scaling_factor;
  SD_ASSIGN_OR_RETURN(Tensor decoded, vae_->decode(tensor::nchw_to_nhwc(scaled)));
  float* pixels = decoded.data<float>();
  for (int64_t j = 0; j < decoded.numel(); ++j) pixels[j] = std::fmin(std::fmax(pixels[j] / 2.0f + 0.5f, 0.0f), 1.0f);
  spent.decode_s = stopwatch.lap();
  release(vae_);
  result.images = decoded;
  if (timings != nullptr) *timings = std::move(spent);
  return result;
}

}  // namespace sdstack::pipeline
