// Every golden case replayed through its scheduler: the resolved config, timesteps, sigmas and
// init noise sigma, then the UNet outputs diffusers recorded, step by step, against its latents.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/npy.h"
#include "schedulers/scheduler.h"
#include "testing/testing.h"

// The guidance sum below must round like torch's separate ops (see schedulers/common.h).
#pragma GCC optimize("fp-contract=off")

namespace sdstack::schedulers {
namespace {

using sdstack::testing::golden_dir;
using sdstack::testing::read_json;
using sdstack::testing::read_npy_checked;
using sdstack::testing::have_golden;
using tensor::Tensor;

// Step noise as diffusers drew it (scheduler_noise.npy, one tensor per step), so the scheduler's
// math is checked apart from the RNG (tests/pipeline checks the RNG draws the same).
class RecordedNoise : public NoiseSource {
 public:
  explicit RecordedNoise(Tensor noise) : noise_(std::move(noise)) {}
  Tensor randn(const tensor::Shape& shape) override {
    EXPECT_LT(next_, noise_.dim(0)) << "more noise drawn than diffusers drew";
    Tensor one = noise_.slice0(next_++, 1).reshape(shape).contiguous();
    return one;
  }
  int64_t drawn() const { return next_; }

 private:
  Tensor noise_;
  int64_t next_ = 0;
};

std::vector<std::string> golden_case_ids() {
  if (!have_golden()) return {"no_golden_data"};
  std::vector<std::string> ids;
  const nlohmann::json manifest = read_json(golden_dir() + "/manifest.json");
  for (const nlohmann::json& c : manifest["cases"]) ids.push_back(c["id"]);
  return ids;
}

const char* name_for_class(const std::string& class_name) {
  if (class_name == "PNDMScheduler") return "";  // the tiny model's own: make_scheduler's default
  if (class_name == "DDIMScheduler") return "ddim";
  if (class_name == "EulerDiscreteScheduler") return "euler";
  if (class_name == "EulerAncestralDiscreteScheduler") return "euler_a";
  if (class_name == "DPMSolverMultistepScheduler") return "dpmpp_2m";
  if (class_name == "LMSDiscreteScheduler") return "lms";
  return "?";
}

Tensor at(const Tensor& stacked, int64_t i) {
  tensor::Shape shape(stacked.shape().begin() + 1, stacked.shape().end());
  return stacked.slice0(i, 1).reshape(shape);
}

float max_abs(const Tensor& t) {
  float m = 0;
  for (float v : t.to_vector()) m = std::max(m, std::fabs(v));
  return m;
}

// eps = eps_uncond + g * (eps_cond - eps_uncond), in f32 as torch; the batch is [uncond..., cond...].
Tensor guided(const Tensor& unet_out, bool cfg, double guidance_scale) {
  if (!cfg) return unet_out.contiguous();
  const int64_t batch = unet_out.dim(0) / 2;
  Tensor uncond = unet_out.slice0(0, batch).contiguous(), cond = unet_out.slice0(batch, batch).contiguous();
  Tensor out = Tensor::empty(uncond.shape());
  const float g = static_cast<float>(guidance_scale);
  const float *u = uncond.data<float>(), *c = cond.data<float>();
  float* o = out.data<float>();
  for (int64_t i = 0; i < out.numel(); ++i) o[i] = u[i] + g * (c[i] - u[i]);
  return out;
}

class SchedulerGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
    const nlohmann::json manifest = read_json(golden_dir() + "/manifest.json");
    for (const nlohmann::json& c : manifest["cases"]) {
      if (c["id"] == GetParam()) case_ = c;
    }
    ASSERT_FALSE(case_.is_null());
    dir_ = golden_dir() + "/" + case_["dir"].get<std::string>() + "/";
    nlohmann::json model_config = read_json(golden_dir() + "/tiny-sd/scheduler/scheduler_config.json");
    SchedulerOptions options;
    options.eta = case_["eta"].get<double>();
    auto made = make_scheduler(name_for_class(case_["scheduler"]["class_name"]), model_config, options);
    ASSERT_TRUE(made.is_ok()) << made.status().message();
    scheduler_ = std::move(made).value();
  }

  Tensor load(const std::string& name) {
    auto t = io::read_npy(dir_ + name + ".npy");
    EXPECT_TRUE(t.is_ok()) << t.status().message();
    return t.is_ok() ? *t : Tensor();
  }

  nlohmann::json case_;
  std::string dir_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_P(SchedulerGoldenTest, ConfigResolvesAsFromConfig) {
  const nlohmann::json& expected = case_["scheduler"]["config"];
  EXPECT_EQ(scheduler_->class_name(), case_["scheduler"]["class_name"].get<std::string>());
  for (auto it = expected.begin(); it != expected.end(); ++it) {
    ASSERT_TRUE(scheduler_->config().contains(it.key())) << "missing " << it.key();
    const nlohmann::json& ours = scheduler_->config()[it.key()];
    if (it->is_number() && ours.is_number()) {
      EXPECT_DOUBLE_EQ(ours.get<double>(), it->get<double>()) << it.key();
    } else {
      EXPECT_EQ(ours, *it) << it.key();
    }
  }
  EXPECT_EQ(scheduler_->config().size(), expected.size()) << scheduler_->config().dump();
}

TEST_P(SchedulerGoldenTest, TimestepsSigmasAndInitNoiseSigma) {
  ASSERT_TRUE(scheduler_->set_timesteps(case_["num_inference_steps"].get<int>()).is_ok());
  const nlohmann::json& expected = case_["scheduler"];
  std::vector<float> timesteps;
  for (double t : expected["timesteps"]) timesteps.push_back(static_cast<float>(t));
  EXPECT_EQ(scheduler_->timesteps(), timesteps);
  EXPECT_EQ(scheduler_->timesteps(), load("unet_t").to_vector());
  EXPECT_EQ(static_cast<int64_t>(scheduler_->timesteps().size()), case_["num_unet_calls"].get<int64_t>());
  if (expected["sigmas"].is_null()) {
    EXPECT_TRUE(scheduler_->sigmas().empty());
  } else {
    std::vector<float> sigmas;
    for (double s : expected["sigmas"]) sigmas.push_back(static_cast<float>(s));
    EXPECT_EQ(scheduler_->sigmas(), sigmas);
  }
  EXPECT_EQ(scheduler_->init_noise_sigma(), static_cast<float>(expected["init_noise_sigma"].get<double>()));
}

// The whole denoising loop on diffusers' UNet outputs. Our latents feed the next step (errors
// accumulate, as they would in a run); tolerance: max |Δ| <= 1e-6 * (1 + max |latents|) per step
// (PNDM, DDIM and the Euler schedulers reproduce diffusers bit for bit; DPM-Solver++ and LMS
// differ by an ulp here and there, from log/exp and the LMS integrals).
TEST_P(SchedulerGoldenTest, ReplaysDiffusersLatents) {
  ASSERT_TRUE(scheduler_->set_timesteps(case_["num_inference_steps"].get<int>()).is_ok());
  const Tensor init = load("init_latents"), unet_in = load("unet_in"), unet_out = load("unet_out");
  const Tensor steps = load("latents_steps"), final_latents = load("final_latents");
  const bool cfg = case_["do_classifier_free_guidance"].get<bool>();
  const double guidance_scale = case_["guidance_scale"].get<double>();
  const bool has_noise = case_["files"].contains("scheduler_noise");
  EXPECT_EQ(has_noise, scheduler_->uses_noise());
  RecordedNoise noise(has_noise ? load("scheduler_noise") : Tensor::zeros({0}));

  // latents = randn * init_noise_sigma
  Tensor latents = Tensor::empty(init.shape());
  const float sigma0 = scheduler_->init_noise_sigma();
  for (int64_t i = 0; i < init.numel(); ++i) latents.data<float>()[i] = init.data<float>()[i] * sigma0;

  float worst_in = 0, worst_step = 0;
  const size_t calls = scheduler_->timesteps().size();
  ASSERT_EQ(static_cast<int64_t>(calls), unet_out.dim(0));
  for (size_t i = 0; i < calls; ++i) {
    const int64_t call = static_cast<int64_t>(i);
    // The UNet's input: the same scaled latents in each guidance half.
    Tensor model_input = scheduler_->scale_model_input(latents, i);
    const Tensor recorded_in = at(unet_in, call);
    const int64_t batch = latents.dim(0);
    for (int64_t half = 0; half < recorded_in.dim(0) / batch; ++half) {
      const Tensor expected = recorded_in.slice0(half * batch, batch);
      const float err = testing::max_abs_diff(model_input, expected);
      worst_in = std::max(worst_in, err / (1 + max_abs(expected)));
      EXPECT_LE(err, 1e-6f * (1 + max_abs(expected))) << "unet_in of call " << i;
    }
    latents = scheduler_->step(guided(at(unet_out, call), cfg, guidance_scale), i, latents, &noise);
    const Tensor expected = at(steps, call);
    const float err = testing::max_abs_diff(latents, expected);
    worst_step = std::max(worst_step, err / (1 + max_abs(expected)));
    EXPECT_LE(err, 1e-6f * (1 + max_abs(expected))) << "latents after call " << i;
  }
  EXPECT_EQ(noise.drawn(), has_noise ? static_cast<int64_t>(calls) : 0);
  EXPECT_LE(testing::max_abs_diff(latents, final_latents), 1e-6f * (1 + max_abs(final_latents)));
  std::printf("[ %-32s ] %2zu calls, max |Δ|/(1+max|x|): unet_in %.2e, latents %.2e\n", GetParam().c_str(), calls,
              worst_in, worst_step);
}

INSTANTIATE_TEST_SUITE_P(Golden, SchedulerGoldenTest, ::testing::ValuesIn(golden_case_ids()),
                         [](const ::testing::TestParamInfo<std::string>& param_info) {
                           std::string name;
                           for (char c : param_info.param)
                             name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

}  // namespace
}  // namespace sdstack::schedulers
