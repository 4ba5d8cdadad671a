// ModelFolder: model_index.json, component configs, and which weight files diffusers would load.
#include "io/model_folder.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "base/file.h"
#include "testing/testing.h"

namespace sdstack::io {
namespace {

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "'\n  does not contain\n'" << part << "'";
}

const char kModelIndex[] = R"({
  "_class_name": "StableDiffusionPipeline",
  "_diffusers_version": "0.25.1",
  "feature_extractor": [null, null],
  "requires_safety_checker": false,
  "safety_checker": [null, null],
  "scheduler": ["diffusers", "PNDMScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
})";

// A diffusers folder with model_index.json and empty component folders; tests add the files.
class ModelFolderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::write_text_file(dir_.file("model_index.json"), kModelIndex);
    for (const char* component : {"scheduler", "text_encoder", "tokenizer", "unet", "vae"}) {
      std::filesystem::create_directories(dir_.file(component));
    }
  }
  void add_weights(const std::string& relative, const std::string& tensor_name = "w") {
    base::Status status = write_safetensors(dir_.file(relative), {{tensor_name, Tensor::zeros({2})}});
    ASSERT_TRUE(status.is_ok()) << status.message();
  }
  ModelFolder open() {
    auto folder = ModelFolder::open(dir_.path());
    EXPECT_TRUE(folder.is_ok()) << folder.status().message();
    return std::move(folder).value();
  }
  // weight_files() as paths relative to the folder.
  std::vector<std::string> chosen(const std::string& component, const std::string& variant = "") {
    auto files = open().weight_files(component, variant);
    EXPECT_TRUE(files.is_ok()) << files.status().message();
    if (!files.is_ok()) return {};
    std::vector<std::string> relative;
    for (const std::string& path : *files) relative.push_back(path.substr(dir_.path().size() + 1));
    return relative;
  }
  std::string error(const std::string& component, const std::string& variant = "") {
    auto files = open().weight_files(component, variant);
    EXPECT_FALSE(files.is_ok());
    return files.is_ok() ? "" : files.status().message();
  }

  testing::TempDir dir_;
};

TEST_F(ModelFolderTest, FolderWithoutModelIndexIsExplained) {
  testing::TempDir empty;
  auto folder = ModelFolder::open(empty.path());
  ASSERT_FALSE(folder.is_ok());
  EXPECT_EQ(folder.status().code(), base::StatusCode::kNotFound);
  EXPECT_TRUE(contains(folder.status().message(),
                       empty.path() + " is not a diffusers model folder: no model_index.json (expected "
                                      "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"));
  EXPECT_TRUE(contains(folder.status().message(), "sdstack pull"));
  auto nowhere = ModelFolder::open(empty.file("nowhere"));
  ASSERT_FALSE(nowhere.is_ok());
  EXPECT_TRUE(contains(nowhere.status().message(), empty.file("nowhere")));
}

TEST_F(ModelFolderTest, BadModelIndexNamesTheFile) {
  testing::write_text_file(dir_.file("model_index.json"), "{\"unet\": [\"diffusers\",}");
  auto folder = ModelFolder::open(dir_.path());
  ASSERT_FALSE(folder.is_ok());
  EXPECT_TRUE(contains(folder.status().message(), dir_.file("model_index.json") + ":1:23: not valid JSON: "));
  testing::write_text_file(dir_.file("model_index.json"), "{\n  \"unet\": [\"diffusers\",\n  ]\n}\n");
  folder = ModelFolder::open(dir_.path());
  ASSERT_FALSE(folder.is_ok());
  EXPECT_TRUE(contains(folder.status().message(), dir_.file("model_index.json") + ":3:3: not valid JSON: "));
  testing::write_text_file(dir_.file("model_index.json"), "[]");
  folder = ModelFolder::open(dir_.path());
  ASSERT_FALSE(folder.is_ok());
  EXPECT_TRUE(
      contains(folder.status().message(), dir_.file("model_index.json") + ": is array, expected a JSON object"));
}

TEST_F(ModelFolderTest, ComponentsAreThoseWithAClass) {
  ModelFolder folder = open();
  EXPECT_EQ(folder.components(), (std::vector<std::string>{"scheduler", "text_encoder", "tokenizer", "unet", "vae"}));
  EXPECT_TRUE(folder.has_component("unet"));
  EXPECT_FALSE(folder.has_component("safety_checker"));
  EXPECT_FALSE(folder.has_component("_class_name"));
  EXPECT_EQ(folder.component_dir("vae"), dir_.file("vae"));
  EXPECT_EQ(folder.model_index()["_class_name"], "StableDiffusionPipeline");
}

TEST_F(ModelFolderTest, ConfigFileDependsOnTheComponent) {
  testing::write_text_file(dir_.file("unet/config.json"), R"({"in_channels": 4})");
  testing::write_text_file(dir_.file("scheduler/scheduler_config.json"), R"({"_class_name": "PNDMScheduler"})");
  testing::write_text_file(dir_.file("tokenizer/tokenizer_config.json"), R"({"model_max_length": 77})");
  testing::write_text_file(dir_.file("vae/config.json"), R"({"in_channels": 3,)");
  ModelFolder folder = open();
  auto unet = folder.config("unet");
  ASSERT_TRUE(unet.is_ok()) << unet.status().message();
  EXPECT_EQ((*unet)["in_channels"], 4);
  EXPECT_EQ((*folder.config("scheduler"))["_class_name"], "PNDMScheduler");
  EXPECT_EQ((*folder.config("tokenizer"))["model_max_length"], 77);

  auto vae = folder.config("vae");
  ASSERT_FALSE(vae.is_ok());
  EXPECT_TRUE(contains(vae.status().message(), dir_.file("vae/config.json") + ":1:19: not valid JSON"));
  auto text_encoder = folder.config("text_encoder");
  ASSERT_FALSE(text_encoder.is_ok());
  EXPECT_TRUE(contains(text_encoder.status().message(), dir_.file("text_encoder/config.json") + ": no such file"));
  auto typo = folder.config("unett");
  ASSERT_FALSE(typo.is_ok());
  EXPECT_TRUE(contains(typo.status().message(), "no component 'unett' (did you mean 'unet'?)"));
}

TEST_F(ModelFolderTest, PlainWeightsByTheirDiffusersNames) {
  add_weights("unet/diffusion_pytorch_model.safetensors");
  add_weights("text_encoder/model.safetensors");
  add_weights("unet/diffusion_pytorch_model.fp16.safetensors");
  EXPECT_EQ(chosen("unet"), (std::vector<std::string>{"unet/diffusion_pytorch_model.safetensors"}));
  EXPECT_EQ(chosen("text_encoder"), (std::vector<std::string>{"text_encoder/model.safetensors"}));
  auto weights = open().weights("text_encoder");
  ASSERT_TRUE(weights.is_ok()) << weights.status().message();
  EXPECT_TRUE(weights->contains("w"));
}

TEST_F(ModelFolderTest, Fp16VariantWhenAskedAndPresent) {
  add_weights("unet/diffusion_pytorch_model.safetensors");
  add_weights("unet/diffusion_pytorch_model.fp16.safetensors");
  EXPECT_EQ(chosen("unet", "fp16"), (std::vector<std::string>{"unet/diffusion_pytorch_model.fp16.safetensors"}));
}

TEST_F(ModelFolderTest, Fp16AskedButAbsentFallsBackWithAWarning) {
  add_weights("unet/diffusion_pytorch_model.safetensors");
  ::testing::internal::CaptureStderr();
  std::vector<std::string> files = chosen("unet", "fp16");
  std::string warning = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(files, (std::vector<std::string>{"unet/diffusion_pytorch_model.safetensors"}));
  EXPECT_TRUE(contains(warning, "warning: "));
  EXPECT_TRUE(contains(warning, "no fp16 weights; using unet/diffusion_pytorch_model.safetensors"));
}

// A pipeline resolves each component's files when it opens the folder and again when it loads
// the component: the fallback is reported once per component.
TEST_F(ModelFolderTest, Fp16FallbackIsReportedOncePerComponent) {
  add_weights("unet/diffusion_pytorch_model.safetensors");
  add_weights("vae/diffusion_pytorch_model.safetensors");
  auto folder = open();
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 2; ++i) {
    for (const char* component : {"unet", "vae"}) ASSERT_TRUE(folder.weight_files(component, "fp16").is_ok());
  }
  const std::string warnings = ::testing::internal::GetCapturedStderr();
  int count = 0;
  for (size_t at = warnings.find("no fp16 weights"); at != std::string::npos;
       at = warnings.find("no fp16 weights", at + 1)) {
    ++count;
  }
  EXPECT_EQ(count, 2) << warnings;
}

TEST_F(ModelFolderTest, OnlyVariantIsUsedWhenNoneIsAsked) {
  add_weights("unet/diffusion_pytorch_model.fp16.safetensors");
  add_weights("unet/diffusion_pytorch_model.bin");  // never chosen over safetensors
  EXPECT_EQ(chosen("unet"), (std::vector<std::string>{"unet/diffusion_pytorch_model.fp16.safetensors"}));
  add_weights("unet/diffusion_pytorch_model.bf16.safetensors");
  EXPECT_TRUE(contains(error("unet"), "no default weights, only the variants bf16, fp16; choose one with --variant"));
}

TEST_F(ModelFolderTest, ShardedIndexGivesItsShards) {
  add_weights("unet/diffusion_pytorch_model-00001-of-00002.safetensors", "a");
  add_weights("unet/diffusion_pytorch_model-00002-of-00002.safetensors", "b");
  testing::write_text_file(dir_.file("unet/diffusion_pytorch_model.safetensors.index.json"), R"({
    "metadata": {"total_size": 16},
    "weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                   "b": "diffusion_pytorch_model-00002-of-00002.safetensors",
                   "c": "diffusion_pytorch_model-00001-of-00002.safetensors"}})");
  EXPECT_EQ(chosen("unet"), (std::vector<std::string>{"unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                                                      "unet/diffusion_pytorch_model-00002-of-00002.safetensors"}));
  auto weights = open().weights("unet");
  ASSERT_TRUE(weights.is_ok()) << weights.status().message();
  EXPECT_EQ(weights->names(), (std::vector<std::string>{"a", "b"}));
}

TEST_F(ModelFolderTest, ShardedFp16Index) {
  add_weights("unet/diffusion_pytorch_model.safetensors");
  add_weights("unet/diffusion_pytorch_model-00001-of-00001.fp16.safetensors");
  testing::write_text_file(dir_.file("unet/diffusion_pytorch_model.fp16.safetensors.index.json"),
                           R"({"weight_map": {"w": "diffusion_pytorch_model-00001-of-00001.fp16.safetensors"}})");
  EXPECT_EQ(chosen("unet", "fp16"),
            (std::vector<std::string>{"unet/diffusion_pytorch_model-00001-of-00001.fp16.safetensors"}));
  // diffusers' own spelling of the variant index name is found as well.
  std::filesystem::rename(dir_.file("unet/diffusion_pytorch_model.fp16.safetensors.index.json"),
                          dir_.file("unet/diffusion_pytorch_model.safetensors.fp16.index.json"));
  EXPECT_EQ(chosen("unet", "fp16"),
            (std::vector<std::string>{"unet/diffusion_pytorch_model-00001-of-00001.fp16.safetensors"}));
}

TEST_F(ModelFolderTest, IndexNamingAMissingShardIsAnError) {
  add_weights("unet/diffusion_pytorch_model-00001-of-00002.safetensors", "a");
  std::string index = dir_.file("unet/diffusion_pytorch_model.safetensors.index.json");
  testing::write_text_file(index, R"({"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                                                    "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}})");
  std::string message = error("unet");
  EXPECT_TRUE(contains(message, index +
                                    " names shard 'diffusion_pytorch_model-00002-of-00002.safetensors', which is "
                                    "missing from " +
                                    dir_.file("unet")));
}

TEST_F(ModelFolderTest, IndexMayNotPointOutsideTheFolder) {
  add_weights("vae/diffusion_pytorch_model.safetensors");
  testing::write_text_file(dir_.file("unet/diffusion_pytorch_model.safetensors.index.json"),
                           R"({"weight_map": {"a": "../vae/diffusion_pytorch_model.safetensors"}})");
  EXPECT_TRUE(contains(error("unet"),
                       "shard '../vae/diffusion_pytorch_model.safetensors' is not a .safetensors file "
                       "name in the same folder"));
  testing::write_text_file(dir_.file("unet/diffusion_pytorch_model.safetensors.index.json"), R"({"metadata": {}})");
  EXPECT_TRUE(contains(error("unet"), "no \"weight_map\""));
}

TEST_F(ModelFolderTest, PickleOnlyComponentIsRefused) {
  testing::write_text_file(dir_.file("unet/diffusion_pytorch_model.bin"), "not really a pickle");
  std::string message = error("unet");
  EXPECT_EQ(message, dir_.file("unet") +
                         ": only pickle weights found (diffusion_pytorch_model.bin); sdstack does not load pickle "
                         "files because unpickling can run arbitrary code. Convert them to safetensors (e.g. with "
                         "diffusers' save_pretrained(..., safe_serialization=True)) or pull a revision that has "
                         ".safetensors");
  auto files = open().weight_files("unet");
  EXPECT_EQ(files.status().code(), base::StatusCode::kUnsupported);
  testing::write_text_file(dir_.file("vae/model.ckpt"), "x");
  testing::write_text_file(dir_.file("vae/model.pth"), "x");
  EXPECT_TRUE(contains(error("vae"), "only pickle weights found (model.ckpt, model.pth)"));
}

TEST_F(ModelFolderTest, NoWeightsNamesTheFolder) {
  EXPECT_TRUE(contains(error("unet"), dir_.file("unet") + ": no weight files (expected "
                                                          "diffusion_pytorch_model.safetensors or model.safetensors)"));
  add_weights("vae/weights.safetensors");
  EXPECT_TRUE(contains(error("vae"), "found weights.safetensors"));
  std::filesystem::remove_all(dir_.file("text_encoder"));
  EXPECT_TRUE(contains(error("text_encoder"), dir_.file("text_encoder") + ": no such folder"));
  EXPECT_TRUE(contains(error("text_encodr"), "no component 'text_encodr' (did you mean 'text_encoder'?)"));
}

TEST(ModelFolderGolden, TinySdOpens) {
  if (!testing::have_golden()) GTEST_SKIP() << "no golden data at " << testing::golden_dir();
  auto folder = ModelFolder::open(testing::golden_dir() + "/tiny-sd");
  ASSERT_TRUE(folder.is_ok()) << folder.status().message();
  EXPECT_EQ(folder->components(), (std::vector<std::string>{"scheduler", "text_encoder", "tokenizer", "unet", "vae"}));
  auto scheduler = folder->config("scheduler");
  ASSERT_TRUE(scheduler.is_ok()) << scheduler.status().message();
  EXPECT_EQ((*scheduler)["_class_name"], "PNDMScheduler");
  ASSERT_TRUE(folder->config("unet").is_ok());
  ASSERT_TRUE(folder->config("tokenizer").is_ok());

  auto text_encoder = folder->weights("text_encoder");
  ASSERT_TRUE(text_encoder.is_ok()) << text_encoder.status().message();
  auto embedding = text_encoder->get("text_model.embeddings.token_embedding.weight", {49408, 32});
  ASSERT_TRUE(embedding.is_ok()) << embedding.status().message();
  EXPECT_EQ(embedding->dtype(), DType::kF16);
  auto position_ids = text_encoder->get("text_model.embeddings.position_ids");
  ASSERT_FALSE(position_ids.is_ok());
  EXPECT_TRUE(contains(position_ids.status().message(), "has dtype I64"));

  auto unet = folder->weights("unet");
  ASSERT_TRUE(unet.is_ok()) << unet.status().message();
  auto conv_in = unet->get("conv_in.weight", {32, 4, 3, 3});
  ASSERT_TRUE(conv_in.is_ok()) << conv_in.status().message();
  auto vae = folder->weights("vae");
  ASSERT_TRUE(vae.is_ok()) << vae.status().message();
  EXPECT_TRUE(vae->contains("decoder.conv_out.weight"));
}

}  // namespace
}  // namespace sdstack::io
