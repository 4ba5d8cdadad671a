// The sdstack program end to end: tokenize and encode on the golden tiny model, help, errors.
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/npy.h"
#include "testing/testing.h"

namespace sdstack {
namespace {

using testing::golden_dir;
using testing::have_golden;
using testing::run_sdstack;

std::string tiny_model() { return golden_dir() + "/tiny-sd"; }

TEST(CliTest, HelpListsTheCommands) {
  testing::CommandResult result = run_sdstack({"--help"});
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_NE(result.out.find("tokenize"), std::string::npos);
  EXPECT_NE(result.out.find("encode"), std::string::npos);
}

TEST(CliTest, UnknownCommandSuggestsTheClosest) {
  testing::CommandResult result = run_sdstack({"tokenze"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("unknown command 'tokenze' (did you mean 'tokenize'?)"), std::string::npos) << result.err;
}

TEST(CliTest, CommandHelpDescribesOptions) {
  for (const char* command : {"tokenize", "encode"}) {
    testing::CommandResult result = run_sdstack({command, "--help"});
    EXPECT_EQ(result.exit_code, 0) << command;
    EXPECT_NE(result.out.find("--prompt"), std::string::npos) << command;
    EXPECT_NE(result.out.find("--model"), std::string::npos) << command;
  }
}

TEST(CliTest, BadArgumentsExitWithUsageStatus) {
  testing::CommandResult result = run_sdstack({"tokenize", "--model", "x"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("--prompt"), std::string::npos) << result.err;
  result = run_sdstack({"encode", "--model", "x", "-P", "a", "--threads", "-3"});
  EXPECT_EQ(result.exit_code, 2);
}

TEST(CliTest, TokenizePrintsThePipelineIds) {
  if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
  std::ifstream in(golden_dir() + "/tokenizer_cases.json");
  nlohmann::json cases = nlohmann::json::parse(in)["cases"];
  for (const nlohmann::json& c : cases) {
    const std::string prompt = c["prompt"].get<std::string>();
    if (prompt.find('\0') != std::string::npos) continue;  // not expressible as an argument
    testing::CommandResult result = run_sdstack({"tokenize", "--model", tiny_model(), "-P", prompt, "--json"});
    ASSERT_EQ(result.exit_code, 0) << result.err;
    nlohmann::json printed = nlohmann::json::parse(result.out);
    EXPECT_EQ(printed["input_ids"], c["pipeline_ids_77"]) << prompt;
  }
}

TEST(CliTest, TokenizePlainOutputIsSeventySevenIds) {
  if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
  testing::CommandResult result = run_sdstack({"tokenize", "--model", tiny_model(), "-P", "cats in hats"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out.rfind("49406 ", 0), 0u) << result.out;
  size_t ids = 0;
  for (char ch : result.out) ids += ch == ' ' ? 1 : 0;
  EXPECT_EQ(ids + 1, 77u);
}

TEST(CliTest, EncodeWritesTheGoldenEmbedding) {
  if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
  testing::TempDir dir;
  std::string out = dir.file("emb.npy");
  testing::CommandResult result = run_sdstack(
      {"encode", "--model", tiny_model(), "-P", "a photograph of an astronaut riding a horse", "--out", out});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("[1,77,32]"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("std"), std::string::npos) << result.out;
  auto written = io::read_npy(out);
  ASSERT_TRUE(written.is_ok()) << written.status().message();
  auto expected = io::read_npy(golden_dir() + "/cases/pndm_cfg7.5_s10_64/prompt_embeds.npy");
  ASSERT_TRUE(expected.is_ok());
  ASSERT_EQ(written->shape(), expected->shape());
  EXPECT_LE(testing::max_abs_diff(*written, *expected), 1e-4f);
}

TEST(CliTest, EncodeOnAFolderThatIsNotAModelSaysWhatIsWrong) {
  testing::TempDir dir;
  testing::CommandResult result = run_sdstack({"encode", "--model", dir.path(), "-P", "cats"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.err.find("model_index.json"), std::string::npos) << result.err;
  EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << "one clear error: " << result.err;
}

TEST(CliTest, TokenizeOnAMissingFolderNamesIt) {
  testing::CommandResult result = run_sdstack({"tokenize", "--model", "/nonexistent/model", "-P", "cats"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.err.find("/nonexistent/model"), std::string::npos) << result.err;
}

}  // namespace
}  // namespace sdstack
