// The denoising UNet (diffusers' UNet2DConditionModel) of Stable Diffusion 1.x/2.x: noisy latents,
// a timestep and text embeddings in, the predicted noise (or v) out.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "io/model_folder.h"
#include "models/weight_loader.h"

namespace sdstack::models {

// The parts of unet/config.json that SD 1.x/2.x use, resolved as diffusers resolves them.
struct UNet2DConditionConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  std::vector<std::string> down_block_types;  // "CrossAttnDownBlock2D" or "DownBlock2D"
  std::vector<std::string> up_block_types;    // "UpBlock2D" or "CrossAttnUpBlock2D"
  std::vector<int64_t> block_out_channels;
  int64_t layers_per_block = 2;
  // Per down block (the up blocks use them reversed, the mid block the last). diffusers' naming
  // quirk: `attention_head_dim` in config.json is the number of heads (num_attention_heads must be null).
  std::vector<int64_t> num_attention_heads;
  std::vector<int64_t> transformer_layers_per_block;
  std::vector<int64_t> cross_attention_dim;
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  int64_t time_embedding_dim = 0;  // block_out_channels[0] * 4 unless set
  bool use_linear_projection = false;
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1;
  int64_t conv_in_kernel = 3;
  int64_t conv_out_kernel = 3;
  bool center_input_sample = false;

  // From unet/config.json; `source` names the file in errors. Features outside SD 1.x/2.x (other
  // block types, class or added embeddings, scale-shift time conditioning, ...) are errors naming
  // the key, its value and what sdstack supports.
  static base::Result<UNet2DConditionConfig> from_json(const nlohmann::json& json, const std::string& source);
};

// The UNet: time embedding, conv_in, down blocks (resnets + cross-attention transformers +
// downsamplers), the mid block, up blocks fed by the skip connections, conv_norm_out/conv_out.
// Weights are looked up by their checkpoint names (`down_blocks.0.attentions.0.proj_in.weight`).
// Holds a reference to the backend, which must outlive it. Not thread-safe.
class UNet2DConditionModel {
 public:
  // Loads `unet/` of a diffusers folder (`variant` "fp16" picks the .fp16 weight files).
  static base::Result<std::unique_ptr<UNet2DConditionModel>> load(const io::ModelFolder& folder, Backend& backend,
                                                                  const std::string& variant = "");
  static base::Result<std::unique_ptr<UNet2DConditionModel>> create(const UNet2DConditionConfig& config,
                                                                    const io::WeightSource& weights, Backend& backend);
  ~UNet2DConditionModel();

  // sample: NHWC [B, h, w, in_channels] f32; timestep: one timestep for the whole batch (what the
  // pipeline passes: diffusers expands it over the batch); encoder_hidden_states: [B, L,
  // cross_attention_dim] (with guidance the batch is [uncond..., cond...], like `sample`).
  // Returns NHWC [B, h, w, out_channels]. Errors: shapes that do not fit the model.
  base::Result<Tensor> forward(const Tensor& sample, float timestep, const Tensor& encoder_hidden_states);

  const UNet2DConditionConfig& config() const { return config_; }

 private:
  struct DownBlock;
  struct MidBlock;
  struct UpBlock;
  UNet2DConditionModel(const UNet2DConditionConfig& config, Backend& backend);

  // get_timestep_embedding + time_embedding, then SiLU (all its users apply one): [1, temb], in the
  // backend's operand dtype (only the resnets' time_emb_proj linears read it).
  Tensor time_embedding(float timestep);

  UNet2DConditionConfig config_;
  Backend& backend_;
  std::unique_ptr<backend::Linear> time_embedding_linear_1_, time_embedding_linear_2_;
  std::unique_ptr<backend::Conv2d> conv_in_;
  std::vector<std::unique_ptr<DownBlock>> down_blocks_;
  std::unique_ptr<MidBlock> mid_block_;
  std::vector<std::unique_ptr<UpBlock>> up_blocks_;
  NormWeights conv_norm_out_;
  std::unique_ptr<backend::Conv2d> conv_out_;
};

}  // namespace sdstack::models
