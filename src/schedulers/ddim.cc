// DDIMScheduler (Song et al. 2021, "Denoising Diffusion Implicit Models"): eta 0 is the
// deterministic sampler; eta > 0 adds fresh noise each step (eta 1 is DDPM-like).
#include <algorithm>
#include <cassert>
#include <cmath>

#include "schedulers/registry.h"

namespace sdstack::schedulers {
namespace {

using tensor::Tensor;

class DDIMScheduler : public Scheduler {
 public:
  static base::Result<std::unique_ptr<Scheduler>> create(ConfigResolver& config, double eta) {
    if (!(eta >= 0.0 && eta <= 1.0)) {
      return base::invalid_argument("DDIM eta is " + std::to_string(eta) + "; expected a value from 0 to 1");
    }
    auto s = std::make_unique<DDIMScheduler>();
    s->eta_ = eta;
    SD_ASSIGN_OR_RETURN(s->alphas_cumprod_, read_alphas_cumprod(config, /*has_rescale_option=*/true));
    s->num_train_timesteps_ = static_cast<int64_t>(s->alphas_cumprod_.size());
    SD_ASSIGN_OR_RETURN(s->clip_sample_, config.boolean("clip_sample", true));
    SD_ASSIGN_OR_RETURN(bool set_alpha_to_one, config.boolean("set_alpha_to_one", true));
    s->final_alpha_cumprod_ = set_alpha_to_one ? 1.0f : s->alphas_cumprod_[0];
    SD_ASSIGN_OR_RETURN(s->steps_offset_, config.integer("steps_offset", 0));
    SD_ASSIGN_OR_RETURN(s->prediction_, read_prediction(config));
    SD_ASSIGN_OR_RETURN(bool thresholding, config.boolean("thresholding", false));
    if (thresholding) return config.error("thresholding", "is true; sdstack does not implement dynamic thresholding");
    SD_RETURN_IF_ERROR(config.number("dynamic_thresholding_ratio", 0.995).status());
    SD_ASSIGN_OR_RETURN(double clip_range, config.number("clip_sample_range", 1.0));
    s->clip_sample_range_ = static_cast<float>(clip_range);
    SD_RETURN_IF_ERROR(config.number("sample_max_value", 1.0).status());
    SD_ASSIGN_OR_RETURN(s->spacing_, read_spacing(config, "leading"));
    s->config_ = config.resolved();
    return std::unique_ptr<Scheduler>(std::move(s));
  }

  std::string class_name() const override { return "DDIMScheduler"; }
  bool uses_noise() const override { return eta_ > 0; }

  base::Status set_timesteps(int num_inference_steps) override {
    SD_RETURN_IF_ERROR(check_step_count(class_name(), num_inference_steps, num_train_timesteps_));
    num_inference_steps_ = num_inference_steps;
    const int64_t n = num_inference_steps, train = num_train_timesteps_;
    int_timesteps_.clear();
    if (spacing_ == TimestepSpacing::kLinspace) {
      std::vector<double> t = np_linspace(0, static_cast<double>(train - 1), n);
      for (auto it = t.rbegin(); it != t.rend(); ++it) int_timesteps_.push_back(static_cast<int64_t>(np_round(*it)));
    } else if (spacing_ == TimestepSpacing::kLeading) {
      const int64_t step_ratio = train / n;
      for (int64_t i = n - 1; i >= 0; --i) int_timesteps_.push_back(i * step_ratio + steps_offset_);
    } else {
      for (double t : np_arange(static_cast<double>(train), 0, -static_cast<double>(train) / static_cast<double>(n))) {
        int_timesteps_.push_back(static_cast<int64_t>(np_round(t)) - 1);
      }
    }
    timesteps_.assign(int_timesteps_.begin(), int_timesteps_.end());
    return base::Status::ok();
  }

  Tensor scale_model_input(const Tensor& sample, size_t) const override { return sample.contiguous(); }

  // Formula (12) of the DDIM paper, in diffusers' steps.
  Tensor step(const Tensor& model_output, size_t call_index, const Tensor& sample, NoiseSource* noise) override {
    assert(num_inference_steps_ > 0 && call_index < int_timesteps_.size());
    const int64_t timestep = int_timesteps_[call_index];
    // 1. The previous timestep (diffusers steps back by train/n whatever the spacing).
    const int64_t prev_timestep = timestep - num_train_timesteps_ / num_inference_steps_;
    // 2. alphas and betas.
    const float alpha_prod_t = alphas_cumprod_[static_cast<size_t>(timestep)];
    const float alpha_prod_t_prev =
        prev_timestep >= 0 ? alphas_cumprod_[static_cast<size_t>(prev_timestep)] : final_alpha_cumprod_;
    const float beta_prod_t = 1.0f - alpha_prod_t;
    const float sqrt_alpha = std::sqrt(alpha_prod_t), sqrt_beta = std::sqrt(beta_prod_t);
    // 3. The predicted original sample x_0 and noise from the model output.
    const float* m = f32_data(model_output);
    const float* x = f32_data(sample);
    Tensor pred_original_sample, pred_epsilon;
    switch (prediction_) {
      case Prediction::kEpsilon:
        pred_original_sample = elementwise(sample, [&](int64_t i) { return (x[i] - sqrt_beta * m[i]) / sqrt_alpha; });
        pred_epsilon = model_output;
        break;
      case Prediction::kSample:
        pred_original_sample = model_output.contiguous();  // a copy: clipping must not touch the input
        pred_epsilon = elementwise(sample, [&](int64_t i) { return (x[i] - sqrt_alpha * m[i]) / sqrt_beta; });
        break;
      case Prediction::kVPrediction:
        pred_original_sample = elementwise(sample, [&](int64_t i) { return sqrt_alpha * x[i] - sqrt_beta * m[i]; });
        pred_epsilon = elementwise(sample, [&](int64_t i) { return sqrt_alpha * m[i] + sqrt_beta * x[i]; });
        break;
    }
    // 4. Clip x_0.
    if (clip_sample_) {
      float* x0 = pred_original_sample.data<float>();
      for (int64_t i = 0; i < pred_original_sample.numel(); ++i) {
        x0[i] = std::clamp(x0[i], -clip_sample_range_, clip_sample_range_);
      }
    }
    // 5. The variance σ_t(η) of formula (16).
    const float beta_prod_t_prev = 1.0f - alpha_prod_t_prev;
    const float variance = (beta_prod_t_prev / beta_prod_t) * (1.0f - alpha_prod_t / alpha_prod_t_prev);
    const float std_dev_t = static_cast<float>(eta_) * std::sqrt(variance);
    // 6. The "direction pointing to x_t" of formula (12).
    const float direction_coeff = std::sqrt(1.0f - alpha_prod_t_prev - std_dev_t * std_dev_t);
    const float sqrt_alpha_prev = std::sqrt(alpha_prod_t_prev);
    const float* x0 = f32_data(pred_original_sample);
    const float* eps = f32_data(pred_epsilon);
    // 7. x_(t-1) without the random noise of formula (12).
    Tensor prev_sample =
        elementwise(sample, [&](int64_t i) { return sqrt_alpha_prev * x0[i] + direction_coeff * eps[i]; });
    // 8. Plus σ_t z.
    if (eta_ > 0) {
      assert(noise != nullptr);
      Tensor variance_noise = noise->randn(model_output.shape());
      const float* z = f32_data(variance_noise);
      float* out = prev_sample.data<float>();
      for (int64_t i = 0; i < prev_sample.numel(); ++i) out[i] = out[i] + std_dev_t * z[i];
    }
    return prev_sample;
  }

 private:
  double eta_ = 0.0;
  std::vector<float> alphas_cumprod_;
  int64_t num_train_timesteps_ = 0;
  float final_alpha_cumprod_ = 1.0f;
  bool clip_sample_ = true;
  float clip_sample_range_ = 1.0f;
  int64_t steps_offset_ = 0;
  Prediction prediction_ = Prediction::kEpsilon;
  TimestepSpacing spacing_ = TimestepSpacing::kLeading;

  int64_t num_inference_steps_ = 0;
  std::vector<int64_t> int_timesteps_;
};

}  // namespace

base::Result<std::unique_ptr<Scheduler>> make_ddim(ConfigResolver& config, double eta) {
  return DDIMScheduler::create(config, eta);
}

}  // namespace sdstack::schedulers
