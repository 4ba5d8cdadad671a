// The random-weight model end to end: `sdstack make-model` writes a folder that the whole engine
// runs offline (every scheduler, sizes, batches, seeds), and `sdstack generate` makes images from it.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "backend/backend.h"
#include "io/png.h"
#include "models/presets.h"
#include "models/random_model.h"
#include "pipeline/stable_diffusion.h"
#include "schedulers/scheduler.h"
#include "testing/testing.h"

namespace sdstack {
namespace {

namespace fs = std::filesystem;
using pipeline::GenerateRequest;
using pipeline::GenerateResult;
using pipeline::StableDiffusionPipeline;
using testing::run_sdstack;
using testing::TempDir;

// Runs the test body in `dir` (for commands' default paths) and goes back afterwards.
class InDirectory {
 public:
  explicit InDirectory(const std::string& dir) : previous_(fs::current_path()) { fs::current_path(dir); }
  ~InDirectory() { fs::current_path(previous_); }

 private:
  fs::path previous_;
};

bool same_bits(const tensor::Tensor& a, const tensor::Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// Images are NHWC [B, H, W, 3], finite and in [0, 1], and not one flat colour.
void expect_images(const tensor::Tensor& images, int64_t batch, int64_t height, int64_t width,
                   const std::string& what) {
  ASSERT_EQ(images.shape(), (tensor::Shape{batch, height, width, 3})) << what;
  std::vector<float> values = images.to_vector();
  float lo = 1, hi = 0;
  for (float v : values) {
    ASSERT_TRUE(std::isfinite(v)) << what;
    ASSERT_GE(v, 0.0f) << what;
    ASSERT_LE(v, 1.0f) << what;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  EXPECT_GT(hi - lo, 0.01f) << what;
}

// One tiny random model (8x8 latents, 64x64 images) and its pipeline on the cpu backend, shared by
// the in-process tests.
class RandomModelPipelineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    auto preset = models::model_preset("tiny");
    ASSERT_TRUE(preset.is_ok());
    auto written = models::write_random_model(*preset, dir_->file("tiny"), {.seed = 3, .sample_size = 8});
    ASSERT_TRUE(written.is_ok()) << written.status().message();
    auto cpu = backend::make_backend("cpu");
    ASSERT_TRUE(cpu.is_ok());
    backend_ = cpu->release();
    auto loaded = StableDiffusionPipeline::load(dir_->file("tiny"), *backend_);
    ASSERT_TRUE(loaded.is_ok()) << loaded.status().message();
    pipeline_ = loaded->release();
  }
  static void TearDownTestSuite() {
    delete pipeline_;
    delete backend_;
    delete dir_;
  }
  void SetUp() override { ASSERT_NE(pipeline_, nullptr) << "the random model did not load"; }

  static GenerateRequest request(int steps, uint64_t seed, const std::string& scheduler = "") {
    GenerateRequest r;
    r.prompts = {"cats in hats"};
    r.steps = steps;
    r.seed = seed;
    r.scheduler = scheduler;
    return r;
  }
  static base::Result<GenerateResult> generate(const GenerateRequest& r) { return pipeline_->generate(r); }

  static TempDir* dir_;
  static backend::Backend* backend_;
  static StableDiffusionPipeline* pipeline_;
};

TempDir* RandomModelPipelineTest::dir_ = nullptr;
backend::Backend* RandomModelPipelineTest::backend_ = nullptr;
StableDiffusionPipeline* RandomModelPipelineTest::pipeline_ = nullptr;

TEST_F(RandomModelPipelineTest, EverySchedulerAtOneAndTwoSteps) {
  EXPECT_EQ(pipeline_->default_size(), 64);
  for (const std::string& scheduler : schedulers::scheduler_names()) {
    for (int steps : {1, 2}) {
      auto result = generate(request(steps, 42, scheduler));
      ASSERT_TRUE(result.is_ok()) << scheduler << ": " << result.status().message();
      expect_images(result->images, 1, 64, 64, scheduler + " x" + std::to_string(steps));
    }
  }
}

// `sdstack generate`'s way: each model loaded for its stage and freed after it (the text encoder
// is gone before the denoising loop, the VAE not yet there), and the same images, bit for bit, as
// a pipeline that keeps everything loaded.
TEST_F(RandomModelPipelineTest, OneAtATimeHoldsOnlyTheModelAtWorkAndMatches) {
  auto loaded =
      StableDiffusionPipeline::load(dir_->file("tiny"), *backend_, {.residency = pipeline::Residency::kOneAtATime});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().message();
  StableDiffusionPipeline& lean = **loaded;
  EXPECT_FALSE(lean.text_encoder_loaded() || lean.unet_loaded() || lean.vae_loaded());
  size_t steps_seen = 0;
  pipeline::GenerateTimings timings;
  auto result = lean.generate(
      request(3, 11),
      [&](const pipeline::StepInfo&) {
        ++steps_seen;
        EXPECT_FALSE(lean.text_encoder_loaded());
        EXPECT_TRUE(lean.unet_loaded());
        EXPECT_FALSE(lean.vae_loaded());
      },
      &timings);
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_FALSE(lean.text_encoder_loaded() || lean.unet_loaded() || lean.vae_loaded());

  auto kept = generate(request(3, 11));
  ASSERT_TRUE(kept.is_ok()) << kept.status().message();
  EXPECT_TRUE(pipeline_->text_encoder_loaded() && pipeline_->unet_loaded() && pipeline_->vae_loaded());
  EXPECT_TRUE(same_bits(result->final_latents, kept->final_latents));
  EXPECT_TRUE(same_bits(result->images, kept->images));

  // A second run loads them again and gives the same images.
  auto again = lean.generate(request(3, 11));
  ASSERT_TRUE(again.is_ok()) << again.status().message();
  EXPECT_TRUE(same_bits(again->images, result->images));

  ASSERT_EQ(timings.step_s.size(), steps_seen);
  double steps_total = 0;
  for (double step : timings.step_s) steps_total += step;
  EXPECT_DOUBLE_EQ(timings.denoise_s, steps_total);
  EXPECT_GT(timings.load_s, 0);
  EXPECT_GT(timings.encode_s, 0);
  EXPECT_GT(timings.decode_s, 0);
}

// Loading nothing up front must not hide a missing weight file until the prompts are encoded.
TEST(OneAtATimeLoadTest, MissingWeightFileIsReportedByLoad) {
  TempDir dir;
  auto preset = models::model_preset("tiny");
  ASSERT_TRUE(preset.is_ok());
  ASSERT_TRUE(models::write_random_model(*preset, dir.file("tiny"), {.seed = 3, .sample_size = 8}).is_ok());
  fs::remove(dir.file("tiny") + "/unet/diffusion_pytorch_model.safetensors");
  auto cpu = backend::make_backend("cpu");
  ASSERT_TRUE(cpu.is_ok());
  auto loaded = StableDiffusionPipeline::load(dir.file("tiny"), **cpu, {.residency = pipeline::Residency::kOneAtATime});
  ASSERT_FALSE(loaded.is_ok());
  EXPECT_NE(loaded.status().message().find("unet"), std::string::npos) << loaded.status().message();
}

TEST_F(RandomModelPipelineTest, TwentyFiveSteps) {
  for (std::string scheduler : {"pndm", "euler_a"}) {
    auto result = generate(request(25, 42, scheduler));
    ASSERT_TRUE(result.is_ok()) << scheduler << ": " << result.status().message();
    expect_images(result->images, 1, 64, 64, scheduler);
  }
}

TEST_F(RandomModelPipelineTest, NonSquareSizes) {
  for (auto [width, height] : {std::pair<int64_t, int64_t>{64, 128}, {128, 64}}) {
    GenerateRequest r = request(2, 7);
    r.width = width;
    r.height = height;
    auto result = generate(r);
    ASSERT_TRUE(result.is_ok()) << result.status().message();
    expect_images(result->images, 1, height, width, std::to_string(width) + "x" + std::to_string(height));
  }
}

TEST_F(RandomModelPipelineTest, TwoPromptsTwoImagesEach) {
  GenerateRequest r = request(2, 9, "ddim");
  r.prompts = {"cats in hats", "a red cube on a table"};
  r.negative_prompts = {"blurry"};
  r.num_images_per_prompt = 2;
  auto result = generate(r);
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  expect_images(result->images, 4, 64, 64, "batch");
  // Each image has its own noise.
  const tensor::Tensor& images = result->images;
  EXPECT_FALSE(same_bits(images.slice0(0, 1).contiguous(), images.slice0(1, 1).contiguous()));
}

TEST_F(RandomModelPipelineTest, SeedDecidesTheImage) {
  auto first = generate(request(2, 123, "euler_a")), second = generate(request(2, 123, "euler_a"));
  auto other = generate(request(2, 124, "euler_a"));
  ASSERT_TRUE(first.is_ok() && second.is_ok() && other.is_ok());
  EXPECT_TRUE(same_bits(first->images, second->images));
  EXPECT_TRUE(same_bits(first->final_latents, second->final_latents));
  EXPECT_FALSE(same_bits(first->images, other->images));
}

// ---- the commands -------------------------------------------------------------------------------

class MakeModelCommandTest : public ::testing::Test {
 protected:
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_.path())) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
  TempDir dir_;
};

// The path the lead's workflow uses: make the model under ./models, then generate ./output/0.png.
TEST_F(MakeModelCommandTest, MakesAModelThatGenerateRuns) {
  InDirectory here(dir_.path());
  testing::CommandResult made = run_sdstack({"make-model", "--preset", "tiny", "--sample-size", "8"});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  EXPECT_EQ(made.out.substr(0, made.out.find('\n')), "models/sdstack-random-tiny");
  EXPECT_NE(made.out.find("unet/diffusion_pytorch_model.safetensors"), std::string::npos) << made.out;
  EXPECT_NE(made.out.find("2,446,788 parameters"), std::string::npos) << made.out;
  EXPECT_NE(made.out.find("total: 5,481,067 parameters"), std::string::npos) << made.out;
  EXPECT_EQ(entries(), (std::vector<std::string>{"models"}));

  testing::CommandResult generated =
      run_sdstack({"generate", "--model", "models/sdstack-random-tiny", "-P", "cats in hats", "--steps", "2"});
  ASSERT_EQ(generated.exit_code, 0) << generated.err;
  EXPECT_EQ(generated.out, "output/0.png\n");
  auto image = io::read_png("output/0.png");
  ASSERT_TRUE(image.is_ok()) << image.status().message();
  EXPECT_EQ(image->width, 64);
  EXPECT_EQ(image->height, 64);
}

TEST_F(MakeModelCommandTest, RefusesANonEmptyTargetWithoutForce) {
  const std::string target = dir_.file("model");
  ASSERT_EQ(run_sdstack({"make-model", "--preset", "tiny", "--to", target}).exit_code, 0);
  const auto before = fs::last_write_time(target + "/unet/diffusion_pytorch_model.safetensors");

  testing::CommandResult refused = run_sdstack({"make-model", "--preset", "tiny", "--to", target, "--seed", "2"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_EQ(refused.err, "sdstack: error: " + target +
                             ": exists and is not empty; refusing to overwrite it (--force replaces it)\n");
  EXPECT_EQ(fs::last_write_time(target + "/unet/diffusion_pytorch_model.safetensors"), before);
  EXPECT_EQ(entries(), (std::vector<std::string>{"model"}));

  testing::CommandResult forced =
      run_sdstack({"make-model", "--preset", "tiny", "--to", target, "--seed", "2", "--force"});
  EXPECT_EQ(forced.exit_code, 0) << forced.err;
  EXPECT_NE(forced.out.find("seed 2"), std::string::npos) << forced.out;
  EXPECT_EQ(entries(), (std::vector<std::string>{"model"}));  // no temporary or set-aside folder left
}

TEST_F(MakeModelCommandTest, BadArgumentsAreUsageErrors) {
  testing::CommandResult bad_preset = run_sdstack({"make-model", "--preset", "sdxl", "--to", dir_.file("m")});
  EXPECT_EQ(bad_preset.exit_code, 2);
  EXPECT_NE(bad_preset.err.find("sdxl"), std::string::npos) << bad_preset.err;
  testing::CommandResult bad_dtype =
      run_sdstack({"make-model", "--preset", "tiny", "--dtype", "bf16", "--to", dir_.file("m")});
  EXPECT_EQ(bad_dtype.exit_code, 2);
  testing::CommandResult no_preset = run_sdstack({"make-model", "--to", dir_.file("m")});
  EXPECT_EQ(no_preset.exit_code, 2);
  EXPECT_TRUE(entries().empty());

  testing::CommandResult help = run_sdstack({"--help"});
  EXPECT_NE(help.out.find("make-model"), std::string::npos);
}

}  // namespace
}  // namespace sdstack
