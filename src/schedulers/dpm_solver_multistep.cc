// DPMSolverMultistepScheduler, algorithm dpmsolver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver
// for Guided Sampling of Diffusion Probabilistic Models"): "DPM++ 2M" at solver_order 2.
#include <array>
#include <cassert>
#include <cmath>
#include <limits>

#include "schedulers/registry.h"

namespace sdstack::schedulers {
namespace {

using tensor::Tensor;

// The noise-level quantities at one sigma, in f32 as diffusers computes them on 0-dim tensors.
struct Level {
  float alpha;   // 1 / sqrt(sigma^2 + 1)
  float sigma;   // sigma * alpha
  float lambda;  // log(alpha) - log(sigma): half the log-SNR
};

Level level_at(float sigma) {
  Level l;
  l.alpha = 1.0f / std::sqrt(sigma * sigma + 1.0f);
  l.sigma = sigma * l.alpha;
  l.lambda = std::log(l.alpha) - std::log(l.sigma);
  return l;
}

class DPMSolverMultistepScheduler : public Scheduler {
 public:
  static base::Result<std::unique_ptr<Scheduler>> create(ConfigResolver& config) {
    auto s = std::make_unique<DPMSolverMultistepScheduler>();
    SD_ASSIGN_OR_RETURN(s->alphas_cumprod_, read_alphas_cumprod(config, /*has_rescale_option=*/false));
    s->num_train_timesteps_ = static_cast<int64_t>(s->alphas_cumprod_.size());
    SD_ASSIGN_OR_RETURN(s->solver_order_, config.integer("solver_order", 2));
    if (s->solver_order_ < 1 || s->solver_order_ > 3) return config.error("solver_order", "must be 1, 2 or 3");
    SD_ASSIGN_OR_RETURN(s->prediction_, read_prediction(config));
    SD_ASSIGN_OR_RETURN(bool thresholding, config.boolean("thresholding", false));
    if (thresholding) return config.error("thresholding", "is true; sdstack does not implement dynamic thresholding");
    SD_RETURN_IF_ERROR(config.number("dynamic_thresholding_ratio", 0.995).status());
    SD_RETURN_IF_ERROR(config.number("sample_max_value", 1.0).status());
    SD_ASSIGN_OR_RETURN(std::string algorithm,
                        config.choice("algorithm_type", "dpmsolver++",
                                      {"dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"}));
    if (algorithm != "dpmsolver++") {
      return config.error("algorithm_type",
                          "is '" + algorithm + "', which sdstack does not implement yet (it has dpmsolver++)");
    }
    SD_ASSIGN_OR_RETURN(std::string solver_type, config.choice("solver_type", "midpoint", {"midpoint", "heun"}));
    s->heun_ = solver_type == "heun";
    SD_ASSIGN_OR_RETURN(s->lower_order_final_, config.boolean("lower_order_final", true));
    SD_ASSIGN_OR_RETURN(s->euler_at_final_, config.boolean("euler_at_final", false));
    SD_ASSIGN_OR_RETURN(s->use_karras_sigmas_, config.boolean("use_karras_sigmas", false));
    SD_ASSIGN_OR_RETURN(bool use_lu_lambdas, config.boolean("use_lu_lambdas", false));
    if (use_lu_lambdas)
      return config.error("use_lu_lambdas", "is true; sdstack does not implement Lu's lambda spacing");
    // JSON has no -inf: absent, null or the string "-inf" mean no clipping.
    SD_ASSIGN_OR_RETURN(s->lambda_min_clipped_,
                        config.number_or_infinity("lambda_min_clipped", -std::numeric_limits<double>::infinity()));
    SD_ASSIGN_OR_RETURN(std::optional<std::string> variance_type, config.optional_string("variance_type"));
    if (variance_type.has_value()) {
      return config.error("variance_type",
                          "is '" + *variance_type + "'; sdstack runs models without a learned variance (null)");
    }
    SD_ASSIGN_OR_RETURN(s->spacing_, read_spacing(config, "linspace"));
    SD_ASSIGN_OR_RETURN(s->steps_offset_, config.integer("steps_offset", 0));
    s->config_ = config.resolved();
    return std::unique_ptr<Scheduler>(std::move(s));
  }

  std::string class_name() const override { return "DPMSolverMultistepScheduler"; }

  base::Status set_timesteps(int num_inference_steps) override {
    SD_RETURN_IF_ERROR(check_step_count(class_name(), num_inference_steps, num_train_timesteps_));
    const int64_t n = num_inference_steps;
    // Clip the smallest lambdas (large t) for stability with the cosine schedule: train timesteps
    // whose lambda is below lambda_min_clipped are never used.
    int64_t clipped = 0;
    for (float a : alphas_cumprod_) {
      if (std::log(std::sqrt(a)) - std::log(std::sqrt(1.0f - a)) < lambda_min_clipped_) ++clipped;
    }
    const int64_t last_timestep = num_train_timesteps_ - clipped;
    std::vector<int64_t> timesteps;
    if (spacing_ == TimestepSpacing::kLinspace) {
      std::vector<double> t = np_linspace(0, static_cast<double>(last_timestep - 1), n + 1);
      for (size_t i = t.size() - 1; i >= 1; --i) timesteps.push_back(static_cast<int64_t>(np_round(t[i])));
    } else if (spacing_ == TimestepSpacing::kLeading) {
      const int64_t step_ratio = last_timestep / (n + 1);
      for (int64_t i = n; i >= 1; --i) timesteps.push_back(i * step_ratio + steps_offset_);
    } else {
      const double step_ratio = static_cast<double>(num_train_timesteps_) / static_cast<double>(n);
      for (double t : np_arange(static_cast<double>(last_timestep), 0, -step_ratio)) {
        timesteps.push_back(static_cast<int64_t>(np_round(t)) - 1);
      }
    }
    const std::vector<float> table = training_sigmas(alphas_cumprod_);
    sigmas_.clear();
    if (use_karras_sigmas_) {
      const std::vector<float> log_sigmas = log_of(table);
      std::vector<double> sigmas = karras_sigmas(table.front(), table.back(), n);
      timesteps.clear();
      for (double sigma : sigmas) {
        timesteps.push_back(static_cast<int64_t>(np_round(sigma_to_t(sigma, log_sigmas))));
        sigmas_.push_back(static_cast<float>(sigma));
      }
      sigmas_.push_back(sigmas_.back());
    } else {
      for (int64_t t : timesteps) sigmas_.push_back(static_cast<float>(np_interp_index(static_cast<double>(t), table)));
      // The final step goes to the smallest training sigma, not to zero.
      sigmas_.push_back(std::sqrt((1.0f - alphas_cumprod_[0]) / alphas_cumprod_[0]));
    }
    timesteps_.assign(timesteps.begin(), timesteps.end());
    model_outputs_ = {};
    lower_order_nums_ = 0;
    next_call_ = 0;
    return base::Status::ok();
  }

  Tensor scale_model_input(const Tensor& sample, size_t) const override { return sample.contiguous(); }

  Tensor step(const Tensor& model_output, size_t call_index, const Tensor& sample, NoiseSource*) override {
    assert(call_index == next_call_ && call_index < timesteps_.size());
    const size_t steps = timesteps_.size();
    // 1. Lower the order at the end: it is more stable for few steps.
    const bool lower_order_final = call_index == steps - 1 && (euler_at_final_ || (lower_order_final_ && steps < 15));
    const bool lower_order_second = call_index == steps - 2 && lower_order_final_ && steps < 15;
    // 2. The data prediction x_0 for this step, kept for the multistep history.
    Tensor x0 = convert_model_output(model_output, sample, sigmas_[call_index]);
    for (size_t i = 0; i + 1 < model_outputs_.size(); ++i) model_outputs_[i] = model_outputs_[i + 1];
    model_outputs_.back() = x0;
    // 3. Update with the highest order the history allows.
    Tensor prev_sample;
    if (solver_order_ == 1 || lower_order_nums_ < 1 || lower_order_final) {
      prev_sample = first_order_update(x0, call_index, sample);
    } else if (solver_order_ == 2 || lower_order_nums_ < 2 || lower_order_second) {
      prev_sample = second_order_update(call_index, sample);
    } else {
      prev_sample = third_order_update(call_index, sample);
    }
    if (lower_order_nums_ < solver_order_) ++lower_order_nums_;
    ++next_call_;
    return prev_sample;
  }

 private:
  // DPM-Solver++ works on the data prediction x_0 = (x - sigma_t * eps) / alpha_t.
  Tensor convert_model_output(const Tensor& model_output, const Tensor& sample, float sigma) const {
    const Level s = level_at(sigma);
    const float* m = f32_data(model_output);
    const float* x = f32_data(sample);
    switch (prediction_) {
      case Prediction::kEpsilon:
        return elementwise(sample, [&](int64_t i) { return (x[i] - s.sigma * m[i]) / s.alpha; });
      case Prediction::kVPrediction:
        return elementwise(sample, [&](int64_t i) { return s.alpha * x[i] - s.sigma * m[i]; });
      case Prediction::kSample:
        break;
    }
    return model_output.contiguous();
  }

  // DPM-Solver++(1), i.e. DDIM: equation (5) of the DPM-Solver++ paper.
  Tensor first_order_update(const Tensor& x0, size_t i, const Tensor& sample) const {
    const Level t = level_at(sigmas_[i + 1]), s = level_at(sigmas_[i]);
    const float h = t.lambda - s.lambda;
    const float sample_coeff = t.sigma / s.sigma;
    const float x0_coeff = t.alpha * (std::exp(-h) - 1.0f);
    const float* x = f32_data(sample);
    const float* d0 = f32_data(x0);
    return elementwise(sample, [&](int64_t k) { return sample_coeff * x[k] - x0_coeff * d0[k]; });
  }

  // DPM-Solver++(2M): Algorithm 2 of the paper, with the first-order difference D1.
  Tensor second_order_update(size_t i, const Tensor& sample) const {
    const Level t = level_at(sigmas_[i + 1]), s0 = level_at(sigmas_[i]), s1 = level_at(sigmas_[i - 1]);
    const float h = t.lambda - s0.lambda, h_0 = s0.lambda - s1.lambda;
    const float r0 = h_0 / h;
    const float inv_r0 = 1.0f / r0;
    const float* m0 = f32_data(model_outputs_[2]);
    const float* m1 = f32_data(model_outputs_[1]);
    const float* x = f32_data(sample);
    const float sample_coeff = t.sigma / s0.sigma;
    const float exp_m1 = std::exp(-h) - 1.0f;
    const float d0_coeff = t.alpha * exp_m1;
    if (!heun_) {
      const float d1_coeff = 0.5f * (t.alpha * exp_m1);
      return elementwise(sample, [&](int64_t k) {
        const float d1 = inv_r0 * (m0[k] - m1[k]);
        return sample_coeff * x[k] - d0_coeff * m0[k] - d1_coeff * d1;
      });
    }
    const float d1_coeff = t.alpha * (exp_m1 / h + 1.0f);
    return elementwise(sample, [&](int64_t k) {
      const float d1 = inv_r0 * (m0[k] - m1[k]);
      return sample_coeff * x[k] - d0_coeff * m0[k] + d1_coeff * d1;
    });
  }

  // DPM-Solver++(3M), with first- and second-order differences.
  Tensor third_order_update(size_t i, const Tensor& sample) const {
    const Level t = level_at(sigmas_[i + 1]), s0 = level_at(sigmas_[i]);
    const Level s1 = level_at(sigmas_[i - 1]), s2 = level_at(sigmas_[i - 2]);
    const float h = t.lambda - s0.lambda, h_0 = s0.lambda - s1.lambda, h_1 = s1.lambda - s2.lambda;
    const float r0 = h_0 / h, r1 = h_1 / h;
    const float inv_r0 = 1.0f / r0, inv_r1 = 1.0f / r1;
    const float d1_mix = r0 / (r0 + r1), inv_r01 = 1.0f / (r0 + r1);
    const float* m0 = f32_data(model_outputs_[2]);
    const float* m1 = f32_data(model_outputs_[1]);
    const float* m2 = f32_data(model_outputs_[0]);
    const float* x = f32_data(sample);
    const float sample_coeff = t.sigma / s0.sigma;
    const float exp_m1 = std::exp(-h) - 1.0f;
    const float d0_coeff = t.alpha * exp_m1;
    const float d1_coeff = t.alpha * (exp_m1 / h + 1.0f);
    const float d2_coeff = t.alpha * ((exp_m1 + h) / (h * h) - 0.5f);
    return elementwise(sample, [&](int64_t k) {
      const float d1_0 = inv_r0 * (m0[k] - m1[k]), d1_1 = inv_r1 * (m1[k] - m2[k]);
      const float d1 = d1_0 + d1_mix * (d1_0 - d1_1);
      const float d2 = inv_r01 * (d1_0 - d1_1);
      return sample_coeff * x[k] - d0_coeff * m0[k] + d1_coeff * d1 - d2_coeff * d2;
    });
  }

  std::vector<float> alphas_cumprod_;
  int64_t num_train_timesteps_ = 0;
  int64_t solver_order_ = 2;
  Prediction prediction_ = Prediction::kEpsilon;
  bool heun_ = false;
  bool lower_order_final_ = true;
  bool euler_at_final_ = false;
  bool use_karras_sigmas_ = false;
  double lambda_min_clipped_ = -std::numeric_limits<double>::infinity();
  TimestepSpacing spacing_ = TimestepSpacing::kLinspace;
  int64_t steps_offset_ = 0;

  std::array<Tensor, 3> model_outputs_;  // the last three x_0 predictions, newest last
  int64_t lower_order_nums_ = 0;
  size_t next_call_ = 0;
};

}  // namespace

base::Result<std::unique_ptr<Scheduler>> make_dpm_solver_multistep(ConfigResolver& config) {
  return DPMSolverMultistepScheduler::create(config);
}

}  // namespace sdstack::schedulers
