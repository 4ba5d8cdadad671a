// The image autoencoder (diffusers' AutoencoderKL) of Stable Diffusion: latents to images (decode,
// txt2img) and images to latent distributions (encode, img2img and inpainting).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "io/model_folder.h"
#include "models/buffer_pool.h"
#include "models/weight_loader.h"

namespace sdstack::models {

// vae/config.json.
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t latent_channels = 4;
  std::vector<int64_t> block_out_channels;  // one per down (and up) block
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  double scaling_factor = 0.18215;
  bool mid_block_add_attention = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;

  // From vae/config.json; `source` names the file in errors. Block types other than
  // DownEncoderBlock2D / UpDecoderBlock2D and activations other than SiLU are errors naming the key.
  static base::Result<AutoencoderKLConfig> from_json(const nlohmann::json& json, const std::string& source);
};

// What the encoder says about an image: diffusers' DiagonalGaussianDistribution, in NHWC.
struct LatentDistribution {
  Tensor mean;    // [B, h, w, latent_channels]
  Tensor logvar;  // [B, h, w, latent_channels], clamped to [-30, 20] as diffusers does

  // exp(0.5 * logvar), a new tensor.
  Tensor std() const;
  // mean + std * noise; `noise` is NHWC like `mean` (diffusers draws it as NCHW randn of the
  // latent shape: convert with nchw_to_nhwc to reproduce its samples).
  Tensor sample(const Tensor& noise) const;
};

// Encoder (conv_in, down blocks, mid block with attention, conv_norm_out, conv_out, quant_conv)
// and decoder (post_quant_conv, conv_in, mid block, up blocks, conv_norm_out, conv_out). Weights
// are looked up by their checkpoint names; the mid-block attention may use the current names
// (to_q/to_k/to_v/to_out.0) or SD 1.x-era ones (query/key/value/proj_attn, as [C, C] or 1x1 conv
// weights). Holds a reference to the backend, which must outlive it. Not thread-safe.
class AutoencoderKL {
 public:
  // Which halves to load: txt2img only decodes, and the encoder is a third of the weights.
  enum class Parts { kEncoderAndDecoder, kDecoderOnly };

  // Loads `vae/` of a diffusers folder (`variant` "fp16" picks the .fp16 weight files).
  static base::Result<std::unique_ptr<AutoencoderKL>> load(const io::ModelFolder& folder, Backend& backend,
                                                           const std::string& variant = "",
                                                           Parts parts = Parts::kEncoderAndDecoder);
  static base::Result<std::unique_ptr<AutoencoderKL>> create(const AutoencoderKLConfig& config,
                                                             const io::WeightSource& weights, Backend& backend,
                                                             Parts parts = Parts::kEncoderAndDecoder);
  ~AutoencoderKL();

  // latents: NHWC [B, h, w, latent_channels], already divided by scaling_factor(). Returns the raw
  // image NHWC [B, h * 2^(n-1), w * 2^(n-1), out_channels] (8x for SD's 4 blocks), about [-1, 1]
  // but unclamped.
  base::Result<Tensor> decode(const Tensor& latents);
  // image: NHWC [B, H, W, in_channels] in [-1, 1]. Returns the latent distribution of size
  // [B, H / 2^(n-1), W / 2^(n-1), latent_channels] (each halving rounds down), not yet multiplied by
  // scaling_factor(). Errors: a model loaded with Parts::kDecoderOnly.
  base::Result<LatentDistribution> encode_distribution(const Tensor& image);
  // encode_distribution(image).mean: what diffusers' `latent_dist.mode()` gives.
  base::Result<Tensor> encode(const Tensor& image);

  // The large activation buffers decode and encode reuse: kept from call to call (a decode at 512 px
  // pools ~1 GB, which each call would otherwise map and page-fault afresh, ~10% of a decode), and
  // freed with the model or by release_buffers().
  size_t buffer_bytes() const { return pool_.pooled_bytes(); }
  void release_buffers() { pool_ = BufferPool(); }

  float scaling_factor() const { return static_cast<float>(config_.scaling_factor); }
  const AutoencoderKLConfig& config() const { return config_; }

 private:
  struct Encoder;
  struct Decoder;
  AutoencoderKL(const AutoencoderKLConfig& config, Backend& backend);

  AutoencoderKLConfig config_;
  Backend& backend_;
  std::unique_ptr<Encoder> encoder_;
  std::unique_ptr<Decoder> decoder_;
  std::unique_ptr<backend::Conv2d> quant_conv_, post_quant_conv_;  // 1x1; absent when the config turns them off
  BufferPool pool_;
};

}  // namespace sdstack::models
