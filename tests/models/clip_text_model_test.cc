// CLIP text encoder against diffusers' golden embeddings, on both backends; config and weight errors.
#include "models/clip_text_model.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "io/npy.h"
#include "io/safetensors.h"
#include "testing/testing.h"
#include "text/clip_tokenizer.h"

namespace sdstack::models {
namespace {

using sdstack::testing::golden_dir;
using sdstack::testing::have_golden;
using sdstack::testing::max_abs_diff;

// The prompts of a golden case as the pipeline batches them: each prompt repeated
// num_images_per_prompt times; negatives default to "" (one string applies to all prompts).
struct CasePrompts {
  std::vector<std::string> prompts;
  std::vector<std::string> negatives;
};

std::vector<std::string> as_list(const nlohmann::json& value, size_t count) {
  if (value.is_null()) return std::vector<std::string>(count, "");
  if (value.is_string()) return std::vector<std::string>(count, value.get<std::string>());
  return value.get<std::vector<std::string>>();
}

CasePrompts case_prompts(const nlohmann::json& c) {
  std::vector<std::string> prompts = as_list(c["prompt"], 1);
  std::vector<std::string> negatives = as_list(c["negative_prompt"], prompts.size());
  int64_t per_prompt = c["num_images_per_prompt"].get<int64_t>();
  CasePrompts out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    for (int64_t j = 0; j < per_prompt; ++j) {
      out.prompts.push_back(prompts[i]);
      out.negatives.push_back(negatives[i]);
    }
  }
  return out;
}

class CLIPGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
    std::ifstream in(golden_dir() + "/manifest.json");
    manifest_ = nlohmann::json::parse(in);
    auto folder = io::ModelFolder::open(golden_dir() + "/tiny-sd");
    ASSERT_TRUE(folder.is_ok()) << folder.status().message();
    folder_ = std::make_unique<io::ModelFolder>(std::move(folder).value());
    auto tokenizer = text::CLIPTokenizer::load(golden_dir() + "/tiny-sd/tokenizer");
    ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
    tokenizer_ = *tokenizer;
    auto backend = backend::make_backend(GetParam());
    ASSERT_TRUE(backend.is_ok());
    backend_ = std::move(backend).value();
    auto model = CLIPTextModel::load(*folder_, *backend_);
    ASSERT_TRUE(model.is_ok()) << model.status().message();
    model_ = std::move(model).value();
  }

  Tensor encode(const std::vector<std::string>& prompts) {
    std::vector<std::vector<int32_t>> ids;
    for (const std::string& p : prompts) ids.push_back(tokenizer_->encode_padded(p));
    auto out = model_->encode(ids);
    EXPECT_TRUE(out.is_ok()) << out.status().message();
    return out.is_ok() ? *out : Tensor();
  }

  nlohmann::json manifest_;
  std::unique_ptr<io::ModelFolder> folder_;
  std::shared_ptr<text::CLIPTokenizer> tokenizer_;
  std::unique_ptr<backend::Backend> backend_;
  std::unique_ptr<CLIPTextModel> model_;
};

// The bar: every case's prompt_embeds and negative_prompt_embeds within 1e-4.
constexpr float kEmbeddingTolerance = 1e-4f;

TEST_P(CLIPGoldenTest, MatchesDiffusersPromptAndNegativeEmbeddings) {
  int compared = 0;
  float worst = 0.0f;
  for (const nlohmann::json& c : manifest_["cases"]) {
    SCOPED_TRACE(c["id"].get<std::string>());
    const std::string dir = golden_dir() + "/" + c["dir"].get<std::string>() + "/";
    CasePrompts prompts = case_prompts(c);

    auto expected = io::read_npy(dir + "prompt_embeds.npy");
    ASSERT_TRUE(expected.is_ok()) << expected.status().message();
    Tensor actual = encode(prompts.prompts);
    ASSERT_EQ(actual.shape(), expected->shape());
    EXPECT_LE(max_abs_diff(actual, *expected), kEmbeddingTolerance);
    worst = std::max(worst, max_abs_diff(actual, *expected));
    ++compared;

    if (c["files"].contains("negative_prompt_embeds")) {
      auto expected_negative = io::read_npy(dir + "negative_prompt_embeds.npy");
      ASSERT_TRUE(expected_negative.is_ok()) << expected_negative.status().message();
      Tensor actual_negative = encode(prompts.negatives);
      ASSERT_EQ(actual_negative.shape(), expected_negative->shape());
      EXPECT_LE(max_abs_diff(actual_negative, *expected_negative), kEmbeddingTolerance);
      worst = std::max(worst, max_abs_diff(actual_negative, *expected_negative));
      ++compared;
    }
  }
  EXPECT_GE(compared, 20);  // every case has prompt embeddings, most have negative ones
  RecordProperty("max_abs_error", std::to_string(worst));
  std::printf("[ %s ] %d embeddings, max abs error %.3g\n", GetParam().c_str(), compared, worst);
}

TEST_P(CLIPGoldenTest, ClipSkipRunsFewerLayersAndValidatesRange) {
  std::vector<std::vector<int32_t>> ids = {tokenizer_->encode_padded("cats in hats")};
  auto full = model_->encode(ids, 0);
  auto skipped = model_->encode(ids, 1);
  ASSERT_TRUE(full.is_ok() && skipped.is_ok());
  EXPECT_EQ(skipped->shape(), full->shape());
  EXPECT_GT(max_abs_diff(*skipped, *full), 1e-3f);  // a different layer's output
  auto bad = model_->encode(ids, 4);                // the tiny model has 4 layers
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("clip_skip"), std::string::npos);
}

TEST_P(CLIPGoldenTest, RejectsIdsOutsideTheVocabulary) {
  auto out = model_->encode({{49406, 49408, 49407}});
  ASSERT_FALSE(out.is_ok());
  EXPECT_NE(out.status().message().find("49408"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Backends, CLIPGoldenTest, ::testing::Values("cpu", "reference"));

// A copy of the tiny text encoder with one tensor dropped or misshapen must fail, naming it.
class CLIPWeightErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
    auto file = io::SafetensorsFile::open(golden_dir() + "/tiny-sd/text_encoder/model.safetensors");
    ASSERT_TRUE(file.is_ok()) << file.status().message();
    for (const io::TensorInfo& info : (*file)->tensors()) tensors_.emplace_back(info.name, (*file)->tensor(info));
    std::ifstream in(golden_dir() + "/tiny-sd/text_encoder/config.json");
    config_json_ = nlohmann::json::parse(in);
  }

  base::Status load_with(const std::vector<std::pair<std::string, Tensor>>& tensors) {
    std::string path = dir_.file("model.safetensors");
    base::Status written = io::write_safetensors(path, tensors);
    if (!written.is_ok()) return written;
    auto weights = io::WeightSet::open({path});
    if (!weights.is_ok()) return weights.status();
    auto config = CLIPTextConfig::from_json(config_json_, "text_encoder/config.json");
    if (!config.is_ok()) return config.status();
    auto backend = backend::make_backend("cpu");
    auto model = CLIPTextModel::create(*config, *weights, **backend);
    return model.is_ok() ? base::Status::ok() : model.status();
  }

  sdstack::testing::TempDir dir_;
  std::vector<std::pair<std::string, Tensor>> tensors_;
  nlohmann::json config_json_;
};

TEST_F(CLIPWeightErrorsTest, MissingTensorIsNamed) {
  const std::string victim = "text_model.encoder.layers.2.mlp.fc1.bias";
  std::vector<std::pair<std::string, Tensor>> kept;
  for (auto& entry : tensors_) {
    if (entry.first != victim) kept.push_back(entry);
  }
  base::Status status = load_with(kept);
  ASSERT_FALSE(status.is_ok());
  EXPECT_NE(status.message().find(victim), std::string::npos) << status.message();
}

TEST_F(CLIPWeightErrorsTest, MisshapenTensorIsNamedWithBothShapes) {
  const std::string victim = "text_model.encoder.layers.1.self_attn.q_proj.weight";
  for (auto& entry : tensors_) {
    if (entry.first == victim) entry.second = Tensor::zeros({32, 16}, tensor::DType::kF16);
  }
  base::Status status = load_with(tensors_);
  ASSERT_FALSE(status.is_ok());
  EXPECT_NE(status.message().find(victim), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("[32,16]"), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("[32,32]"), std::string::npos) << status.message();
}

TEST(CLIPTextConfigTest, ReadsTheGoldenConfigAndRejectsBadValues) {
  nlohmann::json json = {{"vocab_size", 49408},       {"hidden_size", 32},        {"intermediate_size", 128},
                         {"num_hidden_layers", 4},    {"num_attention_heads", 4}, {"max_position_embeddings", 77},
                         {"hidden_act", "quick_gelu"}, {"layer_norm_eps", 1e-5}};
  auto config = CLIPTextConfig::from_json(json, "text_encoder/config.json");
  ASSERT_TRUE(config.is_ok()) << config.status().message();
  EXPECT_EQ(config->hidden_size, 32);
  EXPECT_EQ(config->hidden_act, backend::Activation::kQuickGELU);

  nlohmann::json bad_act = json;
  bad_act["hidden_act"] = "relu";
  auto status = CLIPTextConfig::from_json(bad_act, "text_encoder/config.json").status();
  EXPECT_EQ(status.message(),
            "text_encoder/config.json: key 'hidden_act' is 'relu'; sdstack supports 'quick_gelu' and 'gelu'");

  nlohmann::json missing = json;
  missing.erase("hidden_size");
  status = CLIPTextConfig::from_json(missing, "text_encoder/config.json").status();
  EXPECT_NE(status.message().find("'hidden_size' is missing"), std::string::npos) << status.message();

  nlohmann::json heads = json;
  heads["num_attention_heads"] = 5;
  status = CLIPTextConfig::from_json(heads, "text_encoder/config.json").status();
  EXPECT_NE(status.message().find("num_attention_heads"), std::string::npos) << status.message();

  nlohmann::json mistyped = json;
  mistyped["num_hidden_layers"] = "four";
  status = CLIPTextConfig::from_json(mistyped, "text_encoder/config.json").status();
  EXPECT_EQ(status.message(), "text_encoder/config.json: key 'num_hidden_layers' is \"four\", expected an integer");
}

}  // namespace
}  // namespace sdstack::models
