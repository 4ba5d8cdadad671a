// What the schedulers share: config reading, the training schedule, spacings, sigma tables.
#include "schedulers/common.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>

#include "base/strings.h"

namespace sdstack::schedulers {

using base::Result;
using base::Status;

Result<int64_t> ConfigResolver::integer(const std::string& key, int64_t fallback) {
  SD_ASSIGN_OR_RETURN(int64_t value, reader_.integer(key, fallback));
  resolved_[key] = value;
  return value;
}

Result<double> ConfigResolver::number(const std::string& key, double fallback) {
  SD_ASSIGN_OR_RETURN(double value, reader_.number(key, fallback));
  resolved_[key] = value;
  return value;
}

Result<bool> ConfigResolver::boolean(const std::string& key, bool fallback) {
  SD_ASSIGN_OR_RETURN(bool value, reader_.boolean(key, fallback));
  resolved_[key] = value;
  return value;
}

Result<std::string> ConfigResolver::choice(const std::string& key, const std::string& fallback,
                                           const std::vector<std::string>& allowed) {
  SD_ASSIGN_OR_RETURN(std::string value, reader_.string(key, fallback));
  if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
    return reader_.error(key, "is '" + value + "'" + base::did_you_mean(value, allowed) + "; sdstack supports " +
                                  base::join(allowed, ", "));
  }
  resolved_[key] = value;
  return value;
}

Result<double> ConfigResolver::number_or_infinity(const std::string& key, double fallback) {
  double value = fallback;
  if (reader_.has(key) && file_[key].is_string()) {
    const std::string text = file_[key].get<std::string>();
    if (text == "inf" || text == "Infinity") {
      value = std::numeric_limits<double>::infinity();
    } else if (text == "-inf" || text == "-Infinity") {
      value = -std::numeric_limits<double>::infinity();
    } else {
      return reader_.error(key, "is \"" + text + "\", expected a number, \"inf\" or \"-inf\"");
    }
  } else {
    SD_ASSIGN_OR_RETURN(value, reader_.number(key, fallback));
  }
  if (std::isinf(value)) {
    resolved_[key] = value > 0 ? "inf" : "-inf";
  } else {
    resolved_[key] = value;
  }
  return value;
}

Result<std::optional<double>> ConfigResolver::optional_number(const std::string& key) {
  if (!reader_.has(key)) {
    resolved_[key] = nullptr;
    return std::optional<double>();
  }
  SD_ASSIGN_OR_RETURN(double value, reader_.number(key));
  resolved_[key] = value;
  return std::optional<double>(value);
}

Result<std::optional<std::string>> ConfigResolver::optional_string(const std::string& key) {
  if (!reader_.has(key)) {
    resolved_[key] = nullptr;
    return std::optional<std::string>();
  }
  SD_ASSIGN_OR_RETURN(std::string value, reader_.string(key));
  resolved_[key] = value;
  return std::optional<std::string>(value);
}

Result<std::optional<std::vector<double>>> ConfigResolver::optional_numbers(const std::string& key) {
  resolved_[key] = nullptr;
  if (!reader_.has(key)) return std::optional<std::vector<double>>();
  const nlohmann::json& value = file_[key];
  std::vector<double> out;
  if (!value.is_array()) return reader_.error(key, "is " + value.dump() + ", expected a list of numbers");
  for (const nlohmann::json& item : value) {
    if (!item.is_number()) return reader_.error(key, "is " + value.dump() + ", expected a list of numbers");
    out.push_back(item.get<double>());
  }
  resolved_[key] = out;
  return std::optional<std::vector<double>>(std::move(out));
}

namespace {

// The Glide cosine schedule (diffusers' betas_for_alpha_bar), in doubles, then f32.
std::vector<float> cosine_betas(int64_t num_train_timesteps) {
  auto alpha_bar = [](double t) {
    double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
  };
  std::vector<float> betas;
  for (int64_t i = 0; i < num_train_timesteps; ++i) {
    double t1 = static_cast<double>(i) / static_cast<double>(num_train_timesteps);
    double t2 = static_cast<double>(i + 1) / static_cast<double>(num_train_timesteps);
    betas.push_back(static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999)));
  }
  return betas;
}

// torch.cumprod of f32 values: the running product is kept in double (torch's CPU accumulate type).
std::vector<float> cumprod(const std::vector<float>& values) {
  std::vector<float> out(values.size());
  double running = 1.0;
  for (size_t i = 0; i < values.size(); ++i) {
    running *= values[i];
    out[i] = static_cast<float>(running);
  }
  return out;
}

std::vector<float> one_minus(const std::vector<float>& values) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = 1.0f - values[i];
  return out;
}

// diffusers' rescale_zero_terminal_snr (Lin et al. 2023, Algorithm 1): shifts and scales
// sqrt(alphas_cumprod) so the last timestep has zero SNR, and returns the betas for that.
std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas) {
  std::vector<float> alphas_bar_sqrt = cumprod(one_minus(betas));
  for (float& a : alphas_bar_sqrt) a = std::sqrt(a);
  const float first = alphas_bar_sqrt.front(), last = alphas_bar_sqrt.back();
  const float scale = first / (first - last);
  std::vector<float> alphas_bar(alphas_bar_sqrt.size());
  for (size_t i = 0; i < alphas_bar.size(); ++i) {
    float shifted = (alphas_bar_sqrt[i] - last) * scale;
    alphas_bar[i] = shifted * shifted;
  }
  std::vector<float> alphas(alphas_bar.size());
  alphas[0] = alphas_bar[0];
  for (size_t i = 1; i < alphas.size(); ++i) alphas[i] = alphas_bar[i] / alphas_bar[i - 1];
  return one_minus(alphas);
}

}  // namespace

// torch.linspace(start, end, steps, dtype=float32) as torch 1.13's x86 (AVX2) build computes it:
// the first half counted up from `start`, the second half down from `end` (so both ends are
// exact), in pairs of 8-wide vectors whose first element is fused-multiply-added and whose others
// add k * step to it, then the remainder one by one (fused). This matches diffusers' betas bit for
// bit; the plain formula differs by an ulp here and there.
std::vector<float> torch_linspace_f32(double start, double end, int64_t steps) {
  std::vector<float> out(static_cast<size_t>(steps));
  if (steps == 1) {
    out[0] = static_cast<float>(start);
    return out;
  }
  const float start_f = static_cast<float>(start), end_f = static_cast<float>(end);
  const float step = (end_f - start_f) / static_cast<float>(steps - 1);
  const int64_t halfway = steps / 2;
  auto value_at = [&](int64_t i) {
    return i < halfway ? std::fma(step, static_cast<float>(i), start_f)
                       : std::fma(-step, static_cast<float>(steps - i - 1), end_f);
  };
  constexpr int64_t kWidth = 8;
  auto vector_at = [&](int64_t first) {
    const float base = value_at(first);
    for (int64_t k = 0; k < kWidth; ++k) out[static_cast<size_t>(first + k)] = base + static_cast<float>(k) * step;
  };
  int64_t i = 0;
  for (; i + 2 * kWidth <= steps; i += 2 * kWidth) {
    vector_at(i);
    vector_at(i + kWidth);
  }
  for (; i < steps; ++i) out[static_cast<size_t>(i)] = value_at(i);
  return out;
}

std::vector<float> make_alphas_cumprod(int64_t num_train_timesteps, double beta_start, double beta_end,
                                       const std::string& beta_schedule, bool rescale_betas_zero_snr) {
  std::vector<float> betas;
  if (beta_schedule == "linear") {
    betas = torch_linspace_f32(beta_start, beta_end, num_train_timesteps);
  } else if (beta_schedule == "scaled_linear") {
    // Specific to latent diffusion: linear in sqrt(beta).
    betas = torch_linspace_f32(std::sqrt(beta_start), std::sqrt(beta_end), num_train_timesteps);
    for (float& b : betas) b = b * b;
  } else {
    assert(beta_schedule == "squaredcos_cap_v2");
    betas = cosine_betas(num_train_timesteps);
  }
  if (rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  return cumprod(one_minus(betas));
}

Result<std::vector<float>> read_sigma_alphas_cumprod(ConfigResolver& config) {
  SD_ASSIGN_OR_RETURN(std::vector<float> alphas_cumprod, read_alphas_cumprod(config, /*has_rescale_option=*/true));
  SD_ASSIGN_OR_RETURN(bool rescaled, config.boolean("rescale_betas_zero_snr", false));
  if (rescaled) alphas_cumprod.back() = std::ldexp(1.0f, -24);
  return alphas_cumprod;
}

Result<std::vector<float>> read_alphas_cumprod(ConfigResolver& config, bool has_rescale_option) {
  SD_ASSIGN_OR_RETURN(int64_t num_train_timesteps, config.integer("num_train_timesteps", 1000));
  if (num_train_timesteps < 2) return config.error("num_train_timesteps", "must be at least 2");
  SD_ASSIGN_OR_RETURN(double beta_start, config.number("beta_start", 0.0001));
  SD_ASSIGN_OR_RETURN(double beta_end, config.number("beta_end", 0.02));
  SD_ASSIGN_OR_RETURN(std::string beta_schedule,
                      config.choice("beta_schedule", "linear", {"linear", "scaled_linear", "squaredcos_cap_v2"}));
  SD_ASSIGN_OR_RETURN(std::optional<std::vector<double>> trained_betas, config.optional_numbers("trained_betas"));
  bool rescale = false;
  if (has_rescale_option) {
    SD_ASSIGN_OR_RETURN(rescale, config.boolean("rescale_betas_zero_snr", false));
  }
  if (!trained_betas.has_value()) {
    return make_alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule, rescale);
  }
  if (static_cast<int64_t>(trained_betas->size()) != num_train_timesteps) {
    return config.error("trained_betas", "has " + std::to_string(trained_betas->size()) +
                                             " values; num_train_timesteps is " + std::to_string(num_train_timesteps));
  }
  std::vector<float> betas(trained_betas->begin(), trained_betas->end());
  if (rescale) betas = rescale_zero_terminal_snr(betas);
  return cumprod(one_minus(betas));
}

Result<TimestepSpacing> read_spacing(ConfigResolver& config, const std::string& fallback) {
  SD_ASSIGN_OR_RETURN(std::string spacing,
                      config.choice("timestep_spacing", fallback, {"leading", "trailing", "linspace"}));
  if (spacing == "leading") return TimestepSpacing::kLeading;
  if (spacing == "trailing") return TimestepSpacing::kTrailing;
  return TimestepSpacing::kLinspace;
}

Result<Prediction> read_prediction(ConfigResolver& config) {
  SD_ASSIGN_OR_RETURN(std::string prediction,
                      config.choice("prediction_type", "epsilon", {"epsilon", "v_prediction", "sample"}));
  if (prediction == "epsilon") return Prediction::kEpsilon;
  if (prediction == "v_prediction") return Prediction::kVPrediction;
  return Prediction::kSample;
}

Status check_step_count(const std::string& class_name, int num_inference_steps, int64_t num_train_timesteps) {
  if (num_inference_steps >= 1 && num_inference_steps <= num_train_timesteps) return Status::ok();
  return base::invalid_argument(class_name + ": " + std::to_string(num_inference_steps) +
                                " inference steps asked for; expected 1 to " + std::to_string(num_train_timesteps) +
                                " (the model's num_train_timesteps)");
}

std::vector<double> np_arange(double start, double stop, double step) {
  // numpy: length = ceil((stop - start) / step); values start + i * delta, where delta is the
  // second value minus the first as actually stored.
  double length_f = std::ceil((stop - start) / step);
  std::vector<double> out;
  if (!(length_f > 0)) return out;
  const size_t length = static_cast<size_t>(length_f);
  out.push_back(start);
  if (length == 1) return out;
  out.push_back(start + step);
  const double delta = out[1] - start;
  for (size_t i = 2; i < length; ++i) out.push_back(start + static_cast<double>(i) * delta);
  return out;
}

std::vector<double> np_linspace(double start, double stop, int64_t num) {
  std::vector<double> out;
  if (num <= 0) return out;
  if (num == 1) return {start};
  const double step = (stop - start) / static_cast<double>(num - 1);
  for (int64_t i = 0; i < num; ++i) out.push_back(static_cast<double>(i) * step + start);
  out.back() = stop;
  return out;
}

double np_interp_index(double x, const std::vector<float>& table) {
  assert(!table.empty());
  const double last = static_cast<double>(table.size() - 1);
  if (!(x > 0)) return table.front();
  if (x >= last) return table.back();
  const size_t j = static_cast<size_t>(std::floor(x));
  if (x == static_cast<double>(j)) return table[j];
  const double slope = (static_cast<double>(table[j + 1]) - static_cast<double>(table[j])) / 1.0;
  return slope * (x - static_cast<double>(j)) + static_cast<double>(table[j]);
}

double np_round(double x) { return std::nearbyint(x); }

std::vector<float> training_sigmas(const std::vector<float>& alphas_cumprod) {
  std::vector<float> out(alphas_cumprod.size());
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = std::sqrt((1.0f - alphas_cumprod[i]) / alphas_cumprod[i]);
  }
  return out;
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t num) {
  const double rho = 7.0;  // the paper's value
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> out;
  for (double ramp : np_linspace(0, 1, num))
    out.push_back(std::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho));
  return out;
}

std::vector<float> log_of(const std::vector<float>& sigmas) {
  std::vector<float> out(sigmas.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = std::log(sigmas[i]);
  return out;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  assert(log_sigmas.size() >= 2);
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // The last training timestep whose log-sigma is at or below ours (0 when none is).
  size_t low_idx = 0;
  for (size_t i = 0; i < log_sigmas.size(); ++i) {
    if (log_sigma - static_cast<double>(log_sigmas[i]) >= 0) low_idx = i;
  }
  low_idx = std::min(low_idx, log_sigmas.size() - 2);
  const size_t high_idx = low_idx + 1;
  const float low = log_sigmas[low_idx], high = log_sigmas[high_idx];
  double w = (static_cast<double>(low) - log_sigma) / static_cast<double>(low - high);  // low - high in f32, as numpy
  w = std::clamp(w, 0.0, 1.0);
  return (1 - w) * static_cast<double>(low_idx) + w * static_cast<double>(high_idx);
}

std::vector<double> sigma_timesteps(TimestepSpacing spacing, int64_t num_inference_steps, int64_t num_train_timesteps,
                                    int64_t steps_offset) {
  const int64_t n = num_inference_steps, train = num_train_timesteps;
  std::vector<double> out;
  if (spacing == TimestepSpacing::kLinspace) {
    std::vector<double> t = np_linspace(0, static_cast<double>(train - 1), n);
    out.assign(t.rbegin(), t.rend());
  } else if (spacing == TimestepSpacing::kLeading) {
    const int64_t step_ratio = train / n;
    for (int64_t i = n - 1; i >= 0; --i) out.push_back(static_cast<double>(i * step_ratio + steps_offset));
  } else {
    for (double t : np_arange(static_cast<double>(train), 0, -static_cast<double>(train) / static_cast<double>(n))) {
      out.push_back(np_round(t) - 1);
    }
  }
  return out;
}

float sigma_init_noise(const std::vector<float>& sigmas, TimestepSpacing spacing) {
  const float max_sigma = *std::max_element(sigmas.begin(), sigmas.end());
  if (spacing == TimestepSpacing::kLinspace || spacing == TimestepSpacing::kTrailing) return max_sigma;
  return std::sqrt(max_sigma * max_sigma + 1.0f);
}

tensor::Tensor scale_by_sigma(const tensor::Tensor& sample, float sigma) {
  const float* x = f32_data(sample);
  const float scale = std::sqrt(sigma * sigma + 1.0f);
  return elementwise(sample, [&](int64_t i) { return x[i] / scale; });
}

tensor::Tensor sigma_pred_original_sample(Prediction prediction, const tensor::Tensor& model_output,
                                          const tensor::Tensor& sample, float sigma) {
  const float* m = f32_data(model_output);
  const float* x = f32_data(sample);
  switch (prediction) {
    case Prediction::kEpsilon:
      return elementwise(sample, [&](int64_t i) { return x[i] - sigma * m[i]; });
    case Prediction::kVPrediction: {
      // denoised = model_output * c_out + input * c_skip
      const float variance = sigma * sigma + 1.0f;
      const float c_out = -sigma / std::sqrt(variance);
      return elementwise(sample, [&](int64_t i) { return m[i] * c_out + x[i] / variance; });
    }
    case Prediction::kSample:
      break;
  }
  return model_output.contiguous();
}

const float* f32_data(const tensor::Tensor& t) {
  assert(t.dtype() == tensor::DType::kF32 && t.is_contiguous());
  return t.data<float>();
}

}  // namespace sdstack::schedulers
