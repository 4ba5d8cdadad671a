// Model presets, written as the config files they become (diffusers' and transformers' own keys).
#include "models/presets.h"

#include "base/strings.h"

namespace sdstack::models {
namespace {

// The pipeline index both presets share: SD 1.x's components, saved without the safety checker.
constexpr const char* kModelIndex = R"json({
  "_class_name": "StableDiffusionPipeline",
  "_diffusers_version": "0.25.1",
  "feature_extractor": [null, null],
  "image_encoder": [null, null],
  "requires_safety_checker": false,
  "safety_checker": [null, null],
  "scheduler": ["diffusers", "PNDMScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
})json";

// SD 1.5's scheduler/scheduler_config.json, verbatim.
constexpr const char* kScheduler = R"json({
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null,
  "clip_sample": false
})json";

// ---- tiny: the golden tests' tiny-sd (diffusers 0.25.1, transformers 4.30.0) --------------------

constexpr const char* kTinyTextEncoder = R"json({
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 32,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 128,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 4,
  "num_hidden_layers": 4,
  "pad_token_id": 1,
  "projection_dim": 32,
  "torch_dtype": "float16",
  "transformers_version": "4.30.0",
  "vocab_size": 49408
})json";

constexpr const char* kTinyUNet = R"json({
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.25.1",
  "act_fn": "silu",
  "addition_embed_type": null,
  "addition_embed_type_num_heads": 64,
  "addition_time_embed_dim": null,
  "attention_head_dim": 8,
  "attention_type": "default",
  "block_out_channels": [32, 32, 64, 64],
  "center_input_sample": false,
  "class_embed_type": null,
  "class_embeddings_concat": false,
  "conv_in_kernel": 3,
  "conv_out_kernel": 3,
  "cross_attention_dim": 32,
  "cross_attention_norm": null,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "dropout": 0.0,
  "dual_cross_attention": false,
  "encoder_hid_dim": null,
  "encoder_hid_dim_type": null,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_only_cross_attention": null,
  "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2DCrossAttn",
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "num_attention_heads": null,
  "num_class_embeds": null,
  "only_cross_attention": false,
  "out_channels": 4,
  "projection_class_embeddings_input_dim": null,
  "resnet_out_scale_factor": 1.0,
  "resnet_skip_time_act": false,
  "resnet_time_scale_shift": "default",
  "reverse_transformer_layers_per_block": null,
  "sample_size": 8,
  "time_cond_proj_dim": null,
  "time_embedding_act_fn": null,
  "time_embedding_dim": null,
  "time_embedding_type": "positional",
  "timestep_post_act": null,
  "transformer_layers_per_block": 1,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "upcast_attention": false,
  "use_linear_projection": false
})json";

constexpr const char* kTinyVAE = R"json({
  "_class_name": "AutoencoderKL",
  "_diffusers_version": "0.25.1",
  "act_fn": "silu",
  "block_out_channels": [32, 32, 64, 64],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "force_upcast": true,
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 64,
  "scaling_factor": 0.18215,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
})json";

// ---- sd15: runwayml/stable-diffusion-v1-5 ------------------------------------------------------

// openai/clip-vit-large-patch14's text tower, as the SD 1.5 folder saves it.
constexpr const char* kSD15TextEncoder = R"json({
  "_name_or_path": "openai/clip-vit-large-patch14",
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "torch_dtype": "float32",
  "transformers_version": "4.22.0.dev0",
  "vocab_size": 49408
})json";

constexpr const char* kSD15UNet = R"json({
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.6.0",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
})json";

// Written by diffusers 0.6.0, before `scaling_factor` existed: readers take its default, 0.18215.
constexpr const char* kSD15VAE = R"json({
  "_class_name": "AutoencoderKL",
  "_diffusers_version": "0.6.0",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 512,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
})json";

struct PresetText {
  const char* name;
  const char* description;
  const char* text_encoder;
  const char* unet;
  const char* vae;
};

const PresetText kPresets[] = {
    {"tiny", "the tiny-sd test topology (UNet 32/32/64/64, CLIP hidden 32), about 5 M parameters", kTinyTextEncoder,
     kTinyUNet, kTinyVAE},
    {"sd15", "runwayml/stable-diffusion-v1-5 (UNet 860 M, VAE 84 M, CLIP ViT-L/14 text 123 M parameters)",
     kSD15TextEncoder, kSD15UNet, kSD15VAE},
};

}  // namespace

void ModelPreset::set_sample_size(int64_t latent_size) {
  unet["sample_size"] = latent_size;
  // The VAE's images are 2^(blocks - 1) times the latents (8x for SD's four blocks).
  const int64_t blocks = static_cast<int64_t>(vae.value("block_out_channels", nlohmann::json::array()).size());
  vae["sample_size"] = latent_size << (blocks > 0 ? blocks - 1 : 0);
}

std::vector<std::string> model_preset_names() {
  std::vector<std::string> names;
  for (const PresetText& preset : kPresets) names.push_back(preset.name);
  return names;
}

base::Result<ModelPreset> model_preset(const std::string& name) {
  for (const PresetText& text : kPresets) {
    if (name != text.name) continue;
    // The texts are constants checked by the tests; a parse error here is a programmer error.
    ModelPreset preset;
    preset.name = text.name;
    preset.description = text.description;
    preset.model_index = nlohmann::json::parse(kModelIndex);
    preset.scheduler = nlohmann::json::parse(kScheduler);
    preset.text_encoder = nlohmann::json::parse(text.text_encoder);
    preset.unet = nlohmann::json::parse(text.unet);
    preset.vae = nlohmann::json::parse(text.vae);
    return preset;
  }
  return base::invalid_argument("unknown model preset '" + name + "'" + base::did_you_mean(name, model_preset_names()) +
                                "; the presets are " + base::join(model_preset_names(), ", "));
}

}  // namespace sdstack::models
