// `sdstack generate` end to end on the golden tiny model: images and metadata, and one clear error
// for each kind of bad input.
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/npy.h"
#include "io/png.h"
#include "testing/testing.h"

namespace sdstack {
namespace {

namespace fs = std::filesystem;
using testing::golden_dir;
using testing::have_golden;
using testing::run_sdstack;

class GenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
  }
  std::string model() const { return golden_dir() + "/tiny-sd"; }

  // A writable copy of the tiny model.
  std::string copy_model() {
    std::string to = dir_.file("model");
    fs::copy(model(), to, fs::copy_options::recursive);
    for (const auto& entry : fs::recursive_directory_iterator(to)) {
      fs::permissions(entry.path(), fs::perms::owner_all, fs::perm_options::add);
    }
    return to;
  }

  // Runs generate and expects exactly one error line containing `expected`.
  void expect_error(const std::vector<std::string>& args, const std::string& expected, int exit_code = 1) {
    std::vector<std::string> all = {"generate", "-o", dir_.file("out")};
    all.insert(all.end(), args.begin(), args.end());
    testing::CommandResult result = run_sdstack(all);
    EXPECT_EQ(result.exit_code, exit_code) << result.err;
    EXPECT_NE(result.err.find(expected), std::string::npos) << result.err;
    EXPECT_LE(std::count(result.err.begin(), result.err.end(), '\n'), 2) << "one clear error: " << result.err;
    EXPECT_FALSE(fs::exists(dir_.file("out/0.png")));
  }

  testing::TempDir dir_;
};

TEST_F(GenerateTest, WritesOneImagePerPromptWithParameters) {
  std::string out = dir_.file("output");
  testing::CommandResult result = run_sdstack({"generate", "--model", model(), "-P", "cats in hats", "-P",
                                               "a red cube", "-N", "blurry", "--steps", "3", "--seed", "42", "-o",
                                               out, "--save-latents", dir_.file("latents.npy")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, out + "/0.png\n" + out + "/1.png\n");
  auto image = io::read_png(out + "/0.png");
  ASSERT_TRUE(image.is_ok()) << image.status().message();
  EXPECT_EQ(image->width, 64);
  EXPECT_EQ(image->height, 64);
  ASSERT_FALSE(image->text.empty());
  EXPECT_EQ(image->text[0].first, "parameters");
  EXPECT_EQ(image->text[0].second.rfind("cats in hats\nNegative prompt: blurry\nSteps: 3, Sampler: ", 0), 0u)
      << image->text[0].second;
  EXPECT_NE(image->text[0].second.find("CFG scale: 7.5, Seed: 42, Size: 64x64, Model: "), std::string::npos)
      << image->text[0].second;
  auto second = io::read_png(out + "/1.png");
  ASSERT_TRUE(second.is_ok());
  EXPECT_NE(second->text[0].second.find("a red cube\nNegative prompt: blurry\n"), std::string::npos);
  EXPECT_NE(image->rgb, second->rgb);
  auto latents = io::read_npy(dir_.file("latents.npy"));
  ASSERT_TRUE(latents.is_ok());
  EXPECT_EQ(latents->shape(), (tensor::Shape{2, 4, 8, 8}));
}

TEST_F(GenerateTest, SameSeedSameImageAndSavedLatentsReproduceTheRun) {
  // euler_a draws noise every step: saved latents plus the same seed must reproduce that too.
  auto run = [&](const std::string& seed, const std::string& out, const std::string& latents_flag,
                 const std::string& latents_file) {
    std::vector<std::string> args = {"generate", "--model", model(), "-P", "cats", "--steps", "2", "--scheduler",
                                     "euler_a", "--seed", seed, "-o", dir_.file(out)};
    if (!latents_flag.empty()) args.insert(args.end(), {latents_flag, dir_.file(latents_file)});
    return run_sdstack(args).exit_code;
  };
  ASSERT_EQ(run("7", "a", "", ""), 0);
  ASSERT_EQ(run("7", "b", "", ""), 0);
  ASSERT_EQ(run("8", "c", "", ""), 0);
  auto a = io::read_png(dir_.file("a/0.png")), b = io::read_png(dir_.file("b/0.png")), c = io::read_png(dir_.file("c/0.png"));
  ASSERT_TRUE(a.is_ok() && b.is_ok() && c.is_ok());
  EXPECT_EQ(a->rgb, b->rgb);
  EXPECT_NE(a->rgb, c->rgb);
}

TEST_F(GenerateTest, Bf16ComputeRunsOrSaysWhyNot) {
  testing::CommandResult result = run_sdstack({"generate", "--model", model(), "-P", "cats", "--steps", "2", "--seed",
                                               "3", "--dtype", "bf16", "-o", dir_.file("bf16")});
  if (result.exit_code != 0) {
    // A CPU without AVX512-BF16/AMX: one clear error saying what to use instead.
    EXPECT_NE(result.err.find("--dtype f32"), std::string::npos) << result.err;
    GTEST_SKIP() << "this CPU has no native bf16";
  }
  ASSERT_EQ(run_sdstack({"generate", "--model", model(), "-P", "cats", "--steps", "2", "--seed", "3", "-o",
                         dir_.file("f32")})
                .exit_code,
            0);
  auto bf16 = io::read_png(dir_.file("bf16/0.png")), f32 = io::read_png(dir_.file("f32/0.png"));
  ASSERT_TRUE(bf16.is_ok() && f32.is_ok());
  EXPECT_NE(bf16->rgb, f32->rgb);  // bf16 really ran
  double total = 0;
  for (size_t i = 0; i < bf16->rgb.size(); ++i) total += std::abs(bf16->rgb[i] - f32->rgb[i]);
  EXPECT_LE(total / static_cast<double>(bf16->rgb.size()), 8.0);  // the pipeline bf16 test's bound, in levels
  testing::CommandResult reference = run_sdstack({"generate", "--model", model(), "-P", "cats", "--backend",
                                                  "reference", "--dtype", "bf16", "-o", dir_.file("ref")});
  EXPECT_EQ(reference.exit_code, 1);
  EXPECT_NE(reference.err.find("f32 only"), std::string::npos) << reference.err;
}

TEST_F(GenerateTest, EmptyPromptWorksAsInDiffusers) {
  testing::CommandResult result =
      run_sdstack({"generate", "--model", model(), "-P", "", "--steps", "1", "-o", dir_.file("out")});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_TRUE(fs::exists(dir_.file("out/0.png")));
}

TEST_F(GenerateTest, UnknownSchedulerListsTheValidOnes) {
  expect_error({"--model", model(), "-P", "cats", "--scheduler", "eulr"}, "eulr");
  testing::CommandResult result =
      run_sdstack({"generate", "--model", model(), "-P", "cats", "--scheduler", "nonsense", "-o", dir_.file("x")});
  EXPECT_NE(result.err.find("ddim"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("dpmpp_2m"), std::string::npos) << result.err;
}

TEST_F(GenerateTest, SizeNotAMultipleOfEightIsRefused) {
  expect_error({"--model", model(), "-P", "cats", "--width", "100"}, "multiples of 8");
}

TEST_F(GenerateTest, ZeroStepsIsAUsageError) {
  expect_error({"--model", model(), "-P", "cats", "--steps", "0"}, "--steps", 2);
}

TEST_F(GenerateTest, MissingWeightFileIsNamed) {
  std::string copy = copy_model();
  fs::remove(copy + "/unet/diffusion_pytorch_model.safetensors");
  expect_error({"--model", copy, "-P", "cats"}, "unet");
}

TEST_F(GenerateTest, MissingModelFolderSaysWhatToPass) {
  expect_error({"--model", dir_.file("nothing-here"), "-P", "cats"}, "--model");
}

TEST_F(GenerateTest, UnsupportedModelFamilyIsNamed) {
  std::string copy = copy_model();
  std::ifstream in(copy + "/unet/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  in.close();
  config["addition_embed_type"] = "text_time";  // SDXL's
  std::ofstream(copy + "/unet/config.json") << config.dump(2);
  expect_error({"--model", copy, "-P", "cats"}, "addition_embed_type");
}

TEST_F(GenerateTest, LatentsOfTheWrongShapeAreRefused) {
  std::string out = dir_.file("first");
  ASSERT_EQ(run_sdstack({"generate", "--model", model(), "-P", "a", "-P", "b", "--steps", "1", "--seed", "1", "-o",
                         out, "--save-latents", dir_.file("two.npy")})
                .exit_code,
            0);
  expect_error({"--model", model(), "-P", "cats", "--latents", dir_.file("two.npy")}, "[2,4,8,8]");
}

}  // namespace
}  // namespace sdstack
