// EulerDiscreteScheduler: Algorithm 2 (Euler) of Karras et al. 2022, "Elucidating the Design Space
// of Diffusion-Based Generative Models", on the model's discrete sigmas (k-diffusion's sample_euler).
#include <cassert>
#include <cmath>

#include "schedulers/registry.h"

namespace sdstack::schedulers {
namespace {

using tensor::Tensor;

class EulerDiscreteScheduler : public Scheduler {
 public:
  static base::Result<std::unique_ptr<Scheduler>> create(ConfigResolver& config) {
    auto s = std::make_unique<EulerDiscreteScheduler>();
    SD_ASSIGN_OR_RETURN(s->alphas_cumprod_, read_sigma_alphas_cumprod(config));
    s->num_train_timesteps_ = static_cast<int64_t>(s->alphas_cumprod_.size());
    SD_ASSIGN_OR_RETURN(s->prediction_, read_prediction(config));
    SD_ASSIGN_OR_RETURN(std::string interpolation,
                        config.choice("interpolation_type", "linear", {"linear", "log_linear"}));
    s->log_linear_ = interpolation == "log_linear";
    SD_ASSIGN_OR_RETURN(s->use_karras_sigmas_, config.boolean("use_karras_sigmas", false));
    SD_ASSIGN_OR_RETURN(s->sigma_min_, config.optional_number("sigma_min"));
    SD_ASSIGN_OR_RETURN(s->sigma_max_, config.optional_number("sigma_max"));
    SD_ASSIGN_OR_RETURN(s->spacing_, read_spacing(config, "linspace"));
    SD_ASSIGN_OR_RETURN(std::string timestep_type,
                        config.choice("timestep_type", "discrete", {"discrete", "continuous"}));
    s->continuous_timesteps_ = timestep_type == "continuous" && s->prediction_ == Prediction::kVPrediction;
    SD_ASSIGN_OR_RETURN(s->steps_offset_, config.integer("steps_offset", 0));
    s->config_ = config.resolved();
    return std::unique_ptr<Scheduler>(std::move(s));
  }

  std::string class_name() const override { return "EulerDiscreteScheduler"; }

  base::Status set_timesteps(int num_inference_steps) override {
    SD_RETURN_IF_ERROR(check_step_count(class_name(), num_inference_steps, num_train_timesteps_));
    std::vector<float> timesteps;  // np.float32, as diffusers makes them
    for (double t : sigma_timesteps(spacing_, num_inference_steps, num_train_timesteps_, steps_offset_)) {
      timesteps.push_back(static_cast<float>(t));
    }
    const std::vector<float> table = training_sigmas(alphas_cumprod_);
    std::vector<double> sigmas;
    if (!log_linear_) {
      for (float t : timesteps) sigmas.push_back(np_interp_index(t, table));
    } else {
      // Evenly spaced in log-sigma from the largest to the smallest (n + 1 of them, as diffusers).
      for (float log_sigma :
           torch_linspace_f32(std::log(table.back()), std::log(table.front()), num_inference_steps + 1)) {
        sigmas.push_back(std::exp(log_sigma));
      }
    }
    if (use_karras_sigmas_) {
      const std::vector<float> log_sigmas = log_of(table);
      sigmas =
          karras_sigmas(sigma_min_.value_or(sigmas.back()), sigma_max_.value_or(sigmas.front()), num_inference_steps);
      timesteps.clear();
      for (double sigma : sigmas) timesteps.push_back(static_cast<float>(sigma_to_t(sigma, log_sigmas)));
    }
    sigmas_.assign(sigmas.begin(), sigmas.end());
    if (continuous_timesteps_) {
      timesteps.clear();
      for (float sigma : sigmas_) timesteps.push_back(0.25f * std::log(sigma));
    }
    timesteps_ = timesteps;
    sigmas_.push_back(0.0f);
    return base::Status::ok();
  }

  float init_noise_sigma() const override { return sigma_init_noise(sigmas_, spacing_); }

  Tensor scale_model_input(const Tensor& sample, size_t call_index) const override {
    assert(call_index < timesteps_.size());
    return scale_by_sigma(sample, sigmas_[call_index]);
  }

  // diffusers draws (and with s_churn = 0 ignores) a noise tensor here; sdstack skips the draw,
  // which changes nothing the pipeline computes.
  Tensor step(const Tensor& model_output, size_t call_index, const Tensor& sample, NoiseSource*) override {
    assert(call_index < timesteps_.size());
    // With s_churn = 0 (the pipeline's), gamma is 0 and sigma_hat is sigma.
    const float sigma_hat = sigmas_[call_index];
    // 1. The predicted original sample x_0 from the sigma-scaled predicted noise.
    const Tensor pred_original_sample = sigma_pred_original_sample(prediction_, model_output, sample, sigma_hat);
    // 2. Convert to an ODE derivative, d = (x - x_0) / sigma.
    const float* x = f32_data(sample);
    const float* x0 = f32_data(pred_original_sample);
    // 3. One Euler step to the next sigma.
    const float dt = sigmas_[call_index + 1] - sigma_hat;
    return elementwise(sample, [&](int64_t i) {
      const float derivative = (x[i] - x0[i]) / sigma_hat;
      return x[i] + derivative * dt;
    });
  }

 private:
  std::vector<float> alphas_cumprod_;
  int64_t num_train_timesteps_ = 0;
  Prediction prediction_ = Prediction::kEpsilon;
  bool log_linear_ = false;
  bool use_karras_sigmas_ = false;
  std::optional<double> sigma_min_, sigma_max_;
  TimestepSpacing spacing_ = TimestepSpacing::kLinspace;
  bool continuous_timesteps_ = false;
  int64_t steps_offset_ = 0;
};

}  // namespace

base::Result<std::unique_ptr<Scheduler>> make_euler(ConfigResolver& config) {
  return EulerDiscreteScheduler::create(config);
}

}  // namespace sdstack::schedulers
