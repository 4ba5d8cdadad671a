// The whole txt2img pipeline against diffusers' golden runs: final latents and images, every case.
#include "pipeline/stable_diffusion.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "io/npy.h"
#include "io/png.h"
#include "tensor/layout.h"
#include "testing/testing.h"

namespace sdstack::pipeline {
namespace {

using sdstack::testing::golden_dir;
using sdstack::testing::have_golden;

std::string scheduler_name(const std::string& class_name) {
  static const std::map<std::string, std::string> names = {
      {"PNDMScheduler", "pndm"},         {"DDIMScheduler", "ddim"},
      {"EulerDiscreteScheduler", "euler"}, {"EulerAncestralDiscreteScheduler", "euler_a"},
      {"DPMSolverMultistepScheduler", "dpmpp_2m"}, {"LMSDiscreteScheduler", "lms"}};
  return names.at(class_name);
}

std::vector<std::string> strings(const nlohmann::json& value) {
  if (value.is_null()) return {};
  if (value.is_string()) return {value.get<std::string>()};
  return value.get<std::vector<std::string>>();
}

// The request a golden case describes.
GenerateRequest request_for(const nlohmann::json& c) {
  GenerateRequest request;
  request.prompts = strings(c["prompt"]);
  request.negative_prompts = strings(c["negative_prompt"]);
  request.num_images_per_prompt = c["num_images_per_prompt"].get<int>();
  request.steps = c["num_inference_steps"].get<int>();
  request.guidance_scale = c["guidance_scale"].get<float>();
  request.width = c["width"].get<int64_t>();
  request.height = c["height"].get<int64_t>();
  request.seed = c["seed"].get<uint64_t>();
  request.scheduler = scheduler_name(c["scheduler"]["class_name"].get<std::string>());
  request.scheduler_options.eta = c["eta"].get<double>();
  return request;
}

// One golden run: a case, a backend, and where the initial latents come from (the seed, or the
// case's saved init_latents.npy).
struct GoldenRun {
  std::string case_id;
  std::string backend;
  bool from_seed;
};

std::string run_name(const ::testing::TestParamInfo<GoldenRun>& param_info) {
  std::string name = param_info.param.case_id + "_" + param_info.param.backend +
                     (param_info.param.from_seed ? "_seed" : "_init_latents");
  for (char& ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return name;
}

// The bar: every UNet output, every step's latents and the final latents within
// 1e-3 x max(1, max |reference|) (max abs error), and the 8-bit pixels at most 1 apart on at
// least 99.9% of pixels. Both backends meet it on every case but one: on pndm_cfg7.5_s10_64 the
// fp32 CPU backend drifts to ~10x the bar from its third step on, while the reference backend (the
// oracle: the same math, sums in double) stays at 0.65x. That case is chaotic on the tiny random
// model (its deepest level is 1x1, where group norm over two values amplifies rounding, and
// guidance multiplies differences by 7.5 each step): nudging its initial latents by one part in
// 10^6 moves its final latents by 4.5%, so fp32 rounding differences from torch grow past the bar.
// For that case alone the CPU backend is allowed kChaoticSlack times the bar; a real difference
// (guidance, batch order, negative prompts, noise order, VAE scaling) moves results by order 1.
constexpr float kBar = 1e-3f;
constexpr double kBarPixels = 0.999;
constexpr float kChaoticSlack = 25.0f;
const char* const kChaoticCase = "pndm_cfg7.5_s10_64";

// max |a - b| / (kBar * max(1, max |b|)): <= 1 meets the bar.
float bar_ratio(const Tensor& ours, const Tensor& reference) {
  std::vector<float> a = ours.to_vector(), b = reference.to_vector();
  float error = 0.0f, magnitude = 1.0f;
  for (size_t i = 0; i < a.size(); ++i) {
    error = std::max(error, std::fabs(a[i] - b[i]));
    magnitude = std::max(magnitude, std::fabs(b[i]));
  }
  return std::isfinite(error) ? error / (kBar * magnitude) : INFINITY;
}

class PipelineGoldenTest : public ::testing::TestWithParam<GoldenRun> {
 protected:
  void SetUp() override {
    if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
    auto backend = backend::make_backend(GetParam().backend);
    ASSERT_TRUE(backend.is_ok());
    backend_ = std::move(backend).value();
    auto pipeline = StableDiffusionPipeline::load(golden_dir() + "/tiny-sd", *backend_);
    ASSERT_TRUE(pipeline.is_ok()) << pipeline.status().message();
    pipeline_ = std::move(pipeline).value();
  }

  std::unique_ptr<backend::Backend> backend_;
  std::unique_ptr<StableDiffusionPipeline> pipeline_;
};

TEST_P(PipelineGoldenTest, MatchesDiffusers) {
  const GoldenRun& run = GetParam();
  std::ifstream in(golden_dir() + "/manifest.json");
  nlohmann::json manifest = nlohmann::json::parse(in);
  const nlohmann::json* found = nullptr;
  for (const nlohmann::json& c : manifest["cases"]) {
    if (c["id"] == run.case_id) found = &c;
  }
  ASSERT_NE(found, nullptr);
  const nlohmann::json& c = *found;
  const std::string dir = golden_dir() + "/" + c["dir"].get<std::string>() + "/";
  GenerateRequest request = request_for(c);
  if (!run.from_seed) {
    auto init = io::read_npy(dir + "init_latents.npy");
    ASSERT_TRUE(init.is_ok());
    request.latents = *init;
  }
  auto unet_out = io::read_npy(dir + "unet_out.npy");        // [calls, 2B or B, 4, h, w]
  auto latents_steps = io::read_npy(dir + "latents_steps.npy");  // [calls, B, 4, h, w]
  auto final_latents = io::read_npy(dir + "final_latents.npy");
  ASSERT_TRUE(unet_out.is_ok() && latents_steps.is_ok() && final_latents.is_ok());

  float worst_unet = 0.0f, worst_step = 0.0f;
  int steps_seen = 0;
  auto result = pipeline_->generate(request, [&](const StepInfo& step) {
    const int64_t i = step.done - 1;
    ++steps_seen;
    Tensor expected_unet = unet_out->slice0(i, 1).reshape(step.unet_output->shape());
    Tensor expected_latents = latents_steps->slice0(i, 1).reshape(step.latents->shape());
    worst_unet = std::max(worst_unet, bar_ratio(*step.unet_output, expected_unet));
    worst_step = std::max(worst_step, bar_ratio(*step.latents, expected_latents));
  });
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(steps_seen, latents_steps->dim(0));
  const float final_ratio = bar_ratio(result->final_latents, *final_latents);

  // Pixels of diffusers' PNGs.
  int64_t close = 0, total = 0;
  for (int64_t i = 0; i < result->images.dim(0); ++i) {
    auto png = io::read_png(dir + "image_" + std::to_string(i) + ".png");
    ASSERT_TRUE(png.is_ok()) << png.status().message();
    ASSERT_EQ(png->width * png->height * 3, result->images.numel() / result->images.dim(0));
    io::Image ours = io::image_from_float(result->images.slice0(i, 1).reshape({png->height, png->width, 3}));
    for (size_t p = 0; p < ours.rgb.size(); ++p) close += std::abs(ours.rgb[p] - png->rgb[p]) <= 1 ? 1 : 0;
    total += static_cast<int64_t>(ours.rgb.size());
  }
  const double close_fraction = static_cast<double>(close) / static_cast<double>(total);

  const float bound = run.backend == "cpu" && run.case_id == kChaoticCase ? kChaoticSlack : 1.0f;
  EXPECT_LE(worst_unet, bound);
  EXPECT_LE(worst_step, bound);
  EXPECT_LE(final_ratio, bound);
  EXPECT_GE(close_fraction, kBarPixels);
  std::printf("[ %s ] worst / bar: UNet %.3g, steps %.3g, final %.3g; pixels within 1: %.2f%%\n",
              run_name(::testing::TestParamInfo<GoldenRun>(run, 0)).c_str(), worst_unet, worst_step, final_ratio,
              100.0 * close_fraction);
}

std::vector<GoldenRun> golden_runs() {
  const std::vector<std::string> cases = {
      "pndm_cfg7.5_s10_64",     "ddim_cfg7.5_s8_64",      "euler_cfg7.5_s8_64",
      "euler_a_cfg7.5_s8_64",   "dpmpp2m_cfg7.5_s8_64",   "lms_cfg7.5_s8_64",
      "pndm_cfg1_s6_64",        "ddim_neg_cfg7.5_s6_64",  "pndm_cfg7.5_s4_h64w128",
      "ddim_cfg7.5_s5_64_2img", "euler_a_cfg7.5_s5_64_2prompts", "ddim_eta0.5_cfg7.5_s6_64"};
  std::vector<GoldenRun> runs;
  for (const std::string& id : cases) {
    for (const char* backend : {"cpu", "reference"}) {
      for (bool from_seed : {true, false}) runs.push_back({id, backend, from_seed});
    }
  }
  return runs;
}

INSTANTIATE_TEST_SUITE_P(Golden, PipelineGoldenTest, ::testing::ValuesIn(golden_runs()), run_name);

}  // namespace
}  // namespace sdstack::pipeline
