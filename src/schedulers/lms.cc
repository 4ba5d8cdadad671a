// LMSDiscreteScheduler: k-diffusion's sample_lms — a linear multistep method of order up to 4 on
// the derivatives d = (x - x_0) / sigma, with coefficients integrated over each sigma interval.
#include <algorithm>
#include <cassert>
#include <cmath>
#include <deque>

#include "schedulers/registry.h"

namespace sdstack::schedulers {
namespace {

using tensor::Tensor;

constexpr int kOrder = 4;  // the pipeline's (diffusers' default) order

class LMSDiscreteScheduler : public Scheduler {
 public:
  static base::Result<std::unique_ptr<Scheduler>> create(ConfigResolver& config) {
    auto s = std::make_unique<LMSDiscreteScheduler>();
    SD_ASSIGN_OR_RETURN(s->alphas_cumprod_, read_alphas_cumprod(config, /*has_rescale_option=*/false));
    s->num_train_timesteps_ = static_cast<int64_t>(s->alphas_cumprod_.size());
    SD_ASSIGN_OR_RETURN(s->use_karras_sigmas_, config.boolean("use_karras_sigmas", false));
    SD_ASSIGN_OR_RETURN(s->prediction_, read_prediction(config));
    SD_ASSIGN_OR_RETURN(s->spacing_, read_spacing(config, "linspace"));
    SD_ASSIGN_OR_RETURN(s->steps_offset_, config.integer("steps_offset", 0));
    s->config_ = config.resolved();
    return std::unique_ptr<Scheduler>(std::move(s));
  }

  std::string class_name() const override { return "LMSDiscreteScheduler"; }

  base::Status set_timesteps(int num_inference_steps) override {
    SD_RETURN_IF_ERROR(check_step_count(class_name(), num_inference_steps, num_train_timesteps_));
    // The sigmas interpolate at the f32-rounded timesteps (diffusers' golden sigmas show it: at
    // float64 timesteps some would differ by an ulp).
    std::vector<double> timesteps;
    for (double t : sigma_timesteps(spacing_, num_inference_steps, num_train_timesteps_, steps_offset_)) {
      timesteps.push_back(static_cast<float>(t));
    }
    const std::vector<float> table = training_sigmas(alphas_cumprod_);
    std::vector<double> sigmas;
    for (double t : timesteps) sigmas.push_back(np_interp_index(t, table));
    if (use_karras_sigmas_) {
      const std::vector<float> log_sigmas = log_of(table);
      sigmas = karras_sigmas(sigmas.back(), sigmas.front(), num_inference_steps);
      timesteps.clear();
      for (double sigma : sigmas) timesteps.push_back(sigma_to_t(sigma, log_sigmas));
    }
    sigmas_.assign(sigmas.begin(), sigmas.end());
    sigmas_.push_back(0.0f);
    timesteps_.assign(timesteps.begin(), timesteps.end());
    derivatives_.clear();
    next_call_ = 0;
    return base::Status::ok();
  }

  float init_noise_sigma() const override { return sigma_init_noise(sigmas_, spacing_); }

  Tensor scale_model_input(const Tensor& sample, size_t call_index) const override {
    assert(call_index < timesteps_.size());
    return scale_by_sigma(sample, sigmas_[call_index]);
  }

  Tensor step(const Tensor& model_output, size_t call_index, const Tensor& sample, NoiseSource*) override {
    assert(call_index == next_call_ && call_index < timesteps_.size());
    const float sigma = sigmas_[call_index];
    // 1. The predicted original sample x_0 from the sigma-scaled predicted noise.
    const Tensor pred_original_sample = sigma_pred_original_sample(prediction_, model_output, sample, sigma);
    // 2. Convert to an ODE derivative and keep the last `kOrder` of them.
    const float* x = f32_data(sample);
    const float* x0 = f32_data(pred_original_sample);
    derivatives_.push_back(elementwise(sample, [&](int64_t i) { return (x[i] - x0[i]) / sigma; }));
    if (derivatives_.size() > kOrder) derivatives_.pop_front();
    // 3. The linear multistep coefficients, lower order while the history is short.
    const int order = std::min(static_cast<int>(call_index) + 1, kOrder);
    std::vector<float> coeffs;
    for (int k = 0; k < order; ++k) coeffs.push_back(static_cast<float>(lms_coefficient(order, call_index, k)));
    // 4. x_(i+1) = x_i + sum_k coeff_k * d_(i-k), newest derivative first (as Python's sum adds).
    std::vector<const float*> newest_first;
    for (auto it = derivatives_.rbegin(); it != derivatives_.rend(); ++it) newest_first.push_back(f32_data(*it));
    Tensor prev_sample = elementwise(sample, [&](int64_t i) {
      float sum = coeffs[0] * newest_first[0][i];
      for (size_t k = 1; k < coeffs.size(); ++k) sum = sum + coeffs[k] * newest_first[k][i];
      return x[i] + sum;
    });
    ++next_call_;
    return prev_sample;
  }

 private:
  // The integral over [sigma_t, sigma_(t+1)] of the Lagrange basis polynomial for derivative
  // `current` (of the last `order` sigmas). diffusers integrates with scipy's quad; the integrand
  // is a polynomial of degree < 4, which 4-point Gauss-Legendre integrates exactly.
  double lms_coefficient(int order, size_t t, int current) const {
    auto basis = [&](double tau) {
      double product = 1.0;
      for (int k = 0; k < order; ++k) {
        if (k == current) continue;
        const double sigma_k = sigmas_[t - static_cast<size_t>(k)];
        const double sigma_current = sigmas_[t - static_cast<size_t>(current)];
        product *= (tau - sigma_k) / (sigma_current - sigma_k);
      }
      return product;
    };
    static constexpr double kNodes[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563,
                                         0.8611363115940526};
    static constexpr double kWeights[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461,
                                           0.3478548451374538};
    const double a = sigmas_[t], b = sigmas_[t + 1];
    const double half = (b - a) / 2, mid = (a + b) / 2;
    double integral = 0.0;
    for (int i = 0; i < 4; ++i) integral += kWeights[i] * basis(mid + half * kNodes[i]);
    return integral * half;
  }

  std::vector<float> alphas_cumprod_;
  int64_t num_train_timesteps_ = 0;
  bool use_karras_sigmas_ = false;
  Prediction prediction_ = Prediction::kEpsilon;
  TimestepSpacing spacing_ = TimestepSpacing::kLinspace;
  int64_t steps_offset_ = 0;

  std::deque<Tensor> derivatives_;  // oldest first
  size_t next_call_ = 0;
};

}  // namespace

base::Result<std::unique_ptr<Scheduler>> make_lms(ConfigResolver& config) {
  return LMSDiscreteScheduler::create(config);
}

}  // namespace sdstack::schedulers
