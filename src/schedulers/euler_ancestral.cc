// EulerAncestralDiscreteScheduler: k-diffusion's sample_euler_ancestral — an Euler step down to
// sigma_down, then fresh noise of sigma_up, so each step forgets part of the previous noise.
#include <cassert>
#include <cmath>

#include "schedulers/registry.h"

namespace sdstack::schedulers {
namespace {

using tensor::Tensor;

class EulerAncestralDiscreteScheduler : public Scheduler {
 public:
  static base::Result<std::unique_ptr<Scheduler>> create(ConfigResolver& config) {
    auto s = std::make_unique<EulerAncestralDiscreteScheduler>();
    SD_ASSIGN_OR_RETURN(s->alphas_cumprod_, read_sigma_alphas_cumprod(config));
    s->num_train_timesteps_ = static_cast<int64_t>(s->alphas_cumprod_.size());
    SD_ASSIGN_OR_RETURN(s->prediction_, read_prediction(config));
    if (s->prediction_ == Prediction::kSample) {
      return config.error("prediction_type",
                          "is 'sample'; EulerAncestralDiscreteScheduler supports epsilon and v_prediction");
    }
    SD_ASSIGN_OR_RETURN(s->spacing_, read_spacing(config, "linspace"));
    SD_ASSIGN_OR_RETURN(s->steps_offset_, config.integer("steps_offset", 0));
    s->config_ = config.resolved();
    return std::unique_ptr<Scheduler>(std::move(s));
  }

  std::string class_name() const override { return "EulerAncestralDiscreteScheduler"; }
  bool uses_noise() const override { return true; }

  base::Status set_timesteps(int num_inference_steps) override {
    SD_RETURN_IF_ERROR(check_step_count(class_name(), num_inference_steps, num_train_timesteps_));
    const std::vector<float> table = training_sigmas(alphas_cumprod_);
    timesteps_.clear();
    sigmas_.clear();
    for (double t : sigma_timesteps(spacing_, num_inference_steps, num_train_timesteps_, steps_offset_)) {
      const float timestep = static_cast<float>(t);  // np.float32, as diffusers makes them
      timesteps_.push_back(timestep);
      sigmas_.push_back(static_cast<float>(np_interp_index(timestep, table)));
    }
    sigmas_.push_back(0.0f);
    return base::Status::ok();
  }

  float init_noise_sigma() const override { return sigma_init_noise(sigmas_, spacing_); }

  Tensor scale_model_input(const Tensor& sample, size_t call_index) const override {
    assert(call_index < timesteps_.size());
    return scale_by_sigma(sample, sigmas_[call_index]);
  }

  Tensor step(const Tensor& model_output, size_t call_index, const Tensor& sample, NoiseSource* noise) override {
    assert(call_index < timesteps_.size() && noise != nullptr);
    const float sigma = sigmas_[call_index];
    // 1. The predicted original sample x_0 from the sigma-scaled predicted noise.
    const Tensor pred_original_sample = sigma_pred_original_sample(prediction_, model_output, sample, sigma);
    // 2. Split the move to the next sigma into a deterministic part (down) and fresh noise (up),
    //    with sigma_down^2 + sigma_up^2 = sigma_to^2.
    const float sigma_from = sigma, sigma_to = sigmas_[call_index + 1];
    const float sigma_up =
        std::sqrt(sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from));
    const float sigma_down = std::sqrt(sigma_to * sigma_to - sigma_up * sigma_up);
    // 3. Convert to an ODE derivative and take an Euler step to sigma_down.
    const float dt = sigma_down - sigma;
    const float* x = f32_data(sample);
    const float* x0 = f32_data(pred_original_sample);
    Tensor prev_sample = elementwise(sample, [&](int64_t i) {
      const float derivative = (x[i] - x0[i]) / sigma;
      return x[i] + derivative * dt;
    });
    // 4. Add noise of sigma_up (drawn every step, the last one included, as diffusers does).
    const Tensor fresh = noise->randn(model_output.shape());
    const float* z = f32_data(fresh);
    float* out = prev_sample.data<float>();
    for (int64_t i = 0; i < prev_sample.numel(); ++i) out[i] = out[i] + z[i] * sigma_up;
    return prev_sample;
  }

 private:
  std::vector<float> alphas_cumprod_;
  int64_t num_train_timesteps_ = 0;
  Prediction prediction_ = Prediction::kEpsilon;
  TimestepSpacing spacing_ = TimestepSpacing::kLinspace;
  int64_t steps_offset_ = 0;
};

}  // namespace

base::Result<std::unique_ptr<Scheduler>> make_euler_ancestral(ConfigResolver& config) {
  return EulerAncestralDiscreteScheduler::create(config);
}

}  // namespace sdstack::schedulers
