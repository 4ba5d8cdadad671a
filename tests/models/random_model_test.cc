// Random-weight models: RandomWeightSource's values and bookkeeping, the presets (SD 1.5's exact
// parameter counts, tiny's layout against the golden tiny-sd files), the built-in tokenizer, and
// the folder write_random_model makes (round trip, atomicity, determinism).
#include "models/random_model.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "base/file.h"
#include "io/model_folder.h"
#include "io/safetensors.h"
#include "models/builtin_tokenizer.h"
#include "models/clip_text_model.h"
#include "models/unet.h"
#include "models/vae.h"
#include "testing/testing.h"
#include "text/clip_tokenizer.h"

namespace sdstack::models {
namespace {

namespace fs = std::filesystem;
using sdstack::testing::golden_dir;
using sdstack::testing::have_golden;
using sdstack::testing::TempDir;

// Bitwise equality of two tensors (same dtype, shape and bytes).
bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

ModelPreset preset(const std::string& name) {
  auto found = model_preset(name);
  EXPECT_TRUE(found.is_ok()) << found.status().message();
  return found.is_ok() ? *found : ModelPreset{};
}

// ---- RandomWeightSource -----------------------------------------------------------------------

TEST(RandomWeightSourceTest, ValuesDependOnSeedAndNameNotOnRequestOrder) {
  const std::string a = "down_blocks.0.resnets.0.conv1.weight", b = "time_embedding.linear_1.weight";
  RandomWeightSource forward({.seed = 7}), backward({.seed = 7}), other_seed({.seed = 8});
  auto fa = forward.get(a, {32, 32, 3, 3}), fb = forward.get(b, {128, 32});
  auto bb = backward.get(b, {128, 32}), ba = backward.get(a, {32, 32, 3, 3});
  ASSERT_TRUE(fa.is_ok() && fb.is_ok() && ba.is_ok() && bb.is_ok());
  EXPECT_TRUE(same_bits(*fa, *ba));
  EXPECT_TRUE(same_bits(*fb, *bb));
  auto oa = other_seed.get(a, {32, 32, 3, 3});
  ASSERT_TRUE(oa.is_ok());
  EXPECT_FALSE(same_bits(*fa, *oa));
  // A second request for a name returns what was recorded, not a new draw.
  auto again = forward.get(a, {32, 32, 3, 3});
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(again->raw_data(), fa->raw_data());
  EXPECT_EQ(forward.recorded().size(), 2u);
}

TEST(RandomWeightSourceTest, InitialisesLikePyTorch) {
  RandomWeightSource source({.seed = 1, .dtype = DType::kF32});
  // Linear [out, in]: uniform(-1/sqrt(in), 1/sqrt(in)); its std is bound / sqrt(3).
  auto linear = source.get("mid_block.attentions.0.proj_out.weight", {256, 64});
  ASSERT_TRUE(linear.is_ok());
  EXPECT_EQ(linear->dtype(), DType::kF32);
  double sum = 0, sum_sq = 0, largest = 0;
  for (float v : linear->to_vector()) {
    sum += v;
    sum_sq += static_cast<double>(v) * v;
    largest = std::max(largest, std::fabs(static_cast<double>(v)));
  }
  const double n = 256.0 * 64, bound = 1.0 / 8.0;
  EXPECT_LE(largest, bound);
  EXPECT_GT(largest, 0.99 * bound);
  EXPECT_NEAR(sum / n, 0.0, 0.01 * bound);
  EXPECT_NEAR(std::sqrt(sum_sq / n), bound / std::sqrt(3.0), 0.02 * bound);

  // Conv [out, in, k, k]: fan_in = in * k * k.
  auto conv = source.get("conv_in.weight", {32, 4, 3, 3});
  ASSERT_TRUE(conv.is_ok());
  for (float v : conv->to_vector()) EXPECT_LE(std::fabs(v), 1.0f / 6.0f);

  // Norms: scale 1, shift 0, whatever the norm is called.
  for (std::string norm : {"down_blocks.0.resnets.0.norm1", "text_model.final_layer_norm",
                           "encoder.mid_block.attentions.0.group_norm", "conv_norm_out"}) {
    auto gamma = source.get(norm + ".weight", {64}), beta = source.get(norm + ".bias", {64});
    ASSERT_TRUE(gamma.is_ok() && beta.is_ok());
    for (float v : gamma->to_vector()) EXPECT_EQ(v, 1.0f) << norm;
    for (float v : beta->to_vector()) EXPECT_EQ(v, 0.0f) << norm;
  }

  // Other biases: uniform(-1/sqrt(out), 1/sqrt(out)), not constant.
  auto bias = source.get("conv_in.bias", {16});
  ASSERT_TRUE(bias.is_ok());
  std::vector<float> bias_values = bias->to_vector();
  for (float v : bias_values) EXPECT_LE(std::fabs(v), 0.25f);
  EXPECT_NE(bias_values[0], bias_values[1]);

  // Embedding tables: normal(0, 0.02).
  auto embedding = source.get("text_model.embeddings.token_embedding.weight", {1000, 32});
  ASSERT_TRUE(embedding.is_ok());
  double e_sum = 0, e_sq = 0;
  for (float v : embedding->to_vector()) {
    e_sum += v;
    e_sq += static_cast<double>(v) * v;
  }
  EXPECT_NEAR(e_sum / 32000, 0.0, 0.0005);
  EXPECT_NEAR(std::sqrt(e_sq / 32000), 0.02, 0.0005);
}

TEST(RandomWeightSourceTest, StoresTheRequestedDtype) {
  RandomWeightSource f16({.seed = 3}), f32({.seed = 3, .dtype = DType::kF32});
  auto half = f16.get("fc.weight", {8, 8}), full = f32.get("fc.weight", {8, 8});
  ASSERT_TRUE(half.is_ok() && full.is_ok());
  EXPECT_EQ(half->dtype(), DType::kF16);
  EXPECT_EQ(full->dtype(), DType::kF32);
  // The f16 values are the f32 ones rounded.
  EXPECT_TRUE(same_bits(*half, full->to(DType::kF16)));
}

TEST(RandomWeightSourceTest, ContainsWhatItMadeAndRefusesAConflictingShape) {
  RandomWeightSource source;
  EXPECT_FALSE(source.contains("encoder.mid_block.attentions.0.to_q.weight"));
  EXPECT_FALSE(source.contains("encoder.mid_block.attentions.0.query.weight"));
  auto unknown = source.get("conv_in.weight");
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_NE(unknown.status().message().find("'conv_in.weight' has not been made yet"), std::string::npos);

  ASSERT_TRUE(source.get("conv_in.weight", {32, 4, 3, 3}).is_ok());
  EXPECT_TRUE(source.contains("conv_in.weight"));
  auto known = source.get("conv_in.weight");
  ASSERT_TRUE(known.is_ok());
  EXPECT_EQ(known->shape(), (Shape{32, 4, 3, 3}));
  auto conflict = source.get("conv_in.weight", {32, 4, 1, 1});
  ASSERT_FALSE(conflict.is_ok());
  EXPECT_EQ(conflict.status().message(),
            "random weights (seed 0): tensor 'conv_in.weight' was made with shape [32,4,3,3], now asked for as "
            "[32,4,1,1]");
  EXPECT_FALSE(source.get("x.weight", {0, 4}).is_ok());
}

TEST(RandomWeightSourceTest, ShapesOnlyRecordsShapesOverSharedZeros) {
  RandomWeightSource source({.shapes_only = true});
  auto a = source.get("a.weight", {1000, 1000}), b = source.get("b.weight", {10});
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  EXPECT_EQ(a->shape(), (Shape{1000, 1000}));
  EXPECT_EQ(b->at({3}), 0.0f);
  EXPECT_EQ(source.parameter_count(), 1000 * 1000 + 10);
  auto shapes = source.recorded_shapes();
  ASSERT_EQ(shapes.size(), 2u);
  EXPECT_EQ(shapes[0], (std::pair<std::string, Shape>{"a.weight", {1000, 1000}}));
}

// The VAE takes the current attention names from a fresh source (its legacy-name check asks
// contains() before anything is made).
TEST(RandomWeightSourceTest, VAEGetsCurrentAttentionNames) {
  RandomWeightSource source({.shapes_only = true});
  ASSERT_TRUE(record_component(preset("tiny"), "vae", source).is_ok());
  std::map<std::string, Shape> shapes;
  for (const auto& [name, shape] : source.recorded_shapes()) shapes[name] = shape;
  EXPECT_EQ(shapes.at("decoder.mid_block.attentions.0.to_q.weight"), (Shape{64, 64}));
  EXPECT_EQ(shapes.count("decoder.mid_block.attentions.0.query.weight"), 0u);
}

// ---- presets ------------------------------------------------------------------------------------

TEST(ModelPresetTest, ConfigsParse) {
  for (const std::string& name : model_preset_names()) {
    ModelPreset p = preset(name);
    EXPECT_EQ(p.name, name);
    EXPECT_TRUE(CLIPTextConfig::from_json(p.text_encoder, "text_encoder/config.json").is_ok()) << name;
    EXPECT_TRUE(UNet2DConditionConfig::from_json(p.unet, "unet/config.json").is_ok()) << name;
    auto vae = AutoencoderKLConfig::from_json(p.vae, "vae/config.json");
    ASSERT_TRUE(vae.is_ok()) << name;
    EXPECT_EQ(vae->scaling_factor, 0.18215) << name;
    EXPECT_EQ(p.model_index["_class_name"], "StableDiffusionPipeline");
    EXPECT_EQ(p.scheduler["_class_name"], "PNDMScheduler");
  }
  auto unknown = model_preset("sd1.5");
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_EQ(unknown.status().message(),
            "unknown model preset 'sd1.5' (did you mean 'sd15'?); the presets are tiny, sd15");
}

TEST(ModelPresetTest, SampleSizeSetsUNetAndVAE) {
  ModelPreset p = preset("sd15");
  EXPECT_EQ(p.unet["sample_size"], 64);
  EXPECT_EQ(p.vae["sample_size"], 512);
  p.set_sample_size(16);
  EXPECT_EQ(p.unet["sample_size"], 16);
  EXPECT_EQ(p.vae["sample_size"], 128);
}

// Counted through the model code itself, without allocating the weights: the totals the real
// checkpoints have (runwayml/stable-diffusion-v1-5; CLIP's without the position_ids buffer).
TEST(ModelPresetTest, SD15ParameterCountsMatchTheRealModel) {
  const std::map<std::string, int64_t> expected = {{"unet", 859520964}, {"vae", 83653863}, {"text_encoder", 123060480}};
  for (const auto& [component, count] : expected) {
    RandomWeightSource source({.shapes_only = true});
    ASSERT_TRUE(record_component(preset("sd15"), component, source).is_ok()) << component;
    EXPECT_EQ(source.parameter_count(), count) << component;
  }
}

// The tiny preset has exactly the tensors (names and shapes) of the golden tiny-sd files.
TEST(ModelPresetTest, TinyHasTheGoldenTinySDLayout) {
  if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
  const std::map<std::string, std::string> files = {{"text_encoder", "text_encoder/model.safetensors"},
                                                    {"unet", "unet/diffusion_pytorch_model.safetensors"},
                                                    {"vae", "vae/diffusion_pytorch_model.safetensors"}};
  for (const auto& [component, file] : files) {
    auto golden = io::SafetensorsFile::open(golden_dir() + "/tiny-sd/" + file);
    ASSERT_TRUE(golden.is_ok()) << golden.status().message();
    std::map<std::string, Shape> golden_shapes, our_shapes;
    for (const io::TensorInfo& info : (*golden)->tensors()) golden_shapes[info.name] = info.shape;
    RandomWeightSource source({.shapes_only = true});
    ASSERT_TRUE(record_component(preset("tiny"), component, source).is_ok());
    for (const auto& [name, shape] : source.recorded_shapes()) our_shapes[name] = shape;
    EXPECT_EQ(our_shapes, golden_shapes) << component;
  }
}

// ---- the built-in tokenizer ---------------------------------------------------------------------

TEST(BuiltinTokenizerTest, LoadsWithCLIPTokenizerAndKnowsCommonWords) {
  TempDir dir;
  ASSERT_TRUE(write_builtin_tokenizer(dir.path()).is_ok());
  auto tokenizer = text::CLIPTokenizer::load(dir.path());
  ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  EXPECT_EQ((*tokenizer)->bos_id(), kStartOfTextId);
  EXPECT_EQ((*tokenizer)->eos_id(), kEndOfTextId);
  EXPECT_EQ((*tokenizer)->tokenize("cats in hats"), (std::vector<std::string>{"cats</w>", "in</w>", "hats</w>"}));
  EXPECT_EQ((*tokenizer)->tokenize("A Photo of an Astronaut, riding a horse!").size(), 10u);
  // Words it was not built from still encode, in pieces, and every id fits CLIP's vocabulary.
  std::vector<int32_t> ids = (*tokenizer)->encode_padded("zyzzyva qwerty 1234 \xc3\xa9t\xc3\xa9 \xf0\x9f\x90\x88");
  EXPECT_EQ(ids.size(), 77u);
  for (int32_t id : ids) EXPECT_LT(id, kCLIPVocabSize);
  EXPECT_GT(make_builtin_tokenizer().merges, 300u);
  EXPECT_EQ(make_builtin_tokenizer().vocab_json, make_builtin_tokenizer().vocab_json);
}

// ---- write_random_model -------------------------------------------------------------------------

class WriteRandomModelTest : public ::testing::Test {
 protected:
  std::string target() const { return dir_.file("model"); }
  // Entries of the temp dir other than the model itself (leftover temporary folders).
  std::vector<std::string> leftovers() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_.path())) {
      if (entry.path().filename() != "model") names.push_back(entry.path().filename().string());
    }
    return names;
  }
  TempDir dir_;
};

TEST_F(WriteRandomModelTest, WritesADiffusersFolderThatReloadsBitForBit) {
  auto summary = write_random_model(preset("tiny"), target(), {.seed = 5, .sample_size = 8});
  ASSERT_TRUE(summary.is_ok()) << summary.status().message();
  EXPECT_EQ(summary->dir, target());
  EXPECT_EQ(summary->parameters, 1634400 + 2446788 + 1399879);
  EXPECT_TRUE(leftovers().empty());
  for (const char* file :
       {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "text_encoder/config.json",
        "unet/config.json", "vae/config.json"}) {
    EXPECT_TRUE(base::file_exists(base::join_path(target(), file))) << file;
  }

  auto folder = io::ModelFolder::open(target());
  ASSERT_TRUE(folder.is_ok()) << folder.status().message();
  EXPECT_EQ(folder->components(), (std::vector<std::string>{"scheduler", "text_encoder", "tokenizer", "unet", "vae"}));
  auto unet_config = folder->config("unet");
  ASSERT_TRUE(unet_config.is_ok());
  EXPECT_EQ((*unet_config)["sample_size"], 8);
  // Every component's file holds exactly what a fresh source with the same seed makes.
  for (const std::string& component : weight_components()) {
    auto weights = folder->weights(component);
    ASSERT_TRUE(weights.is_ok()) << weights.status().message();
    RandomWeightSource fresh({.seed = 5});
    ASSERT_TRUE(record_component(preset("tiny"), component, fresh).is_ok());
    const auto recorded = fresh.recorded();
    EXPECT_EQ(weights->names().size(), recorded.size()) << component;
    for (const auto& [name, tensor] : recorded) {
      auto stored = weights->get(name);
      ASSERT_TRUE(stored.is_ok()) << stored.status().message();
      EXPECT_TRUE(same_bits(*stored, tensor)) << name;
    }
  }
}

// The same seed gives the same bytes; another seed other weights (the configs stay the same).
TEST_F(WriteRandomModelTest, IsDeterministic) {
  ASSERT_TRUE(write_random_model(preset("tiny"), dir_.file("a"), {.seed = 1}).is_ok());
  ASSERT_TRUE(write_random_model(preset("tiny"), dir_.file("b"), {.seed = 1}).is_ok());
  ASSERT_TRUE(write_random_model(preset("tiny"), dir_.file("c"), {.seed = 2}).is_ok());
  for (std::string file : {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                           "tokenizer/vocab.json", "unet/config.json"}) {
    auto a = base::read_file(dir_.file("a/" + file)), b = base::read_file(dir_.file("b/" + file));
    auto c = base::read_file(dir_.file("c/" + file));
    ASSERT_TRUE(a.is_ok() && b.is_ok() && c.is_ok());
    EXPECT_EQ(*a, *b) << file;
    if (file.find("safetensors") != std::string::npos) {
      EXPECT_NE(*a, *c) << file;
    } else {
      EXPECT_EQ(*a, *c) << file;
    }
  }
}

TEST_F(WriteRandomModelTest, F32WeightsOnRequest) {
  ASSERT_TRUE(write_random_model(preset("tiny"), target(), {.dtype = DType::kF32}).is_ok());
  auto file = io::SafetensorsFile::open(target() + "/vae/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(file.is_ok());
  for (const io::TensorInfo& info : (*file)->tensors()) EXPECT_EQ(info.dtype, DType::kF32) << info.name;
}

TEST_F(WriteRandomModelTest, RefusesANonEmptyFolderUnlessForced) {
  fs::create_directories(target());
  sdstack::testing::write_text_file(target() + "/notes.txt", "mine");
  auto refused = write_random_model(preset("tiny"), target(), {});
  ASSERT_FALSE(refused.is_ok());
  EXPECT_EQ(refused.status().message(),
            target() + ": exists and is not empty; refusing to overwrite it (--force replaces it)");
  EXPECT_TRUE(base::file_exists(target() + "/notes.txt"));
  EXPECT_TRUE(leftovers().empty());

  auto forced = write_random_model(preset("tiny"), target(), {.force = true});
  ASSERT_TRUE(forced.is_ok()) << forced.status().message();
  EXPECT_FALSE(base::file_exists(target() + "/notes.txt"));
  EXPECT_TRUE(base::file_exists(target() + "/model_index.json"));
  EXPECT_TRUE(leftovers().empty());
}

TEST_F(WriteRandomModelTest, FillsAnEmptyFolderAndRefusesAFile) {
  fs::create_directories(target());
  ASSERT_TRUE(write_random_model(preset("tiny"), target(), {}).is_ok());
  EXPECT_TRUE(base::file_exists(target() + "/unet/config.json"));

  sdstack::testing::write_text_file(dir_.file("file"), "x");
  auto refused = write_random_model(preset("tiny"), dir_.file("file"), {.force = true});
  ASSERT_FALSE(refused.is_ok());
  EXPECT_EQ(refused.status().message(), dir_.file("file") + ": exists and is not a folder");
}

// A config the model code refuses fails before anything is written.
TEST_F(WriteRandomModelTest, BadConfigLeavesNothingBehind) {
  ModelPreset broken = preset("tiny");
  broken.unet["norm_num_groups"] = 7;  // 32 channels do not split into 7 groups
  auto result = write_random_model(broken, target(), {});
  ASSERT_FALSE(result.is_ok());
  EXPECT_NE(result.status().message().find("groups"), std::string::npos) << result.status().message();
  EXPECT_FALSE(fs::exists(target()));
  EXPECT_TRUE(leftovers().empty());
}

// ---- the models on random weights ---------------------------------------------------------------

// The cpu backend agrees with the reference backend on the tiny random UNet (one call).
TEST(RandomModelNumericsTest, CpuAndReferenceAgreeOnTheTinyUNet) {
  ModelPreset tiny = preset("tiny");
  auto config = UNet2DConditionConfig::from_json(tiny.unet, "unet/config.json");
  ASSERT_TRUE(config.is_ok());
  RandomWeightSource weights({.seed = 11});
  auto cpu = backend::make_backend("cpu"), reference = backend::make_backend("reference");
  ASSERT_TRUE(cpu.is_ok() && reference.is_ok());
  auto fast = UNet2DConditionModel::create(*config, weights, **cpu);
  auto oracle = UNet2DConditionModel::create(*config, weights, **reference);
  ASSERT_TRUE(fast.is_ok() && oracle.is_ok());

  Tensor sample = sdstack::testing::random_tensor({2, 8, 8, 4}, 1);               // NHWC latents
  Tensor context = sdstack::testing::random_tensor({2, 77, 32}, 2, -2.0f, 2.0f);  // text embeddings
  auto y_fast = (*fast)->forward(sample, 501.0f, context);
  auto y_oracle = (*oracle)->forward(sample, 501.0f, context);
  ASSERT_TRUE(y_fast.is_ok() && y_oracle.is_ok());
  ASSERT_EQ(y_fast->shape(), (Shape{2, 8, 8, 4}));
  EXPECT_LE(sdstack::testing::max_rel_diff(*y_fast, *y_oracle), 1e-4f);
  // Random weights still give an output of a sane size (no blow-up, not all zero).
  double sum_sq = 0;
  for (float v : y_fast->to_vector()) sum_sq += static_cast<double>(v) * v;
  const double rms = std::sqrt(sum_sq / static_cast<double>(y_fast->numel()));
  EXPECT_GT(rms, 1e-3);
  EXPECT_LT(rms, 10.0);
}

}  // namespace
}  // namespace sdstack::models
