// PNDMScheduler (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models"): Runge-Kutta
// warm-up then linear multistep; with skip_prk_steps, crowsonkb's PLMS as Stable Diffusion uses it.
#include <algorithm>
#include <cassert>
#include <cmath>
#include <optional>

#include "schedulers/registry.h"

namespace sdstack::schedulers {
namespace {

using tensor::Tensor;

class PNDMScheduler : public Scheduler {
 public:
  static base::Result<std::unique_ptr<Scheduler>> create(ConfigResolver& config) {
    auto s = std::make_unique<PNDMScheduler>();
    SD_ASSIGN_OR_RETURN(s->alphas_cumprod_, read_alphas_cumprod(config, /*has_rescale_option=*/false));
    s->num_train_timesteps_ = static_cast<int64_t>(s->alphas_cumprod_.size());
    SD_ASSIGN_OR_RETURN(s->skip_prk_steps_, config.boolean("skip_prk_steps", false));
    // The last step has no previous alpha: 1, or alphas_cumprod[0] as Stable Diffusion sets it.
    SD_ASSIGN_OR_RETURN(bool set_alpha_to_one, config.boolean("set_alpha_to_one", false));
    s->final_alpha_cumprod_ = set_alpha_to_one ? 1.0f : s->alphas_cumprod_[0];
    SD_ASSIGN_OR_RETURN(s->prediction_, read_prediction(config));
    if (s->prediction_ == Prediction::kSample) {
      return config.error("prediction_type", "is 'sample'; PNDMScheduler supports epsilon and v_prediction");
    }
    SD_ASSIGN_OR_RETURN(s->spacing_, read_spacing(config, "leading"));
    SD_ASSIGN_OR_RETURN(s->steps_offset_, config.integer("steps_offset", 0));
    s->config_ = config.resolved();
    return std::unique_ptr<Scheduler>(std::move(s));
  }

  std::string class_name() const override { return "PNDMScheduler"; }

  base::Status set_timesteps(int num_inference_steps) override {
    SD_RETURN_IF_ERROR(check_step_count(class_name(), num_inference_steps, num_train_timesteps_));
    if (!skip_prk_steps_ && num_inference_steps < kOrder) {
      return base::invalid_argument(
          "PNDMScheduler: the Runge-Kutta warm-up (skip_prk_steps false) needs at least 4 "
          "inference steps; " +
          std::to_string(num_inference_steps) + " asked for");
    }
    num_inference_steps_ = num_inference_steps;
    const int64_t n = num_inference_steps, train = num_train_timesteps_;
    // The inference timesteps in ascending order.
    std::vector<int64_t> ascending;
    if (spacing_ == TimestepSpacing::kLinspace) {
      for (double t : np_linspace(0, static_cast<double>(train - 1), n))
        ascending.push_back(static_cast<int64_t>(np_round(t)));
    } else if (spacing_ == TimestepSpacing::kLeading) {
      const int64_t step_ratio = train / n;
      for (int64_t i = 0; i < n; ++i) ascending.push_back(i * step_ratio + steps_offset_);
    } else {
      std::vector<double> t =
          np_arange(static_cast<double>(train), 0, -static_cast<double>(train) / static_cast<double>(n));
      for (auto it = t.rbegin(); it != t.rend(); ++it) ascending.push_back(static_cast<int64_t>(np_round(*it)) - 1);
    }

    prk_timesteps_.clear();
    std::vector<int64_t> plms;
    const size_t count = ascending.size();
    if (skip_prk_steps_) {
      // PLMS starts by repeating the second timestep (its first step is a two-evaluation Heun-like one).
      plms.assign(ascending.begin(), ascending.end() - 1);
      if (count >= 2) plms.push_back(ascending[count - 2]);
      plms.push_back(ascending.back());
      std::reverse(plms.begin(), plms.end());
    } else {
      // Four RK4 steps over the last (largest) four timesteps, each with half-step midpoints.
      const int64_t half = train / n / 2;
      std::vector<int64_t> base;  // [a, a+h, b, b+h, c, c+h, d]
      for (size_t i = count - kOrder; i < count; ++i) {
        base.push_back(ascending[i]);
        base.push_back(ascending[i] + half);
      }
      base.pop_back();
      std::vector<int64_t> doubled;
      for (int64_t t : base) doubled.insert(doubled.end(), {t, t});
      prk_timesteps_.assign(doubled.begin() + 1, doubled.end() - 1);
      std::reverse(prk_timesteps_.begin(), prk_timesteps_.end());
      plms.assign(ascending.begin(), ascending.end() - 3);
      std::reverse(plms.begin(), plms.end());
    }
    int_timesteps_ = prk_timesteps_;
    int_timesteps_.insert(int_timesteps_.end(), plms.begin(), plms.end());
    timesteps_.assign(int_timesteps_.begin(), int_timesteps_.end());

    ets_.clear();
    counter_ = 0;
    cur_model_output_.reset();
    cur_sample_.reset();
    return base::Status::ok();
  }

  Tensor scale_model_input(const Tensor& sample, size_t) const override { return sample.contiguous(); }

  Tensor step(const Tensor& model_output, size_t call_index, const Tensor& sample, NoiseSource*) override {
    assert(num_inference_steps_ > 0 && call_index == counter_ && call_index < int_timesteps_.size());
    const int64_t timestep = int_timesteps_[call_index];
    if (counter_ < prk_timesteps_.size() && !skip_prk_steps_) return step_prk(model_output, timestep, sample);
    return step_plms(model_output, timestep, sample);
  }

 private:
  static constexpr int kOrder = 4;

  // One of the four evaluations of an RK4 step; the sample moves from the step's start each time.
  Tensor step_prk(const Tensor& model_output, int64_t timestep, const Tensor& sample) {
    // 1. Midpoint evaluations (odd counters) go half a step; the others a full step.
    const int64_t diff_to_prev = counter_ % 2 ? 0 : num_train_timesteps_ / num_inference_steps_ / 2;
    const int64_t prev_timestep = timestep - diff_to_prev;
    const int64_t start_timestep = prk_timesteps_[counter_ / 4 * 4];
    // 2. Accumulate the RK4 weights 1/6, 1/3, 1/3, 1/6 of the model outputs.
    const float* m = f32_data(model_output);
    Tensor eps = model_output;
    switch (counter_ % 4) {
      case 0:
        cur_model_output_ = elementwise(model_output, [&](int64_t i) { return static_cast<float>(1.0 / 6) * m[i]; });
        ets_.push_back(model_output);
        cur_sample_ = sample;
        break;
      case 1:
      case 2: {
        const float* acc = f32_data(*cur_model_output_);
        cur_model_output_ =
            elementwise(model_output, [&](int64_t i) { return acc[i] + static_cast<float>(1.0 / 3) * m[i]; });
        break;
      }
      default: {
        const float* acc = f32_data(*cur_model_output_);
        eps = elementwise(model_output, [&](int64_t i) { return acc[i] + static_cast<float>(1.0 / 6) * m[i]; });
        cur_model_output_.reset();
        break;
      }
    }
    // 3. Move from the step's starting sample.
    Tensor prev_sample = prev_sample_from(cur_sample_ ? *cur_sample_ : sample, start_timestep, prev_timestep, eps);
    ++counter_;
    return prev_sample;
  }

  // One linear multistep (Adams-Bashforth) step on the stored model outputs.
  Tensor step_plms(const Tensor& model_output, int64_t timestep, const Tensor& sample) {
    // 1. The target timestep; the second call redoes the first step (see set_timesteps).
    const int64_t step_size = num_train_timesteps_ / num_inference_steps_;
    int64_t prev_timestep = timestep - step_size;
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(model_output);
    } else {
      prev_timestep = timestep;
      timestep = timestep + step_size;
    }
    // 2. Combine the model outputs: Euler, then Heun's average, then AB2, AB3, AB4.
    Tensor eps = model_output;
    Tensor x = sample;
    const size_t n = ets_.size();
    auto e = [&](size_t back) { return f32_data(ets_[n - back]); };
    if (n == 1 && counter_ == 0) {
      cur_sample_ = sample;
    } else if (n == 1 && counter_ == 1) {
      const float* m = f32_data(model_output);
      const float* e1 = e(1);
      eps = elementwise(model_output, [&](int64_t i) { return (m[i] + e1[i]) / 2.0f; });
      x = *cur_sample_;
      cur_sample_.reset();
    } else if (n == 2) {
      const float *e1 = e(1), *e2 = e(2);
      eps = elementwise(model_output, [&](int64_t i) { return (3.0f * e1[i] - e2[i]) / 2.0f; });
    } else if (n == 3) {
      const float *e1 = e(1), *e2 = e(2), *e3 = e(3);
      eps =
          elementwise(model_output, [&](int64_t i) { return (23.0f * e1[i] - 16.0f * e2[i] + 5.0f * e3[i]) / 12.0f; });
    } else {
      const float *e1 = e(1), *e2 = e(2), *e3 = e(3), *e4 = e(4);
      const float one_24th = static_cast<float>(1.0 / 24);
      eps = elementwise(model_output, [&](int64_t i) {
        return one_24th * (55.0f * e1[i] - 59.0f * e2[i] + 37.0f * e3[i] - 9.0f * e4[i]);
      });
    }
    // 3. Move the sample.
    Tensor prev_sample = prev_sample_from(x, timestep, prev_timestep, eps);
    ++counter_;
    return prev_sample;
  }

  // Formula (9) of the PNDM paper: x_(t-δ) from x_t and the noise estimate.
  Tensor prev_sample_from(const Tensor& sample, int64_t timestep, int64_t prev_timestep,
                          const Tensor& model_output) const {
    const float alpha_prod_t = alphas_cumprod_[static_cast<size_t>(timestep)];
    const float alpha_prod_t_prev =
        prev_timestep >= 0 ? alphas_cumprod_[static_cast<size_t>(prev_timestep)] : final_alpha_cumprod_;
    const float beta_prod_t = 1.0f - alpha_prod_t;
    const float beta_prod_t_prev = 1.0f - alpha_prod_t_prev;
    const float* x = f32_data(sample);
    const float* m = f32_data(model_output);
    Tensor eps = model_output;
    if (prediction_ == Prediction::kVPrediction) {
      const float a = std::sqrt(alpha_prod_t), b = std::sqrt(beta_prod_t);
      eps = elementwise(model_output, [&](int64_t i) { return a * m[i] + b * x[i]; });
      m = f32_data(eps);
    }
    // (α_(t−δ) − α_t) over the denominator of x_t in formula (9), plus 1.
    const float sample_coeff = std::sqrt(alpha_prod_t_prev / alpha_prod_t);
    // The denominator of e_θ(x_t, t) in formula (9).
    const float model_output_denom_coeff =
        alpha_prod_t * std::sqrt(beta_prod_t_prev) + std::sqrt(alpha_prod_t * beta_prod_t * alpha_prod_t_prev);
    const float alpha_diff = alpha_prod_t_prev - alpha_prod_t;
    return elementwise(sample,
                       [&](int64_t i) { return sample_coeff * x[i] - alpha_diff * m[i] / model_output_denom_coeff; });
  }

  std::vector<float> alphas_cumprod_;
  int64_t num_train_timesteps_ = 0;
  float final_alpha_cumprod_ = 1.0f;
  bool skip_prk_steps_ = false;
  Prediction prediction_ = Prediction::kEpsilon;
  TimestepSpacing spacing_ = TimestepSpacing::kLeading;
  int64_t steps_offset_ = 0;

  int64_t num_inference_steps_ = 0;
  std::vector<int64_t> prk_timesteps_;
  std::vector<int64_t> int_timesteps_;
  size_t counter_ = 0;
  std::vector<Tensor> ets_;  // the last four model outputs of the PLMS/RK starts
  std::optional<Tensor> cur_model_output_;
  std::optional<Tensor> cur_sample_;
};

}  // namespace

base::Result<std::unique_ptr<Scheduler>> make_pndm(ConfigResolver& config) { return PNDMScheduler::create(config); }

}  // namespace sdstack::schedulers
