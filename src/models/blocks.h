// Building blocks shared by the UNet and the VAE, as diffusers writes them (resnet.py, downsampling.py,
// upsampling.py, transformer_2d.py, attention.py): layers prepared once, looked up by their checkpoint
// prefix (`down_blocks.0.resnets.1`), run on NHWC activations.
//
// Every block holds a pointer to the backend its layers were made by; the backend must outlive it.
// forward() allocates its outputs (the models call it once per denoising step, so this is a few
// hundred allocations per step), from a BufferPool where the caller passes one (the VAE, whose
// activations are large enough for fresh pages to cost). Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/weights.h"
#include "models/buffer_pool.h"
#include "models/weight_loader.h"

namespace sdstack::models {

// diffusers' ResnetBlock2D with resnet_time_scale_shift "default":
//   h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb))   (the time term folded into conv1's bias)
//   h = conv2(silu(norm2(h)))                                (dropout is the identity at inference)
//   y = (shortcut(x) + h) / output_scale_factor              (shortcut: conv_shortcut 1x1 when in != out)
class ResnetBlock2D {
 public:
  struct Options {
    int64_t in_channels = 0;
    int64_t out_channels = 0;
    int64_t temb_channels = 0;  // 0: no time embedding (the VAE's blocks)
    int64_t groups = 32;
    float eps = 1e-5f;
    float output_scale_factor = 1.0f;
    // conv1's output (which only norm2 reads) and the block's output (the residual stream) in the
    // backend's operand dtype (bf16 in bf16 compute) rather than f32, as diffusers computes in
    // bf16: for the VAE, whose 67-268 MB activations at 512 px make the traffic count and
    // whose errors go once into 8-bit pixels (or latents). The UNet keeps f32 there: its errors
    // compound over the denoising steps, and a bf16 stream (norms reading bf16, bf16 skips and
    // concatenations) measured no faster at 512 px (bench, alternated: 1.14-1.19 s either way)
    // while it doubled three of the four golden cases' bf16-vs-f32 latent differences.
    bool operand_activations = false;
  };
  // Weights under `prefix.`: norm1, conv1, [time_emb_proj], norm2, conv2, [conv_shortcut].
  static base::Result<ResnetBlock2D> load(WeightLoader& load, const std::string& prefix, const Options& options);

  // x: [N, H, W, in]; silu_temb: silu(temb) as [1, temb_channels] (f32 or the operand dtype), one
  // timestep shared by the batch, or undefined when the block has no time embedding. Returns
  // [N, H, W, out], f32, or in the operand dtype with operand_activations. With a pool, the output
  // and the scratch come from it. x is f32, or in the backend's operand dtype where the block has a
  // shortcut conv (then only norm1 and the shortcut read it, not the residual sum) or
  // operand_activations.
  Tensor forward(const Tensor& x, const Tensor& silu_temb, BufferPool* pool = nullptr) const;

  int64_t out_channels() const { return options_.out_channels; }

 private:
  Backend* backend_ = nullptr;
  Options options_;
  NormWeights norm1_, norm2_;
  std::unique_ptr<backend::Conv2d> conv1_, conv2_, conv_shortcut_;
  std::unique_ptr<backend::Linear> time_emb_proj_;
};

// diffusers' Downsample2D with use_conv: a 3x3 stride-2 conv named `prefix.conv`. With padding 0
// diffusers first pads one zero row and column at the bottom and right (F.pad(x, (0, 1, 0, 1))).
class Downsample2D {
 public:
  static base::Result<Downsample2D> load(WeightLoader& load, const std::string& prefix, int64_t channels,
                                         int64_t padding);
  // x: [N, H, W, C] -> [N, Ho, Wo, C] in x's dtype (f32 or the backend's operand dtype);
  // Ho = ceil(H / 2) with padding 1, floor(H / 2) with padding 0.
  Tensor forward(const Tensor& x) const;

 private:
  std::unique_ptr<backend::Conv2d> conv_;
};

// diffusers' Upsample2D with use_conv: nearest-neighbour upsampling, then a 3x3 conv `prefix.conv`.
class Upsample2D {
 public:
  static base::Result<Upsample2D> load(WeightLoader& load, const std::string& prefix, int64_t channels);
  // x: [N, H, W, C] -> [N, out_height, out_width, C]. Exactly 2x unless the UNet asks for the size of
  // an odd-sized skip connection (diffusers' `upsample_size`); torch's nearest rule then picks rows.
  // With a pool, the output and the scratch come from it. The output is f32, or `output` (the
  // backend's operand dtype) where the caller's next block only normalises and convolves it.
  Tensor forward(const Tensor& x, int64_t out_height, int64_t out_width, BufferPool* pool = nullptr,
                 tensor::DType output = tensor::DType::kF32) const;

 private:
  Backend* backend_ = nullptr;
  std::unique_ptr<backend::Conv2d> conv_;
};

// diffusers' Transformer2DModel for continuous input, as SD's UNet uses it:
//   h = proj_in(norm(x))                       (GroupNorm eps 1e-6; proj_in a Linear or a 1x1 conv)
//   h = transformer_blocks[i](h, context)      (BasicTransformerBlock: self-attn, cross-attn, GEGLU MLP)
//   y = proj_out(h) + x
// In NHWC a 1x1 conv is a linear over the channels, so both projections run as Linear layers;
// the checkpoint's shapes ([C, C] or [C, C, 1, 1]) follow `use_linear_projection`.
class Transformer2DModel {
 public:
  struct Options {
    int64_t channels = 0;             // in = inner = out channels (heads * head_dim)
    int64_t heads = 8;
    int64_t cross_attention_dim = 768;
    int64_t layers = 1;               // transformer_layers_per_block
    int64_t groups = 32;
    bool use_linear_projection = false;
  };
  static base::Result<Transformer2DModel> load(WeightLoader& load, const std::string& prefix, const Options& options);
  ~Transformer2DModel();
  Transformer2DModel(Transformer2DModel&&) noexcept;
  Transformer2DModel& operator=(Transformer2DModel&&) noexcept;

  // x: [N, H, W, C]; context: [N, L, cross_attention_dim] (the text embeddings; f32 or the backend's
  // operand dtype). Returns [N, H, W, C].
  Tensor forward(const Tensor& x, const Tensor& context) const;

 private:
  struct BasicTransformerBlock;
  Transformer2DModel() = default;

  Backend* backend_ = nullptr;
  Options options_;
  NormWeights norm_;
  std::unique_ptr<backend::Linear> proj_in_, proj_out_;
  std::vector<BasicTransformerBlock> transformer_blocks_;
};

// A [out, in] linear weight that older checkpoints store as a 1x1 conv [out, in, 1, 1] (the VAE's
// attention in SD 1.x-era files): either shape is accepted. `prefix.bias` [out] when `bias`.
base::Result<std::unique_ptr<backend::Linear>> load_linear_or_1x1(const io::WeightSource& weights, WeightLoader& load,
                                                                  const std::string& prefix, int64_t in, int64_t out,
                                                                  bool bias = true);

}  // namespace sdstack::models
