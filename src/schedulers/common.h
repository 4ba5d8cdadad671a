// What the schedulers share: from_config-style config reading, the training noise schedule,
// numpy's timestep spacings, sigma tables (interp, Karras) and the elementwise loop.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "models/config_reader.h"
#include "tensor/tensor.h"

// torch runs each op of a scheduler's formula as its own f32 kernel, rounding after every multiply
// and add. A fused multiply-add (what g++ contracts a * b + c into with -march=native) rounds once,
// which moves results by an ulp. Without fusion the scheduler files reproduce diffusers' PNDM,
// DDIM and Euler latents bit for bit. (Applies to the code after this line in each file that
// includes this header: the schedulers' .cc files.)
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace sdstack::schedulers {

// Reads one scheduler's settings as diffusers' from_config does: a key the file has wins, a key
// it lacks (or sets to null) takes the scheduler's default. Every value read is recorded, so
// resolved() is the scheduler's `config`. Keys the scheduler doesn't know are ignored, as in diffusers.
class ConfigResolver {
 public:
  ConfigResolver(nlohmann::json file, std::string source) : file_(std::move(file)), reader_(file_, std::move(source)) {}
  ConfigResolver(const ConfigResolver&) = delete;
  ConfigResolver& operator=(const ConfigResolver&) = delete;

  base::Result<int64_t> integer(const std::string& key, int64_t fallback);
  base::Result<double> number(const std::string& key, double fallback);
  base::Result<bool> boolean(const std::string& key, bool fallback);
  // A string that must be one of `allowed`.
  base::Result<std::string> choice(const std::string& key, const std::string& fallback,
                                   const std::vector<std::string>& allowed);
  // A number that may also be the string "inf" or "-inf" (JSON has no infinities); an infinite
  // value is recorded as that string.
  base::Result<double> number_or_infinity(const std::string& key, double fallback);
  // A number whose default is None.
  base::Result<std::optional<double>> optional_number(const std::string& key);
  // A string whose default is None.
  base::Result<std::optional<std::string>> optional_string(const std::string& key);
  // A list of numbers whose default is None (trained_betas).
  base::Result<std::optional<std::vector<double>>> optional_numbers(const std::string& key);

  base::Status error(const std::string& key, const std::string& problem) const { return reader_.error(key, problem); }
  const nlohmann::json& resolved() const { return resolved_; }

 private:
  nlohmann::json file_;
  models::ConfigReader reader_;
  nlohmann::json resolved_ = nlohmann::json::object();
};

// The training schedule: alphas_cumprod[t] for t in [0, num_train_timesteps), in f32 as torch
// computes it. Reads num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas
// (defaults 1000, 0.0001, 0.02, "linear", None, the same in every scheduler) and, where
// `has_rescale_option`, rescale_betas_zero_snr.
base::Result<std::vector<float>> read_alphas_cumprod(ConfigResolver& config, bool has_rescale_option);

// read_alphas_cumprod for the sigma-based (Euler) schedulers: with rescale_betas_zero_snr the last
// alpha is nudged to 2^-24 as diffusers does, since zero terminal SNR would give an infinite sigma.
base::Result<std::vector<float>> read_sigma_alphas_cumprod(ConfigResolver& config);

// The same from explicit values (beta_schedule: linear, scaled_linear or squaredcos_cap_v2).
std::vector<float> make_alphas_cumprod(int64_t num_train_timesteps, double beta_start, double beta_end,
                                       const std::string& beta_schedule, bool rescale_betas_zero_snr);

enum class TimestepSpacing { kLeading, kTrailing, kLinspace };
// Reads `timestep_spacing` ("leading", "trailing", "linspace") with the scheduler's default.
base::Result<TimestepSpacing> read_spacing(ConfigResolver& config, const std::string& fallback);

enum class Prediction { kEpsilon, kVPrediction, kSample };
// Reads `prediction_type` ("epsilon", "v_prediction", "sample").
base::Result<Prediction> read_prediction(ConfigResolver& config);

// An error unless 1 <= num_inference_steps <= num_train_timesteps (what every scheduler needs).
base::Status check_step_count(const std::string& class_name, int num_inference_steps, int64_t num_train_timesteps);

// torch.linspace(start, end, steps, dtype=float32), element for element.
std::vector<float> torch_linspace_f32(double start, double end, int64_t steps);

// numpy's arange(start, stop, step) over doubles, element for element (length and values).
std::vector<double> np_arange(double start, double stop, double step);
// numpy's linspace(start, stop, num) with endpoint, in doubles.
std::vector<double> np_linspace(double start, double stop, int64_t num);
// numpy's interp(x, arange(len(table)), table).
double np_interp_index(double x, const std::vector<float>& table);
// numpy's round: half to even.
double np_round(double x);

// sqrt((1 - alphas_cumprod) / alphas_cumprod) per training timestep, in f32 as torch computes it.
std::vector<float> training_sigmas(const std::vector<float>& alphas_cumprod);
// Karras et al. (2022) sigmas: rho-7 ramp from sigma_max down to sigma_min in `num` steps.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t num);
// The fractional training timestep whose log-sigma `sigma` has (diffusers' _sigma_to_t).
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);
// log of each training sigma, in f32 (numpy's log of an f32 array).
std::vector<float> log_of(const std::vector<float>& sigmas);

// What the sigma-based schedulers (Euler, Euler ancestral, LMS) share.
// Their descending timesteps for a spacing, in doubles (before each casts them).
std::vector<double> sigma_timesteps(TimestepSpacing spacing, int64_t num_inference_steps, int64_t num_train_timesteps,
                                    int64_t steps_offset);
// The initial noise's sigma: the largest sigma, or sqrt(max^2 + 1) with leading spacing.
float sigma_init_noise(const std::vector<float>& sigmas, TimestepSpacing spacing);
// sample / sqrt(sigma^2 + 1): the UNet sees unit-variance input.
tensor::Tensor scale_by_sigma(const tensor::Tensor& sample, float sigma);
// The predicted original sample x_0 at noise level `sigma` (k-diffusion's "denoised").
tensor::Tensor sigma_pred_original_sample(Prediction prediction, const tensor::Tensor& model_output,
                                          const tensor::Tensor& sample, float sigma);

// A new tensor shaped like `like` with element i = value(i). The schedulers' math is all of this
// form; `value` reads contiguous f32 inputs by index.
template <typename F>
tensor::Tensor elementwise(const tensor::Tensor& like, F value) {
  tensor::Tensor out = tensor::Tensor::empty(like.shape());
  float* dst = out.data<float>();
  const int64_t n = out.numel();
  for (int64_t i = 0; i < n; ++i) dst[i] = value(i);
  return out;
}

// The f32 data of a contiguous tensor (asserts; latents are always contiguous f32).
const float* f32_data(const tensor::Tensor& t);

}  // namespace sdstack::schedulers
