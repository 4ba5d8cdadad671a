// WeightSet: lookups by checkpoint name and shape, shards, and the messages a mismatch produces.
#include "io/weights.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "testing/testing.h"

namespace sdstack::io {
namespace {

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "'\n  does not contain\n'" << part << "'";
}

// dir/unet/diffusion_pytorch_model.safetensors with a conv_in layer.
std::string write_unet(const testing::TempDir& dir) {
  std::filesystem::create_directories(dir.file("unet"));
  std::string path = dir.file("unet/diffusion_pytorch_model.safetensors");
  base::Status status = write_safetensors(path, {{"conv_in.weight", testing::random_tensor({32, 4, 3, 3}, 1)},
                                                 {"conv_out.weight", testing::random_tensor({4, 32, 3, 3}, 2)},
                                                 {"conv_out.bias", testing::random_tensor({4}, 3)}});
  EXPECT_TRUE(status.is_ok()) << status.message();
  return path;
}

TEST(Weights, DisplayPathIsTheLastTwoComponents) {
  EXPECT_EQ(display_path("/models/sd15/unet/diffusion_pytorch_model.safetensors"),
            "unet/diffusion_pytorch_model.safetensors");
  EXPECT_EQ(display_path("model.safetensors"), "model.safetensors");
  EXPECT_EQ(display_path("/model.safetensors"), "/model.safetensors");
  EXPECT_EQ(display_path("/a/b/"), "a/b");
}

TEST(Weights, GetChecksTheShape) {
  testing::TempDir dir;
  auto weights = WeightSet::open({write_unet(dir)});
  ASSERT_TRUE(weights.is_ok()) << weights.status().message();
  EXPECT_EQ(weights->source(), "unet/diffusion_pytorch_model.safetensors");
  EXPECT_TRUE(weights->contains("conv_in.weight"));
  EXPECT_EQ(weights->names().size(), 3u);

  auto good = weights->get("conv_in.weight", {32, 4, 3, 3});
  ASSERT_TRUE(good.is_ok());
  EXPECT_EQ(good->to_vector(), testing::random_tensor({32, 4, 3, 3}, 1).to_vector());

  auto bad = weights->get("conv_in.weight", {32, 4, 1, 1});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), base::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(),
            "unet/diffusion_pytorch_model.safetensors: tensor 'conv_in.weight' has shape [32,4,3,3], expected "
            "[32,4,1,1]");
}

TEST(Weights, MissingTensorSuggestsTheClosestName) {
  testing::TempDir dir;
  auto weights = WeightSet::open({write_unet(dir)});
  ASSERT_TRUE(weights.is_ok());
  auto missing = weights->get("conv_in.bias", {32});
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), base::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(),
            "unet/diffusion_pytorch_model.safetensors: missing tensor 'conv_in.bias' (did you mean 'conv_in.weight'?)");
  auto typo = weights->get("conv_out.wieght");
  ASSERT_FALSE(typo.is_ok());
  EXPECT_TRUE(contains(typo.status().message(), "(did you mean 'conv_out.weight'?)"));
  auto unrelated = weights->get("time_embedding.linear_1.weight");
  ASSERT_FALSE(unrelated.is_ok());
  EXPECT_EQ(unrelated.status().message(),
            "unet/diffusion_pytorch_model.safetensors: missing tensor 'time_embedding.linear_1.weight'");
}

TEST(Weights, ShardsFormOneSet) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir.file("unet"));
  std::string a = dir.file("unet/diffusion_pytorch_model-00001-of-00002.safetensors");
  std::string b = dir.file("unet/diffusion_pytorch_model-00002-of-00002.safetensors");
  ASSERT_TRUE(write_safetensors(a, {{"x", Tensor::zeros({2})}}).is_ok());
  ASSERT_TRUE(write_safetensors(b, {{"y", Tensor::zeros({3}, DType::kF16)}}).is_ok());
  auto weights = WeightSet::open({a, b});
  ASSERT_TRUE(weights.is_ok()) << weights.status().message();
  EXPECT_EQ(weights->names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(weights->source(), "2 shards in " + display_path(dir.file("unet")));
  auto y = weights->get("y", {3});
  ASSERT_TRUE(y.is_ok());
  EXPECT_EQ(y->dtype(), DType::kF16);
  auto wrong = weights->get("y", {4});
  ASSERT_FALSE(wrong.is_ok());
  EXPECT_TRUE(
      contains(wrong.status().message(), "unet/diffusion_pytorch_model-00002-of-00002.safetensors: tensor 'y'"));
}

TEST(Weights, DuplicateTensorAcrossShardsNamesBothFiles) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir.file("unet"));
  std::string a = dir.file("unet/diffusion_pytorch_model-00001-of-00002.safetensors");
  std::string b = dir.file("unet/diffusion_pytorch_model-00002-of-00002.safetensors");
  ASSERT_TRUE(write_safetensors(a, {{"x", Tensor::zeros({2})}, {"dup", Tensor::zeros({1})}}).is_ok());
  ASSERT_TRUE(write_safetensors(b, {{"dup", Tensor::zeros({1})}}).is_ok());
  auto weights = WeightSet::open({a, b});
  ASSERT_FALSE(weights.is_ok());
  EXPECT_TRUE(contains(weights.status().message(),
                       "unet/diffusion_pytorch_model-00002-of-00002.safetensors: tensor 'dup' is also in "
                       "unet/diffusion_pytorch_model-00001-of-00002.safetensors"));
}

TEST(Weights, BadShardIsReportedByItsPath) {
  testing::TempDir dir;
  std::string a = dir.file("a.safetensors");
  ASSERT_TRUE(write_safetensors(a, {{"x", Tensor::zeros({2})}}).is_ok());
  auto weights = WeightSet::open({a, dir.file("missing.safetensors")});
  ASSERT_FALSE(weights.is_ok());
  EXPECT_TRUE(contains(weights.status().message(), dir.file("missing.safetensors")));
  EXPECT_FALSE(WeightSet::open({}).is_ok());
}

}  // namespace
}  // namespace sdstack::io
