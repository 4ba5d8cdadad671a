// `sdstack bench` end to end on the tiny random model: the JSON's shape and sane numbers (no timings
// are asserted: the machine may be busy).
#include <nlohmann/json.hpp>

#include "testing/testing.h"

namespace sdstack {
namespace {

using testing::run_sdstack;

TEST(BenchCommandTest, JsonHasEveryComponent) {
  testing::CommandResult result =
      run_sdstack({"bench", "--random", "tiny", "--width", "64", "--height", "64", "--repeat", "1", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  nlohmann::json json = nlohmann::json::parse(result.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(json.is_object()) << result.out;
  EXPECT_EQ(json["dtype"], "f32");
  EXPECT_EQ(json["width"], 64);
  EXPECT_EQ(json["height"], 64);
  ASSERT_TRUE(json["peak_gflops"]["f32"].is_number());
  EXPECT_GT(json["peak_gflops"]["f32"].get<double>(), 0);
  EXPECT_TRUE(json["peak_gflops"].contains("bf16"));
  EXPECT_TRUE(json["peak_gflops"]["bf16"].is_null() || json["peak_gflops"]["bf16"].get<double>() > 0);
  for (const char* name : {"clip", "unet", "vae"}) {
    SCOPED_TRACE(name);
    const nlohmann::json& component = json["components"][name];
    ASSERT_TRUE(component.is_object()) << result.out;
    EXPECT_GT(component["median_s"].get<double>(), 0);
    EXPECT_GT(component["gflop"].get<double>(), 0);
    EXPECT_GT(component["gflops"].get<double>(), 0);
    EXPECT_GT(component["pct_of_peak"].get<double>(), 0);
    EXPECT_LT(component["pct_of_peak"].get<double>(), 200);
  }
  EXPECT_GT(json["peak_rss_mb"].get<double>(), 0);
}

TEST(BenchCommandTest, ComponentsChooseWhatRuns) {
  testing::CommandResult result =
      run_sdstack({"bench", "--random", "tiny", "--repeat", "1", "--components", "vae", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  nlohmann::json json = nlohmann::json::parse(result.out, nullptr, false);
  ASSERT_TRUE(json.is_object()) << result.out;
  EXPECT_EQ(json["components"].size(), 1u);
  EXPECT_TRUE(json["components"].contains("vae"));
}

TEST(BenchCommandTest, RunsAModelFolder) {
  if (!testing::have_golden()) GTEST_SKIP() << "no golden data (the tiny-sd folder) at " << testing::golden_dir();
  testing::CommandResult result = run_sdstack(
      {"bench", "--model", testing::golden_dir() + "/tiny-sd", "--repeat", "1", "--components", "clip,vae", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  nlohmann::json json = nlohmann::json::parse(result.out, nullptr, false);
  ASSERT_TRUE(json.is_object()) << result.out;
  EXPECT_EQ(json["components"].size(), 2u);
  EXPECT_GT(json["components"]["vae"]["gflop"].get<double>(), 0);
}

TEST(BenchCommandTest, GenerateStepsTimesAWholeRunAgainstTheComponents) {
  if (!testing::have_golden()) GTEST_SKIP() << "no golden data (the tiny-sd folder) at " << testing::golden_dir();
  testing::CommandResult result = run_sdstack(
      {"bench", "--model", testing::golden_dir() + "/tiny-sd", "--repeat", "1", "--generate-steps", "3", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  nlohmann::json json = nlohmann::json::parse(result.out, nullptr, false);
  ASSERT_TRUE(json.is_object()) << result.out;
  const nlohmann::json& generate = json["generate"];
  ASSERT_TRUE(generate.is_object()) << result.out;
  EXPECT_EQ(generate["steps"], 3);
  EXPECT_GE(generate["unet_calls"].get<int>(), 3);  // PNDM adds one
  const double unet = json["components"]["unet"]["median_s"].get<double>();
  const double clip = json["components"]["clip"]["median_s"].get<double>();
  const double vae = json["components"]["vae"]["median_s"].get<double>();
  EXPECT_DOUBLE_EQ(generate["predicted_s"].get<double>(), generate["unet_calls"].get<int>() * unet + 2 * clip + vae);
  const double seconds = generate["seconds"].get<double>();
  EXPECT_GT(seconds, 0);
  EXPECT_DOUBLE_EQ(generate["overhead_ratio"].get<double>(), seconds / generate["predicted_s"].get<double>());
  // The stages happen inside the run (the rest is opening the folder and the tokenizer).
  const double stages = generate["load_s"].get<double>() + generate["encode_s"].get<double>() +
                        generate["denoise_s"].get<double>() + generate["decode_s"].get<double>();
  EXPECT_GT(stages, 0);
  EXPECT_LE(stages, seconds);
}

TEST(BenchCommandTest, GenerateStepsNeedAModelFolderAndEveryComponent) {
  testing::CommandResult random = run_sdstack({"bench", "--random", "tiny", "--generate-steps", "2"});
  EXPECT_EQ(random.exit_code, 1);
  EXPECT_NE(random.err.find("timing generate needs a model folder (--model DIR"), std::string::npos) << random.err;
  if (!testing::have_golden()) GTEST_SKIP() << "no golden data (the tiny-sd folder) at " << testing::golden_dir();
  testing::CommandResult partial = run_sdstack(
      {"bench", "--model", testing::golden_dir() + "/tiny-sd", "--components", "unet", "--generate-steps", "2"});
  EXPECT_EQ(partial.exit_code, 1);
  EXPECT_NE(partial.err.find("timing generate needs the clip, unet and vae components"), std::string::npos)
      << partial.err;
}

TEST(BenchCommandTest, UnknownComponentIsAnError) {
  testing::CommandResult result = run_sdstack({"bench", "--random", "tiny", "--components", "unet,vea"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.err.find("unknown component 'vea' (known: clip, unet, vae)"), std::string::npos) << result.err;
}

TEST(BenchCommandTest, NeedsAModelOrAPreset) {
  testing::CommandResult result = run_sdstack({"bench"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("--model DIR"), std::string::npos) << result.err;
}

}  // namespace
}  // namespace sdstack
