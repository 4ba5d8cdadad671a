// The bench's FLOP counter: exact on a small text encoder worked out by hand, and SD 1.5's UNet at
// 512x512 against the 1606 GFLOP the issue quotes. Counting allocates no weights, so it is fast.
#include "pipeline/bench.h"

#include <cmath>
#include <cstdio>

#include "models/presets.h"
#include "testing/testing.h"

namespace sdstack::pipeline {
namespace {

TEST(BenchFlopsTest, TextEncoderMatchesTheHandCount) {
  models::CLIPTextConfig config;
  config.vocab_size = 100;
  config.hidden_size = 32;
  config.intermediate_size = 64;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.max_position_embeddings = 8;
  const double batch = 2, length = 8, hidden = 32, intermediate = 64, layers = 2;
  // Per layer and sequence: q, k, v, out_proj (4 L h^2), fc1 + fc2 (2 L h I), q k^T and p v
  // (2 L^2 h, the causal mask counted as full). FLOPs are 2x the multiply-adds.
  const double per_layer =
      4 * length * hidden * hidden + 2 * length * hidden * intermediate + 2 * length * length * hidden;
  auto flops = clip_text_flops(config, 2, 8);
  ASSERT_TRUE(flops.is_ok()) << flops.status().message();
  EXPECT_DOUBLE_EQ(*flops, 2 * batch * layers * per_layer);
}

TEST(BenchFlopsTest, SD15UNetAt512IsAbout1606Gflop) {
  auto preset = models::model_preset("sd15");
  ASSERT_TRUE(preset.is_ok()) << preset.status().message();
  auto config = models::UNet2DConditionConfig::from_json(preset->unet, "unet/config.json");
  ASSERT_TRUE(config.is_ok()) << config.status().message();
  auto flops = unet_flops(*config, 2, 64, 64, 77);
  ASSERT_TRUE(flops.is_ok()) << flops.status().message();
  const double gflop = *flops / 1e9;
  std::printf("SD 1.5 UNet, 512x512, batch 2: %.1f GFLOP\n", gflop);
  EXPECT_NEAR(gflop, 1606.0, 0.03 * 1606.0);
}

TEST(BenchFlopsTest, FlopsScaleWithBatch) {
  auto preset = models::model_preset("tiny");
  ASSERT_TRUE(preset.is_ok()) << preset.status().message();
  auto config = models::AutoencoderKLConfig::from_json(preset->vae, "vae/config.json");
  ASSERT_TRUE(config.is_ok()) << config.status().message();
  auto one = vae_decode_flops(*config, 1, 8, 8);
  auto two = vae_decode_flops(*config, 2, 8, 8);
  ASSERT_TRUE(one.is_ok() && two.is_ok());
  EXPECT_GT(*one, 0);
  EXPECT_DOUBLE_EQ(*two, 2 * *one);
}

}  // namespace
}  // namespace sdstack::pipeline
