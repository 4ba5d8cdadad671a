// AutoencoderKL: the decoder against diffusers' golden vae_decode_raw (every case on the cpu backend,
// one on the reference backend); the encoder (no golden data exists for it) checked by the two
// backends against each other, by shapes, determinism and its distribution; SD 1.x-era attention
// names; config and weight errors.
//
// Tolerance: max |ours - diffusers| <= 1e-4 on the raw image (std ~0.5; f32 on both sides in
// different summation orders through ~30 layers at up to 64x64x32). Backends against each other:
// max_abs_diff <= 1e-4 likewise.
#include "models/vae.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "io/npy.h"
#include "io/safetensors.h"
#include "tensor/layout.h"
#include "testing/testing.h"

namespace sdstack::models {
namespace {

using sdstack::testing::golden_dir;
using sdstack::testing::read_json;
using sdstack::testing::read_npy_checked;
using sdstack::testing::have_golden;
using sdstack::testing::max_abs_diff;
using sdstack::testing::random_tensor;

constexpr float kVAETolerance = 1e-4f;

class VAEGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
    manifest_ = read_json(golden_dir() + "/manifest.json");
    auto folder = io::ModelFolder::open(golden_dir() + "/tiny-sd");
    ASSERT_TRUE(folder.is_ok()) << folder.status().message();
    folder_ = std::make_unique<io::ModelFolder>(std::move(folder).value());
    cpu_ = std::move(backend::make_backend("cpu").value());
    reference_ = std::move(backend::make_backend("reference").value());
  }

  std::unique_ptr<AutoencoderKL> load(Backend& backend) {
    auto model = AutoencoderKL::load(*folder_, backend);
    EXPECT_TRUE(model.is_ok()) << model.status().message();
    return model.is_ok() ? std::move(model).value() : nullptr;
  }

  // final_latents / scaling_factor as NHWC, and diffusers' raw decode (NCHW).
  std::pair<Tensor, Tensor> decode_case(const nlohmann::json& c, float scaling_factor) {
    const std::string dir = golden_dir() + "/" + c["dir"].get<std::string>() + "/";
    Tensor latents = read_npy_checked(dir + "final_latents.npy");
    float* values = latents.data<float>();
    for (int64_t i = 0; i < latents.numel(); ++i) values[i] /= scaling_factor;  // as the pipeline divides
    return {tensor::nchw_to_nhwc(latents), read_npy_checked(dir + "vae_decode_raw.npy")};
  }

  nlohmann::json manifest_;
  std::unique_ptr<io::ModelFolder> folder_;
  std::unique_ptr<Backend> cpu_, reference_;
};

TEST_F(VAEGoldenTest, DecodeMatchesDiffusersForEveryCaseOnCpu) {
  std::unique_ptr<AutoencoderKL> vae = load(*cpu_);
  ASSERT_NE(vae, nullptr);
  EXPECT_FLOAT_EQ(vae->scaling_factor(), 0.18215f);
  float worst = 0.0f;
  int compared = 0;
  for (const nlohmann::json& c : manifest_["cases"]) {
    SCOPED_TRACE(c["id"].get<std::string>());
    auto [latents, expected] = decode_case(c, vae->scaling_factor());
    auto image = vae->decode(latents);
    ASSERT_TRUE(image.is_ok()) << image.status().message();
    EXPECT_EQ(image->shape(), (Shape{latents.dim(0), 8 * latents.dim(1), 8 * latents.dim(2), 3}));
    const Tensor actual = tensor::nhwc_to_nchw(*image);
    ASSERT_EQ(actual.shape(), expected.shape());
    const float diff = max_abs_diff(actual, expected);
    EXPECT_LE(diff, kVAETolerance);
    worst = std::max(worst, diff);
    ++compared;
  }
  EXPECT_GE(compared, 10);  // including the non-square and the batch-2 cases
  std::cout << "[ VAE decode cpu ] " << compared << " cases, max |ours - diffusers| = " << worst << "\n";
}

TEST_F(VAEGoldenTest, DecoderOnlyDecodesTheSameAndRefusesToEncode) {
  std::unique_ptr<AutoencoderKL> full = load(*cpu_);
  auto loaded = AutoencoderKL::load(*folder_, *cpu_, "", AutoencoderKL::Parts::kDecoderOnly);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().message();
  std::unique_ptr<AutoencoderKL> decoder_only = std::move(loaded).value();
  ASSERT_NE(full, nullptr);
  auto [latents, expected] = decode_case(manifest_["cases"][0], full->scaling_factor());
  auto a = full->decode(latents);
  auto b = decoder_only->decode(latents);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  EXPECT_EQ(a->to_vector(), b->to_vector());  // the same layers on the same backend: bit for bit

  auto encoded = decoder_only->encode(random_tensor({1, 64, 64, 3}, 7));
  ASSERT_FALSE(encoded.is_ok());
  EXPECT_NE(encoded.status().message().find("vae: loaded for decoding only"), std::string::npos)
      << encoded.status().message();
}

// The decoder's large activations (the tiny VAE's 32 channels at 384 x 512 are 25 MB) come from a
// pool the model keeps: a second decode reuses it without growing it, the images it returned
// before stay intact, and releasing it changes nothing but the memory held.
TEST_F(VAEGoldenTest, KeepsItsActivationBuffersFromDecodeToDecode) {
  std::unique_ptr<AutoencoderKL> vae = load(*cpu_);
  ASSERT_NE(vae, nullptr);
  EXPECT_EQ(vae->buffer_bytes(), 0u);
  const Tensor latents = random_tensor({1, 48, 64, 4}, 11);
  auto first = vae->decode(latents);
  ASSERT_TRUE(first.is_ok()) << first.status().message();
  const size_t pooled = vae->buffer_bytes();
  EXPECT_GE(pooled, size_t{384 * 512 * 32 * 4});
  const std::vector<float> first_values = first->to_vector();

  auto second = vae->decode(latents);
  ASSERT_TRUE(second.is_ok()) << second.status().message();
  EXPECT_EQ(vae->buffer_bytes(), pooled);
  EXPECT_EQ(first->to_vector(), first_values);  // not overwritten by the second decode
  EXPECT_EQ(second->to_vector(), first_values);

  vae->release_buffers();
  EXPECT_EQ(vae->buffer_bytes(), 0u);
  auto third = vae->decode(latents);
  ASSERT_TRUE(third.is_ok()) << third.status().message();
  EXPECT_EQ(third->to_vector(), first_values);
}

TEST_F(VAEGoldenTest, DecodeMatchesDiffusersOnReference) {
  std::unique_ptr<AutoencoderKL> vae = load(*reference_);
  ASSERT_NE(vae, nullptr);
  for (const nlohmann::json& c : manifest_["cases"]) {
    if (c["id"] != "pndm_cfg7.5_s4_h64w128") continue;  // non-square
    auto [latents, expected] = decode_case(c, vae->scaling_factor());
    auto image = vae->decode(latents);
    ASSERT_TRUE(image.is_ok()) << image.status().message();
    const float diff = max_abs_diff(tensor::nhwc_to_nchw(*image), expected);
    EXPECT_LE(diff, kVAETolerance);
    std::cout << "[ VAE decode reference ] max |ours - diffusers| = " << diff << "\n";
    return;
  }
  FAIL() << "golden case pndm_cfg7.5_s4_h64w128 not found";
}

// The encoder has no golden data: the cpu and reference backends must agree (the reference
// backend being the oracle that the decoder test ties to diffusers), on an image whose size is not
// a multiple of 8 (each Downsample2D pads right and bottom, then rounds down).
TEST_F(VAEGoldenTest, EncodeBackendsAgreeAndShapesFollowDiffusers) {
  std::unique_ptr<AutoencoderKL> cpu_vae = load(*cpu_), ref_vae = load(*reference_);
  ASSERT_NE(cpu_vae, nullptr);
  ASSERT_NE(ref_vae, nullptr);
  const Tensor image = random_tensor({2, 44, 60, 3}, 11);  // in [-1, 1)
  auto a = cpu_vae->encode_distribution(image);
  auto b = ref_vae->encode_distribution(image);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  EXPECT_EQ(a->mean.shape(), (Shape{2, 5, 7, 4}));  // 44 -> 22 -> 11 -> 5, 60 -> 30 -> 15 -> 7
  EXPECT_EQ(a->logvar.shape(), a->mean.shape());
  EXPECT_LE(max_abs_diff(a->mean, b->mean), kVAETolerance);
  EXPECT_LE(max_abs_diff(a->logvar, b->logvar), kVAETolerance);
  for (float logvar : a->logvar.to_vector()) {
    EXPECT_GE(logvar, -30.0f);
    EXPECT_LE(logvar, 20.0f);
  }
}

// Decode a golden case's latents, encode the image again: deterministic, of the latents' shape,
// and the distribution's sample() is mean + std * noise.
TEST_F(VAEGoldenTest, EncodeOfDecodedImageIsDeterministicWithTheLatentShape) {
  std::unique_ptr<AutoencoderKL> vae = load(*cpu_);
  ASSERT_NE(vae, nullptr);
  auto [latents, expected] = decode_case(manifest_["cases"][0], vae->scaling_factor());
  auto image = vae->decode(latents);
  ASSERT_TRUE(image.is_ok());
  auto first = vae->encode_distribution(*image);
  auto second = vae->encode_distribution(*image);
  ASSERT_TRUE(first.is_ok() && second.is_ok());
  EXPECT_EQ(first->mean.shape(), latents.shape());
  EXPECT_EQ(max_abs_diff(first->mean, second->mean), 0.0f);
  EXPECT_EQ(max_abs_diff(first->logvar, second->logvar), 0.0f);
  auto mean = vae->encode(*image);
  ASSERT_TRUE(mean.is_ok());
  EXPECT_EQ(max_abs_diff(*mean, first->mean), 0.0f);

  const Tensor std = first->std();
  const Tensor noise = random_tensor(latents.shape(), 12);
  const Tensor sample = first->sample(noise);
  EXPECT_EQ(max_abs_diff(first->sample(Tensor::zeros(latents.shape())), first->mean), 0.0f);
  const std::vector<float> m = first->mean.to_vector(), s = std.to_vector(), lv = first->logvar.to_vector();
  const std::vector<float> e = noise.to_vector(), x = sample.to_vector();
  for (size_t i = 0; i < m.size(); ++i) {
    EXPECT_NEAR(s[i], std::exp(0.5f * lv[i]), 1e-6f * s[i]);
    EXPECT_NEAR(x[i], m[i] + s[i] * e[i], 1e-5f);
  }
}

// bf16 compute keeps every VAE activation (the residual stream included) in bf16: the decode of a
// golden case and the encode of an image whose size is not a multiple of 8 stay within bf16's noise
// of the f32 results, and differ from them by more than f32's own (so bf16 ran). ~30 layers of
// bf16 rounding (2^-9 relative each) measured max 0.029 on the raw image (std ~0.5) and 0.012 on
// the latent mean (0.022 and 0.014 with the residual stream in f32); the bounds are ~3.5x that. A
// wrong operand, a lost residual or a bf16 tensor read as f32 moves them by O(0.1..1). Skipped
// without native bf16.
TEST_F(VAEGoldenTest, Bf16DecodeAndEncodeStayCloseToF32) {
  auto made = backend::make_backend("cpu", {.compute_dtype = tensor::DType::kBF16});
  if (!made.is_ok()) SD_SKIP_WITHOUT_NATIVE_BF16(made.status().message());
  std::unique_ptr<Backend> bf16 = std::move(made).value();
  std::unique_ptr<AutoencoderKL> vae = load(*bf16), f32_vae = load(*cpu_);
  ASSERT_NE(vae, nullptr);
  ASSERT_NE(f32_vae, nullptr);
  auto [latents, expected] = decode_case(manifest_["cases"][0], vae->scaling_factor());
  auto image = vae->decode(latents);
  auto f32_image = f32_vae->decode(latents);
  ASSERT_TRUE(image.is_ok() && f32_image.is_ok());
  ASSERT_EQ(image->dtype(), tensor::DType::kF32);
  const float decode_diff = max_abs_diff(*image, *f32_image);
  const Tensor to_encode = random_tensor({2, 44, 60, 3}, 13);
  auto encoded = vae->encode_distribution(to_encode);
  auto f32_encoded = f32_vae->encode_distribution(to_encode);
  ASSERT_TRUE(encoded.is_ok() && f32_encoded.is_ok());
  const float mean_diff = max_abs_diff(encoded->mean, f32_encoded->mean);
  std::printf("[ vae bf16 ] max |bf16 - f32|: decoded image %.3g, encoded mean %.3g\n", decode_diff, mean_diff);
  EXPECT_LE(decode_diff, 0.1f);
  EXPECT_GT(decode_diff, 1e-4f) << "no bf16 rounding visible: did this run in f32?";
  EXPECT_LE(mean_diff, 0.04f);
  EXPECT_GT(mean_diff, 1e-5f) << "no bf16 rounding visible: did this run in f32?";
}

TEST_F(VAEGoldenTest, RejectsMisshapenInputs) {
  std::unique_ptr<AutoencoderKL> vae = load(*cpu_);
  ASSERT_NE(vae, nullptr);
  auto decoded = vae->decode(Tensor::zeros({1, 4, 8, 8}));  // NCHW by mistake
  ASSERT_FALSE(decoded.is_ok());
  EXPECT_NE(decoded.status().message().find("[1,4,8,8]"), std::string::npos) << decoded.status().message();
  auto encoded = vae->encode(Tensor::zeros({1, 64, 64, 4}));
  ASSERT_FALSE(encoded.is_ok());
  EXPECT_NE(encoded.status().message().find("image"), std::string::npos) << encoded.status().message();
}

// ---- weight names and errors ------------------------------------------------------------------

// The tiny VAE's tensors, renamed or reshaped, written to a new file and loaded.
class VAEWeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
    auto file = io::SafetensorsFile::open(golden_dir() + "/tiny-sd/vae/diffusion_pytorch_model.safetensors");
    ASSERT_TRUE(file.is_ok()) << file.status().message();
    for (const io::TensorInfo& info : (*file)->tensors()) tensors_.emplace_back(info.name, (*file)->tensor(info));
    config_json_ = read_json(golden_dir() + "/tiny-sd/vae/config.json");
    backend_ = std::move(backend::make_backend("cpu").value());
  }

  base::Result<std::unique_ptr<AutoencoderKL>> load_with(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                                         const std::string& name) {
    const std::string path = dir_.file(name + ".safetensors");
    SD_RETURN_IF_ERROR(io::write_safetensors(path, tensors));
    SD_ASSIGN_OR_RETURN(io::WeightSet weights, io::WeightSet::open({path}));
    SD_ASSIGN_OR_RETURN(AutoencoderKLConfig config, AutoencoderKLConfig::from_json(config_json_, "vae/config.json"));
    return AutoencoderKL::create(config, weights, *backend_);
  }

  sdstack::testing::TempDir dir_;
  std::vector<std::pair<std::string, Tensor>> tensors_;
  nlohmann::json config_json_;
  std::unique_ptr<Backend> backend_;
};

// SD 1.x-era checkpoints: query/key/value/proj_attn, as [C, C] (decoder here) or as 1x1 convs
// [C, C, 1, 1] (encoder here). The same numbers must come out as with the current names.
TEST_F(VAEWeightsTest, OldAttentionNamesAndConvShapedWeightsGiveTheSameResults) {
  const std::map<std::string, std::string> renames = {
      {"to_q", "query"}, {"to_k", "key"}, {"to_v", "value"}, {"to_out.0", "proj_attn"}};
  std::vector<std::pair<std::string, Tensor>> old_style;
  int renamed = 0;
  for (const auto& [name, tensor] : tensors_) {
    std::string new_name = name;
    Tensor value = tensor;
    for (const auto& [current, old] : renames) {
      const std::string marker = "mid_block.attentions.0." + current + ".";
      const size_t at = name.find(marker);
      if (at == std::string::npos) continue;
      new_name = name.substr(0, at) + "mid_block.attentions.0." + old + "." + name.substr(at + marker.size());
      if (name.rfind("encoder.", 0) == 0 && tensor.rank() == 2) {
        value = tensor.reshape({tensor.dim(0), tensor.dim(1), 1, 1});
      }
      ++renamed;
    }
    old_style.emplace_back(new_name, value);
  }
  EXPECT_EQ(renamed, 16);  // 4 projections x (weight, bias) x (encoder, decoder)

  auto current = load_with(tensors_, "current");
  auto old = load_with(old_style, "old");
  ASSERT_TRUE(current.is_ok()) << current.status().message();
  ASSERT_TRUE(old.is_ok()) << old.status().message();
  const Tensor latents = random_tensor({1, 6, 5, 4}, 21, -3.0f, 3.0f);
  auto a = (*current)->decode(latents);
  auto b = (*old)->decode(latents);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  EXPECT_EQ(max_abs_diff(*a, *b), 0.0f);
  auto ea = (*current)->encode(*a);
  auto eb = (*old)->encode(*a);
  ASSERT_TRUE(ea.is_ok() && eb.is_ok());
  EXPECT_EQ(max_abs_diff(*ea, *eb), 0.0f);
}

TEST_F(VAEWeightsTest, MissingTensorIsNamed) {
  const std::string victim = "decoder.up_blocks.2.resnets.1.norm2.weight";
  std::vector<std::pair<std::string, Tensor>> kept;
  for (const auto& entry : tensors_) {
    if (entry.first != victim) kept.push_back(entry);
  }
  ASSERT_EQ(kept.size() + 1, tensors_.size());
  auto model = load_with(kept, "missing");
  ASSERT_FALSE(model.is_ok());
  EXPECT_NE(model.status().message().find("missing tensor '" + victim + "'"), std::string::npos)
      << model.status().message();
}

TEST_F(VAEWeightsTest, MisshapenAttentionWeightIsNamedWithBothShapes) {
  const std::string victim = "encoder.mid_block.attentions.0.to_k.weight";
  for (auto& entry : tensors_) {
    if (entry.first == victim) entry.second = Tensor::zeros({64, 32}, tensor::DType::kF16);
  }
  auto model = load_with(tensors_, "misshapen");
  ASSERT_FALSE(model.is_ok());
  EXPECT_NE(model.status().message().find("tensor '" + victim + "' has shape [64,32], expected [64,64]"),
            std::string::npos)
      << model.status().message();
}

TEST(VAEConfigTest, UnknownBlockTypesAreNamed) {
  if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
  nlohmann::json json = read_json(golden_dir() + "/tiny-sd/vae/config.json");
  auto config = AutoencoderKLConfig::from_json(json, "vae/config.json");
  ASSERT_TRUE(config.is_ok()) << config.status().message();
  EXPECT_EQ(config->block_out_channels, (std::vector<int64_t>{32, 32, 64, 64}));
  EXPECT_EQ(config->latent_channels, 4);

  json["up_block_types"][2] = "AttnUpDecoderBlock2D";
  auto status = AutoencoderKLConfig::from_json(json, "vae/config.json").status();
  EXPECT_EQ(status.message(),
            "vae/config.json: key 'up_block_types' has 'AttnUpDecoderBlock2D' (block 2); sdstack supports only "
            "'UpDecoderBlock2D'");

  json = read_json(golden_dir() + "/tiny-sd/vae/config.json");
  json["act_fn"] = "gelu";
  status = AutoencoderKLConfig::from_json(json, "vae/config.json").status();
  EXPECT_EQ(status.message(), "vae/config.json: key 'act_fn' is 'gelu'; sdstack supports only 'silu'");
}

}  // namespace
}  // namespace sdstack::models
