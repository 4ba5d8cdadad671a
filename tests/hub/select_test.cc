// Choosing a pipeline's files from a repo listing as diffusers does, glob patterns, and the
// SHA-256 that verifies downloads.
#include "hub/select.h"

#include <nlohmann/json.hpp>

#include "base/sha256.h"
#include "testing/testing.h"

namespace sdstack {
namespace {

using hub::glob_match;
using hub::select_pipeline_files;

const nlohmann::json kIndex = {{"_class_name", "StableDiffusionPipeline"},
                               {"unet", {"diffusers", "UNet2DConditionModel"}},
                               {"text_encoder", {"transformers", "CLIPTextModel"}},
                               {"tokenizer", {"transformers", "CLIPTokenizer"}},
                               {"scheduler", {"diffusers", "PNDMScheduler"}},
                               {"safety_checker", {"stable_diffusion", "StableDiffusionSafetyChecker"}},
                               {"image_encoder", {nullptr, nullptr}},
                               {"requires_safety_checker", true}};

std::vector<std::string> select(const std::vector<std::string>& files, hub::SelectOptions options = {}) {
  auto selected = select_pipeline_files("org/model", kIndex, files, options);
  EXPECT_TRUE(selected.is_ok()) << selected.status().message();
  return selected.is_ok() ? *selected : std::vector<std::string>{};
}

const std::vector<std::string> kBase = {"model_index.json",         "scheduler/scheduler_config.json",
                                        "text_encoder/config.json", "tokenizer/merges.txt",
                                        "tokenizer/vocab.json",     "unet/config.json"};

std::vector<std::string> with(std::vector<std::string> files, const std::vector<std::string>& more) {
  files.insert(files.end(), more.begin(), more.end());
  std::sort(files.begin(), files.end());
  return files;
}

TEST(SelectTest, SafetensorsOverPicklesAndNoExtras) {
  std::vector<std::string> repo =
      with(kBase, {"unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
                   "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                   "unet/diffusion_flax_model.msgpack", "text_encoder/model.safetensors",
                   "text_encoder/pytorch_model.bin", "safety_checker/config.json", "safety_checker/model.safetensors",
                   "v1-5-pruned-emaonly.ckpt", "v1-5-pruned.safetensors", "README.md"});
  EXPECT_EQ(select(repo), with(kBase, {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}));
  EXPECT_EQ(select(repo, {.variant = "fp16"}),
            with(kBase, {"unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.safetensors"}));
}

TEST(SelectTest, ShardsAndTheirIndexOfTheChosenVariant) {
  std::vector<std::string> repo =
      with(kBase, {"unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                   "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
                   "unet/diffusion_pytorch_model.safetensors.index.json",
                   "unet/diffusion_pytorch_model.fp16-00001-of-00001.safetensors",
                   "unet/diffusion_pytorch_model.safetensors.index.fp16.json", "text_encoder/model.safetensors"});
  EXPECT_EQ(
      select(repo, {.variant = "fp16"}),
      with(kBase, {"unet/diffusion_pytorch_model.fp16-00001-of-00001.safetensors",
                   "unet/diffusion_pytorch_model.safetensors.index.fp16.json", "text_encoder/model.safetensors"}));
  EXPECT_EQ(select(repo).size(), kBase.size() + 4);
}

TEST(SelectTest, TheOnlyVariantWhenThereIsNoDefault) {
  std::vector<std::string> repo =
      with(kBase, {"unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors"});
  EXPECT_EQ(select(repo), repo);
}

TEST(SelectTest, ErrorsNameTheComponentAndTheWayOut) {
  std::vector<std::string> pickles =
      with(kBase, {"unet/diffusion_pytorch_model.bin", "text_encoder/model.safetensors"});
  auto result = select_pipeline_files("org/model", kIndex, pickles, {});
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            "org/model: 'unet' has no .safetensors weights, only diffusion_pytorch_model.bin; sdstack does not load "
            "pickle or other formats. Pull another revision (--revision), or take these files anyway with --include "
            "'unet/*'");
  EXPECT_TRUE(select_pipeline_files("org/model", kIndex, pickles, {.include = {"unet/*.bin"}}).is_ok());

  std::vector<std::string> variants =
      with(kBase, {"unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.ema.safetensors",
                   "text_encoder/model.safetensors"});
  result = select_pipeline_files("org/model", kIndex, variants, {});
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            "org/model: 'unet' has no default weights, only the variants ema, fp16; choose one with --variant");

  std::vector<std::string> no_vae = kBase;
  nlohmann::json index = kIndex;
  index["vae"] = {"diffusers", "AutoencoderKL"};
  result = select_pipeline_files("org/model", index, with(no_vae, {"unet/diffusion_pytorch_model.safetensors"}), {});
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            "org/model: model_index.json lists the component 'vae' but the repository has no vae/ folder; is this "
            "revision complete?");
}

TEST(SelectTest, IncludeAddsAndExcludeRemovesLast) {
  std::vector<std::string> repo = with(
      kBase, {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
              "safety_checker/config.json", "safety_checker/model.safetensors", "safety_checker/pytorch_model.bin"});
  std::vector<std::string> expected =
      with(kBase, {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                   "safety_checker/config.json", "safety_checker/model.safetensors"});
  expected.erase(std::find(expected.begin(), expected.end(), "tokenizer/merges.txt"));
  EXPECT_EQ(select(repo, {.include = {"safety_checker/"}, .exclude = {"*.bin", "tokenizer/merges.txt"}}), expected);
}

TEST(GlobTest, MatchesAsFnmatch) {
  EXPECT_TRUE(glob_match("*.safetensors", "unet/diffusion_pytorch_model.safetensors"));  // '*' crosses '/'
  EXPECT_TRUE(glob_match("unet/*", "unet/config.json"));
  EXPECT_FALSE(glob_match("unet/*", "vae/config.json"));
  EXPECT_TRUE(glob_match("unet/", "unet/config.json"));
  EXPECT_TRUE(glob_match("model_index.json", "model_index.json"));
  EXPECT_TRUE(glob_match("*.fp16.*", "vae/diffusion_pytorch_model.fp16.safetensors"));
  EXPECT_TRUE(glob_match("?ae/*", "vae/x"));
  EXPECT_TRUE(glob_match("[tu]*/config.json", "unet/config.json"));
  EXPECT_FALSE(glob_match("[!tu]*/config.json", "unet/config.json"));
  EXPECT_FALSE(glob_match("*.bin", "unet/diffusion_pytorch_model.binx"));
}

TEST(Sha256Test, KnownVectors) {
  auto digest = [](const std::string& text) {
    base::Sha256 hash;
    hash.update(text.data(), text.size());
    return hash.hex_digest();
  };
  EXPECT_EQ(digest(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(digest("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // Fed in uneven pieces, the digest is the same as in one go.
  std::string million(1000000, 'a');
  base::Sha256 pieces;
  for (size_t at = 0, step = 1; at < million.size(); at += step, step = step * 7 % 1000 + 1) {
    pieces.update(million.data() + at, std::min(step, million.size() - at));
  }
  EXPECT_EQ(pieces.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

}  // namespace
}  // namespace sdstack
