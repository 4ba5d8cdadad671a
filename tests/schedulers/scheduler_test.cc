// Schedulers without the golden runs: the training schedule, timestep spacings, Karras sigmas,
// PNDM's Runge-Kutta start, v-prediction, and the errors make_scheduler gives.
#include "schedulers/scheduler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "io/npy.h"
#include "schedulers/common.h"
#include "testing/testing.h"

namespace sdstack::schedulers {
namespace {

using tensor::Tensor;

// Stable Diffusion 1.5's scheduler_config.json.
nlohmann::json sd15_config() {
  return nlohmann::json::parse(R"({
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null,
    "clip_sample": false})");
}

std::unique_ptr<Scheduler> make(const std::string& name, nlohmann::json config = sd15_config(),
                                SchedulerOptions options = {}) {
  auto made = make_scheduler(name, config, options);
  EXPECT_TRUE(made.is_ok()) << made.status().message();
  return made.is_ok() ? std::move(made).value() : nullptr;
}

std::string error_of(const std::string& name, const nlohmann::json& config, SchedulerOptions options = {}) {
  auto made = make_scheduler(name, config, options);
  EXPECT_FALSE(made.is_ok());
  return made.is_ok() ? "" : made.status().message();
}

std::vector<float> timesteps_of(const std::string& name, int steps, nlohmann::json config = sd15_config()) {
  auto scheduler = make(name, std::move(config));
  EXPECT_TRUE(scheduler->set_timesteps(steps).is_ok());
  return scheduler->timesteps();
}

nlohmann::json with(nlohmann::json config, const std::string& key, nlohmann::json value) {
  config[key] = std::move(value);
  return config;
}

TEST(TrainingSchedule, AlphasCumprodMatchesTorchBitForBit) {
  if (!testing::have_golden()) GTEST_SKIP() << "no golden data at " << testing::golden_dir();
  auto golden = io::read_npy(testing::golden_dir() + "/alphas_cumprod.npy");
  ASSERT_TRUE(golden.is_ok()) << golden.status().message();
  EXPECT_EQ(make_alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear", false), golden->to_vector());
}

TEST(TrainingSchedule, OtherBetaSchedules) {
  std::vector<float> linear = make_alphas_cumprod(1000, 0.0001, 0.02, "linear", false);
  EXPECT_FLOAT_EQ(linear[0], 1.0f - 0.0001f);
  EXPECT_NEAR(linear[999], 4.035e-5, 1e-7);  // DDPM's well-known final alpha-bar
  std::vector<float> cosine = make_alphas_cumprod(1000, 0.0001, 0.02, "squaredcos_cap_v2", false);
  EXPECT_NEAR(cosine[0], 0.99996, 1e-5);
  EXPECT_LT(cosine[999], 1e-6f);
  // Zero terminal SNR: the last alpha-bar is 0 and the first is unchanged.
  std::vector<float> rescaled = make_alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear", true);
  EXPECT_EQ(rescaled[999], 0.0f);
  EXPECT_NEAR(rescaled[0], 0.99915, 1e-5);
}

TEST(Spacing, NumpyHelpers) {
  EXPECT_EQ(np_arange(1000, 0, -1000.0 / 3).size(), 3u);
  EXPECT_EQ(np_arange(0, 10, 3), (std::vector<double>{0, 3, 6, 9}));
  EXPECT_EQ(np_linspace(0, 999, 4), (std::vector<double>{0, 333, 666, 999}));
  EXPECT_EQ(np_round(2.5), 2.0);
  EXPECT_EQ(np_round(3.5), 4.0);
  EXPECT_EQ(np_interp_index(1.25, {0.0f, 4.0f, 8.0f}), 5.0);
  EXPECT_EQ(np_interp_index(7.0, {0.0f, 4.0f, 8.0f}), 8.0);
}

TEST(Spacing, DDIMLeadingTrailingLinspace) {
  EXPECT_EQ(timesteps_of("ddim", 10), (std::vector<float>{901, 801, 701, 601, 501, 401, 301, 201, 101, 1}));
  EXPECT_EQ(timesteps_of("ddim", 10, with(sd15_config(), "timestep_spacing", "trailing")),
            (std::vector<float>{999, 899, 799, 699, 599, 499, 399, 299, 199, 99}));
  EXPECT_EQ(timesteps_of("ddim", 3, with(sd15_config(), "timestep_spacing", "trailing")),
            (std::vector<float>{999, 666, 332}));
  EXPECT_EQ(timesteps_of("ddim", 10, with(sd15_config(), "timestep_spacing", "linspace")),
            (std::vector<float>{999, 888, 777, 666, 555, 444, 333, 222, 111, 0}));
}

TEST(Spacing, PNDMRepeatsTheSecondTimestep) {
  EXPECT_EQ(timesteps_of("pndm", 4), (std::vector<float>{751, 501, 501, 251, 1}));
  EXPECT_EQ(timesteps_of("pndm", 4, with(sd15_config(), "timestep_spacing", "trailing")),
            (std::vector<float>{999, 749, 749, 499, 249}));
  EXPECT_EQ(timesteps_of("pndm", 1), (std::vector<float>{1}));
}

TEST(Spacing, EulerInitNoiseSigmaDependsOnSpacing) {
  auto linspace = make("euler");
  ASSERT_TRUE(linspace->set_timesteps(4).is_ok());
  EXPECT_EQ(linspace->init_noise_sigma(), linspace->sigmas()[0]);
  auto leading = make("euler", with(sd15_config(), "timestep_spacing", "leading"));
  ASSERT_TRUE(leading->set_timesteps(4).is_ok());
  EXPECT_EQ(leading->timesteps(), (std::vector<float>{751, 501, 251, 1}));
  const float max_sigma = leading->sigmas()[0];
  EXPECT_EQ(leading->init_noise_sigma(), std::sqrt(max_sigma * max_sigma + 1.0f));
  EXPECT_EQ(timesteps_of("euler", 4, with(sd15_config(), "timestep_spacing", "trailing")),
            (std::vector<float>{999, 749, 499, 249}));
}

TEST(Spacing, DPMSolverLeading) {
  EXPECT_EQ(timesteps_of("dpmpp_2m", 8, with(sd15_config(), "timestep_spacing", "leading")),
            (std::vector<float>{889, 778, 667, 556, 445, 334, 223, 112}));
}

// Karras sigmas run from the largest to the smallest training sigma with rho = 7.
void expect_karras(const std::string& name, int steps) {
  SCOPED_TRACE(name);
  auto scheduler = make(name, sd15_config(), SchedulerOptions{.karras = true});
  ASSERT_TRUE(scheduler->set_timesteps(steps).is_ok());
  EXPECT_EQ(scheduler->config()["use_karras_sigmas"], true);
  const std::vector<float> table = training_sigmas(make_alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear", false));
  const double lo = std::pow(table.front(), 1 / 7.0), hi = std::pow(table.back(), 1 / 7.0);
  ASSERT_EQ(scheduler->timesteps().size(), static_cast<size_t>(steps));
  for (int i = 0; i < steps; ++i) {
    const double expected = std::pow(hi + i / (steps - 1.0) * (lo - hi), 7.0);
    EXPECT_NEAR(scheduler->sigmas()[static_cast<size_t>(i)], expected, 1e-6 * expected) << i;
  }
  EXPECT_NEAR(scheduler->timesteps().front(), 999, 1e-3);
  EXPECT_NEAR(scheduler->timesteps().back(), 0, 1e-3);
  for (int i = 1; i < steps; ++i) EXPECT_LT(scheduler->timesteps()[i], scheduler->timesteps()[i - 1]);
}

TEST(Karras, EulerLmsAndDPMSolver) {
  expect_karras("euler", 10);
  expect_karras("lms", 10);
  expect_karras("dpmpp_2m", 10);
  auto dpm = make("dpmpp_2m", sd15_config(), SchedulerOptions{.karras = true});
  ASSERT_TRUE(dpm->set_timesteps(10).is_ok());
  for (float t : dpm->timesteps()) EXPECT_EQ(t, std::round(t));  // DPM rounds them to integers
  EXPECT_EQ(dpm->sigmas().back(), dpm->sigmas()[9]);             // and ends on the smallest sigma
}

TEST(PNDM, RungeKuttaStart) {
  auto pndm = make("pndm", with(sd15_config(), "skip_prk_steps", false));
  ASSERT_TRUE(pndm->set_timesteps(10).is_ok());
  EXPECT_EQ(pndm->timesteps(), (std::vector<float>{901, 851, 851, 801, 801, 751, 751, 701, 701, 651, 651, 601, 601, 501,
                                                   401, 301, 201, 101, 1}));
  Tensor latents = testing::random_tensor({1, 4, 8, 8}, 1);
  for (size_t i = 0; i < pndm->timesteps().size(); ++i) {
    latents = pndm->step(testing::random_tensor({1, 4, 8, 8}, 100 + i), i, latents, nullptr);
  }
  for (float v : latents.to_vector()) ASSERT_TRUE(std::isfinite(v));
  EXPECT_FALSE(pndm->set_timesteps(3).is_ok());
}

// How a scheduler's sample relates to x_0 and the noise.
enum class Space {
  kAlphasCumprod,  // x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (DDIM, PNDM)
  kSigma,          // x = x_0 + sigma eps (Euler, LMS: k-diffusion's scaling)
  kVPFromSigma,    // x_t = alpha x_0 + alpha sigma eps with alpha = 1 / sqrt(sigma^2 + 1) (DPM-Solver)
};

// x_t built from a known x_0 and noise; a v-prediction scheduler given v must step where an
// epsilon one given the noise does.
void expect_v_prediction_matches(const std::string& name, Space space) {
  SCOPED_TRACE(name);
  auto eps_scheduler = make(name);
  auto v_scheduler = make(name, with(sd15_config(), "prediction_type", "v_prediction"));
  ASSERT_TRUE(eps_scheduler->set_timesteps(10).is_ok());
  ASSERT_TRUE(v_scheduler->set_timesteps(10).is_ok());
  const Tensor x0 = testing::random_tensor({1, 4, 4, 4}, 7), eps = testing::random_tensor({1, 4, 4, 4}, 8);
  double alpha, sigma;  // the VP coefficients: x_t = alpha x_0 + sigma eps, v = alpha eps - sigma x_0
  if (space == Space::kAlphasCumprod) {
    const std::vector<float> alphas_cumprod = make_alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear", false);
    const double a = alphas_cumprod[static_cast<size_t>(eps_scheduler->timesteps()[0])];
    alpha = std::sqrt(a);
    sigma = std::sqrt(1 - a);
  } else {
    const double s = eps_scheduler->sigmas()[0];
    alpha = 1 / std::sqrt(s * s + 1);
    sigma = s * alpha;
  }
  Tensor sample = Tensor::empty(x0.shape()), v = Tensor::empty(x0.shape());
  for (int64_t i = 0; i < x0.numel(); ++i) {
    const double x = x0.data<float>()[i], e = eps.data<float>()[i];
    const double x_t = alpha * x + sigma * e;
    sample.data<float>()[i] = static_cast<float>(space == Space::kSigma ? x_t / alpha : x_t);
    v.data<float>()[i] = static_cast<float>(alpha * e - sigma * x);
  }
  const Tensor by_eps = eps_scheduler->step(eps, 0, sample, nullptr);
  const Tensor by_v = v_scheduler->step(v, 0, sample, nullptr);
  EXPECT_LE(testing::max_abs_diff(by_eps, by_v), 1e-4f);
}

TEST(VPrediction, StepsLikeEpsilon) {
  expect_v_prediction_matches("ddim", Space::kAlphasCumprod);
  expect_v_prediction_matches("pndm", Space::kAlphasCumprod);
  expect_v_prediction_matches("euler", Space::kSigma);
  expect_v_prediction_matches("lms", Space::kSigma);
  expect_v_prediction_matches("dpmpp_2m", Space::kVPFromSigma);
}

TEST(MakeScheduler, NamesAliasesAndTheModelDefault) {
  EXPECT_EQ(scheduler_names(), (std::vector<std::string>{"pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "lms"}));
  EXPECT_EQ(make("")->class_name(), "PNDMScheduler");
  EXPECT_EQ(make("default")->class_name(), "PNDMScheduler");
  EXPECT_EQ(make("euler-ancestral")->class_name(), "EulerAncestralDiscreteScheduler");
  EXPECT_EQ(make("dpm++2m")->class_name(), "DPMSolverMultistepScheduler");
  EXPECT_EQ(make("", with(sd15_config(), "_class_name", "EulerDiscreteScheduler"))->class_name(),
            "EulerDiscreteScheduler");
  // from_config: the file's keys win over the scheduler's defaults, the others are the defaults.
  auto ddim = make("ddim");
  EXPECT_EQ(ddim->config()["set_alpha_to_one"], false);  // DDIM's own default is true
  EXPECT_EQ(ddim->config()["clip_sample"], false);
  EXPECT_EQ(make("euler")->config()["timestep_spacing"], "linspace");
  EXPECT_EQ(make("pndm")->config()["timestep_spacing"], "leading");
  EXPECT_EQ(make("dpmpp_2m")->config()["lambda_min_clipped"], "-inf");
  EXPECT_EQ(make("ddim", sd15_config(), SchedulerOptions{.eta = 0.5})->uses_noise(), true);
}

TEST(MakeScheduler, Errors) {
  EXPECT_EQ(
      error_of("eulr", sd15_config()),
      "unknown scheduler 'eulr' (did you mean 'euler'?); choose one of pndm, ddim, euler, euler_a, dpmpp_2m, lms");
  EXPECT_EQ(error_of("pndm", sd15_config(), SchedulerOptions{.karras = true}),
            "scheduler 'pndm' has no Karras sigmas; use one of euler, dpmpp_2m, lms, or drop --karras");
  EXPECT_EQ(error_of("euler", sd15_config(), SchedulerOptions{.eta = 0.3}),
            "eta applies to the ddim scheduler only, not 'euler'");
  EXPECT_EQ(error_of("ddim", sd15_config(), SchedulerOptions{.eta = 2}),
            "DDIM eta is 2.000000; expected a value from 0 to 1");
  EXPECT_EQ(error_of("", with(sd15_config(), "_class_name", "UniPCMultistepScheduler")),
            "scheduler_config.json: the model's scheduler UniPCMultistepScheduler is not one sdstack has; choose one "
            "with --scheduler (pndm, ddim, euler, euler_a, dpmpp_2m, lms)");
  nlohmann::json no_class = sd15_config();
  no_class.erase("_class_name");
  EXPECT_EQ(error_of("", no_class),
            "scheduler_config.json: key '_class_name' is missing (is this the right config file for this model?)");
  EXPECT_EQ(error_of("pndm", with(sd15_config(), "steps_offset", "1")),
            "scheduler_config.json: key 'steps_offset' is \"1\", expected an integer");
  EXPECT_EQ(error_of("ddim", with(sd15_config(), "beta_schedule", "scaled_linaer")),
            "scheduler_config.json: key 'beta_schedule' is 'scaled_linaer' (did you mean 'scaled_linear'?); sdstack "
            "supports linear, scaled_linear, squaredcos_cap_v2");
  EXPECT_EQ(error_of("ddim", with(sd15_config(), "thresholding", true)),
            "scheduler_config.json: key 'thresholding' is true; sdstack does not implement dynamic thresholding");
  EXPECT_EQ(
      error_of("", with(with(sd15_config(), "_class_name", "DPMSolverMultistepScheduler"), "algorithm_type",
                        "sde-dpmsolver++")),
      "scheduler_config.json: key 'algorithm_type' is 'sde-dpmsolver++', which sdstack does not implement yet (it "
      "has dpmsolver++)");
  EXPECT_EQ(error_of("pndm", with(sd15_config(), "trained_betas", nlohmann::json::array({0.1, 0.2}))),
            "scheduler_config.json: key 'trained_betas' has 2 values; num_train_timesteps is 1000");
  auto from_other_file = make_scheduler("euler", with(sd15_config(), "timestep_spacing", 3), {}, "m/scheduler.json");
  ASSERT_FALSE(from_other_file.is_ok());
  EXPECT_EQ(from_other_file.status().message(), "m/scheduler.json: key 'timestep_spacing' is 3, expected a string");

  auto euler = make("euler");
  EXPECT_EQ(
      euler->set_timesteps(0).message(),
      "EulerDiscreteScheduler: 0 inference steps asked for; expected 1 to 1000 (the model's num_train_timesteps)");
  EXPECT_FALSE(euler->set_timesteps(1001).is_ok());
}

}  // namespace
}  // namespace sdstack::schedulers
