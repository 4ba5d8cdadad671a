// The scheduler interface (diffusers' SchedulerMixin, reduced to what txt2img uses) and make_scheduler.
#pragma once

#include <cstddef>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/status.h"
#include "tensor/tensor.h"

namespace sdstack::schedulers {

// Where a scheduler's step gets fresh Gaussian noise: torch.randn(shape) from the run's generator.
// Only stochastic steps (Euler ancestral, DDIM with eta > 0) draw from it; the pipeline owns it
// and keeps using it after the initial latents, so the draws continue one sequence.
class NoiseSource {
 public:
  virtual ~NoiseSource() = default;
  // A new contiguous f32 tensor of standard normal samples, in row-major order of `shape`.
  virtual tensor::Tensor randn(const tensor::Shape& shape) = 0;
};

// One denoising schedule. Use: set_timesteps(n); latents *= init_noise_sigma(); then for each
// call i < timesteps().size(): run the UNet on scale_model_input(latents, i) at timesteps()[i],
// and latents = step(model_output, i, latents, noise). Calls must come in order 0, 1, 2, ...
// (multistep schedulers keep the previous model outputs); set_timesteps starts over.
// Tensors are NCHW latents [B, C, H, W] in f32; every op is elementwise, so any contiguous
// f32 shape works. Not thread-safe.
class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // diffusers' class name, e.g. "PNDMScheduler".
  virtual std::string class_name() const = 0;
  // Every config value this scheduler uses, as from_config resolved it (file keys over the
  // scheduler's own defaults); the same keys as diffusers' `scheduler.config`.
  const nlohmann::json& config() const { return config_; }

  // Prepares `num_inference_steps` steps; an error when the count is out of range.
  virtual base::Status set_timesteps(int num_inference_steps) = 0;
  // The UNet timestep of each call (PNDM's PLMS start repeats one: 10 steps are 11 calls).
  const std::vector<float>& timesteps() const { return timesteps_; }
  // The noise levels of the sigma-based schedulers (one more than the calls); empty otherwise.
  const std::vector<float>& sigmas() const { return sigmas_; }
  // The standard deviation the initial noise is scaled to.
  virtual float init_noise_sigma() const { return 1.0f; }
  // The UNet's input for call `call_index` (a new tensor; `sample` is not changed).
  virtual tensor::Tensor scale_model_input(const tensor::Tensor& sample, size_t call_index) const;
  // The sample after call `call_index`, from the (guided) model output. `noise` may be null
  // when uses_noise() is false.
  virtual tensor::Tensor step(const tensor::Tensor& model_output, size_t call_index, const tensor::Tensor& sample,
                              NoiseSource* noise) = 0;
  // Whether step draws from its NoiseSource.
  virtual bool uses_noise() const { return false; }

 protected:
  nlohmann::json config_ = nlohmann::json::object();
  std::vector<float> timesteps_;
  std::vector<float> sigmas_;
};

// What a user may ask for on top of the model's scheduler config.
struct SchedulerOptions {
  bool karras = false;  // Karras et al. sigmas (use_karras_sigmas) — euler, dpmpp_2m, lms only
  double eta = 0.0;     // DDIM's eta: 0 is deterministic DDIM, 1 is DDPM-like — ddim only
};

// The scheduler names make_scheduler accepts (canonical ones, without aliases).
std::vector<std::string> scheduler_names();

// Builds scheduler `name` ("pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "lms", or an alias
// such as "euler-ancestral" and "dpm++2m"; "" or "default" picks the model's own `_class_name`)
// configured from the model's scheduler_config.json as diffusers' `Class.from_config` does.
// `source` names the config in messages. Errors: an unknown name (with the valid ones), a config
// value of the wrong type or outside the supported choices, an option the scheduler lacks.
base::Result<std::unique_ptr<Scheduler>> make_scheduler(const std::string& name, const nlohmann::json& model_config,
                                                        const SchedulerOptions& options = {},
                                                        const std::string& source = "scheduler_config.json");

}  // namespace sdstack::schedulers
