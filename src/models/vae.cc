// The autoencoder, read top to bottom like diffusers' AutoencoderKL (autoencoder_kl.py) and the
// Encoder/Decoder of vae.py, with the blocks of unet_2d_blocks.py they use.
#include "models/vae.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <optional>

#include "models/blocks.h"
#include "models/config_reader.h"

namespace sdstack::models {

using backend::Activation;
using backend::Conv2dParams;
using backend::LinearExtras;
using base::Result;
using base::Status;
using tensor::DType;

namespace {

constexpr float kEps = 1e-6f;  // every norm of the VAE (resnet_eps and its group norms)

}  // namespace

// ---- config -----------------------------------------------------------------------------------

Result<AutoencoderKLConfig> AutoencoderKLConfig::from_json(const nlohmann::json& json, const std::string& source) {
  ConfigReader reader(json, source);
  AutoencoderKLConfig config;
  SD_ASSIGN_OR_RETURN(config.in_channels, reader.integer("in_channels", 3));
  SD_ASSIGN_OR_RETURN(config.out_channels, reader.integer("out_channels", 3));
  SD_ASSIGN_OR_RETURN(config.latent_channels, reader.integer("latent_channels", 4));
  SD_ASSIGN_OR_RETURN(config.block_out_channels, reader.integers("block_out_channels"));
  SD_ASSIGN_OR_RETURN(config.layers_per_block, reader.integer("layers_per_block", 1));
  SD_ASSIGN_OR_RETURN(config.norm_num_groups, reader.integer("norm_num_groups", 32));
  SD_ASSIGN_OR_RETURN(config.scaling_factor, reader.number("scaling_factor", 0.18215));
  SD_ASSIGN_OR_RETURN(config.mid_block_add_attention, reader.boolean("mid_block_add_attention", true));
  SD_ASSIGN_OR_RETURN(config.use_quant_conv, reader.boolean("use_quant_conv", true));
  SD_ASSIGN_OR_RETURN(config.use_post_quant_conv, reader.boolean("use_post_quant_conv", true));

  SD_ASSIGN_OR_RETURN(std::string act_fn, reader.string("act_fn", "silu"));
  if (act_fn != "silu") return reader.error("act_fn", "is '" + act_fn + "'; sdstack supports only 'silu'");
  if (reader.has("shift_factor")) {
    return reader.error("shift_factor", "is " + json.at("shift_factor").dump() +
                                            "; sdstack's VAE supports only null here (SD 1.x/2.x)");
  }
  const size_t blocks = config.block_out_channels.size();
  if (blocks == 0) return reader.error("block_out_channels", "is empty");
  struct BlockKey {
    const char* key;
    const char* type;
  };
  for (const BlockKey& b :
       {BlockKey{"down_block_types", "DownEncoderBlock2D"}, BlockKey{"up_block_types", "UpDecoderBlock2D"}}) {
    if (!reader.has(b.key)) continue;  // diffusers' defaults: one such block per block_out_channels
    SD_ASSIGN_OR_RETURN(std::vector<std::string> types, reader.strings(b.key));
    if (types.size() != blocks) {
      return reader.error(b.key, "has " + std::to_string(types.size()) +
                                     " entries; expected one per block_out_channels (" + std::to_string(blocks) + ")");
    }
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] != b.type) {
        return reader.error(
            b.key, "has '" + types[i] + "' (block " + std::to_string(i) + "); sdstack supports only '" + b.type + "'");
      }
    }
  }
  for (const char* key : {"in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"}) {
    SD_ASSIGN_OR_RETURN(int64_t value, reader.integer(key, 1));
    if (value <= 0) return reader.error(key, "must be positive");
  }
  for (int64_t channels : config.block_out_channels) {
    if (channels <= 0 || channels % config.norm_num_groups != 0) {
      return reader.error("block_out_channels", "has " + std::to_string(channels) + ", which norm_num_groups (" +
                                                    std::to_string(config.norm_num_groups) + ") does not divide");
    }
  }
  if (config.scaling_factor <= 0) return reader.error("scaling_factor", "must be positive");
  return config;
}

// ---- blocks -----------------------------------------------------------------------------------

namespace {

// diffusers' Attention as the VAE's mid block builds it: a group norm, then one head over all C
// channels, a residual connection:  y = to_out(attention(to_q(n), to_k(n), to_v(n))) + x, n = norm(x).
class VAEAttention {
 public:
  static Result<VAEAttention> load(const io::WeightSource& weights, WeightLoader& load, const std::string& prefix,
                                   int64_t channels, int64_t groups) {
    VAEAttention attention;
    attention.backend_ = &load.backend();
    attention.groups_ = groups;
    // SD 1.x-era files name the projections query/key/value/proj_attn (what diffusers converts).
    const bool old_names = !weights.contains(prefix + ".to_q.weight") && weights.contains(prefix + ".query.weight");
    const std::string q = old_names ? ".query" : ".to_q", k = old_names ? ".key" : ".to_k";
    const std::string v = old_names ? ".value" : ".to_v", out = old_names ? ".proj_attn" : ".to_out.0";
    SD_ASSIGN_OR_RETURN(attention.group_norm_, load.norm(prefix + ".group_norm", channels));
    SD_ASSIGN_OR_RETURN(attention.to_q_, load_linear_or_1x1(weights, load, prefix + q, channels, channels));
    SD_ASSIGN_OR_RETURN(attention.to_k_, load_linear_or_1x1(weights, load, prefix + k, channels, channels));
    SD_ASSIGN_OR_RETURN(attention.to_v_, load_linear_or_1x1(weights, load, prefix + v, channels, channels));
    SD_ASSIGN_OR_RETURN(attention.to_out_, load_linear_or_1x1(weights, load, prefix + out, channels, channels));
    return attention;
  }

  Tensor forward(const Tensor& x, BufferPool* pool) const {
    // x: [N, H, W, C] seen as the sequence [N, H*W, C].
    const int64_t n = x.dim(0), length = x.dim(1) * x.dim(2), c = x.dim(3);
    // The inputs of the linears and the attention in the backend's operand dtype (bf16 in bf16).
    const DType operand = backend_->operand_dtype();
    Tensor normed = empty_activation(pool, x.shape(), operand);
    backend_->group_norm(x, group_norm_.gamma, group_norm_.beta, groups_, kEps, Activation::kNone, normed);
    normed = normed.reshape({n, length, c});
    Tensor q = Tensor::empty({n, length, c}, operand), k = Tensor::empty({n, length, c}, operand);
    Tensor v = Tensor::empty({n, length, c}, operand);
    to_q_->run(normed, q);
    to_k_->run(normed, k);
    to_v_->run(normed, v);
    Tensor attended = Tensor::empty({n, length, c}, operand);
    backend_->attention(q, k, v, /*heads=*/1, /*causal=*/false, attended);
    Tensor y = empty_activation(pool, x.shape(), x.dtype());  // the residual stream's dtype
    Tensor y_rows = y.reshape({n, length, c});
    to_out_->run(attended, y_rows, LinearExtras{Activation::kNone, x.reshape({n, length, c})});
    return y;
  }

 private:
  Backend* backend_ = nullptr;
  int64_t groups_ = 32;
  NormWeights group_norm_;
  std::unique_ptr<backend::Linear> to_q_, to_k_, to_v_, to_out_;
};

// UNetMidBlock2D without a time embedding: resnets[0], attentions[0], resnets[1].
struct MidBlock {
  std::vector<ResnetBlock2D> resnets;
  std::optional<VAEAttention> attention;  // absent with mid_block_add_attention false

  static Result<MidBlock> load(const io::WeightSource& weights, WeightLoader& load, const std::string& prefix,
                               int64_t channels, const AutoencoderKLConfig& config) {
    MidBlock block;
    for (int j = 0; j < 2; ++j) {
      SD_ASSIGN_OR_RETURN(ResnetBlock2D r,
                          ResnetBlock2D::load(load, prefix + ".resnets." + std::to_string(j),
                                              {channels, channels, 0, config.norm_num_groups, kEps, 1.0f,
                                               /*operand_activations=*/true}));
      block.resnets.push_back(std::move(r));
    }
    if (config.mid_block_add_attention) {
      SD_ASSIGN_OR_RETURN(block.attention, VAEAttention::load(weights, load, prefix + ".attentions.0", channels,
                                                              config.norm_num_groups));
    }
    return block;
  }

  Tensor forward(const Tensor& x, BufferPool* pool) const {
    Tensor h = resnets[0].forward(x, Tensor(), pool);
    if (attention.has_value()) h = attention->forward(h, pool);
    return resnets[1].forward(h, Tensor(), pool);
  }
};

// A DownEncoderBlock2D or UpDecoderBlock2D: resnets, then a resampler but in the last block.
struct ResampleBlock {
  std::vector<ResnetBlock2D> resnets;
  std::unique_ptr<Downsample2D> downsampler;
  std::unique_ptr<Upsample2D> upsampler;
};

}  // namespace

// vae.py's Encoder: image [N, H, W, 3] -> moments [N, H/8, W/8, 2 * latent] (mean, logvar).
struct AutoencoderKL::Encoder {
  std::unique_ptr<backend::Conv2d> conv_in;
  std::vector<ResampleBlock> down_blocks;
  std::optional<MidBlock> mid_block;
  NormWeights conv_norm_out;
  std::unique_ptr<backend::Conv2d> conv_out;
};

// vae.py's Decoder: latents [N, h, w, latent] -> image [N, 8h, 8w, 3].
struct AutoencoderKL::Decoder {
  std::unique_ptr<backend::Conv2d> conv_in;
  std::optional<MidBlock> mid_block;
  std::vector<ResampleBlock> up_blocks;
  NormWeights conv_norm_out;
  std::unique_ptr<backend::Conv2d> conv_out;
};

AutoencoderKL::AutoencoderKL(const AutoencoderKLConfig& config, Backend& backend)
    : config_(config), backend_(backend) {}
AutoencoderKL::~AutoencoderKL() = default;

Result<std::unique_ptr<AutoencoderKL>> AutoencoderKL::load(const io::ModelFolder& folder, Backend& backend,
                                                           const std::string& variant, Parts parts) {
  SD_ASSIGN_OR_RETURN(nlohmann::json json, folder.config("vae"));
  SD_ASSIGN_OR_RETURN(AutoencoderKLConfig config, AutoencoderKLConfig::from_json(json, "vae/config.json"));
  SD_ASSIGN_OR_RETURN(io::WeightSet weights, folder.weights("vae", variant));
  return create(config, weights, backend, parts);
}

Result<std::unique_ptr<AutoencoderKL>> AutoencoderKL::create(const AutoencoderKLConfig& config,
                                                             const io::WeightSource& weights, Backend& backend,
                                                             Parts parts) {
  std::unique_ptr<AutoencoderKL> model(new AutoencoderKL(config, backend));
  WeightLoader load(weights, backend);
  const std::vector<int64_t>& channels = config.block_out_channels;
  const size_t blocks = channels.size();
  const int64_t latent = config.latent_channels, groups = config.norm_num_groups;
  const Conv2dParams same{1, 1}, pointwise{1, 0};
  auto resnet = [&](const std::string& prefix, int64_t in, int64_t out) {
    return ResnetBlock2D::load(load, prefix, {in, out, 0, groups, kEps, 1.0f, /*operand_activations=*/true});
  };

  // Encoder: conv_in, down blocks channels[i - 1] -> channels[i] (halving but in the last block),
  // mid block, conv_norm_out + SiLU, conv_out to 2 * latent (double_z).
  if (parts == Parts::kEncoderAndDecoder) {
    auto encoder = std::make_unique<Encoder>();
    SD_ASSIGN_OR_RETURN(encoder->conv_in, load.conv2d("encoder.conv_in", config.in_channels, channels[0], 3, same));
    int64_t out_channels = channels[0];
    for (size_t i = 0; i < blocks; ++i) {
      const std::string prefix = "encoder.down_blocks." + std::to_string(i);
      const int64_t in_channels = out_channels;
      out_channels = channels[i];
      ResampleBlock block;
      for (int64_t j = 0; j < config.layers_per_block; ++j) {
        SD_ASSIGN_OR_RETURN(ResnetBlock2D r, resnet(prefix + ".resnets." + std::to_string(j),
                                                    j == 0 ? in_channels : out_channels, out_channels));
        block.resnets.push_back(std::move(r));
      }
      if (i + 1 < blocks) {  // Downsample2D(padding=0): zero pad right and bottom, 3x3 stride 2
        SD_ASSIGN_OR_RETURN(Downsample2D d, Downsample2D::load(load, prefix + ".downsamplers.0", out_channels, 0));
        block.downsampler = std::make_unique<Downsample2D>(std::move(d));
      }
      encoder->down_blocks.push_back(std::move(block));
    }
    SD_ASSIGN_OR_RETURN(encoder->mid_block,
                        MidBlock::load(weights, load, "encoder.mid_block", channels.back(), config));
    SD_ASSIGN_OR_RETURN(encoder->conv_norm_out, load.norm("encoder.conv_norm_out", channels.back()));
    SD_ASSIGN_OR_RETURN(encoder->conv_out, load.conv2d("encoder.conv_out", channels.back(), 2 * latent, 3, same));
    model->encoder_ = std::move(encoder);
    if (config.use_quant_conv) {
      SD_ASSIGN_OR_RETURN(model->quant_conv_, load.conv2d("quant_conv", 2 * latent, 2 * latent, 1, pointwise));
    }
  }

  // Decoder: post_quant_conv, conv_in to the deepest width, mid block, up blocks over the reversed
  // widths with layers_per_block + 1 resnets (doubling but in the last block), norm, SiLU, conv_out.
  if (config.use_post_quant_conv) {
    SD_ASSIGN_OR_RETURN(model->post_quant_conv_, load.conv2d("post_quant_conv", latent, latent, 1, pointwise));
  }
  auto decoder = std::make_unique<Decoder>();
  SD_ASSIGN_OR_RETURN(decoder->conv_in, load.conv2d("decoder.conv_in", latent, channels.back(), 3, same));
  SD_ASSIGN_OR_RETURN(decoder->mid_block, MidBlock::load(weights, load, "decoder.mid_block", channels.back(), config));
  int64_t out_channels = channels.back();
  for (size_t i = 0; i < blocks; ++i) {
    const std::string prefix = "decoder.up_blocks." + std::to_string(i);
    const int64_t in_channels = out_channels;
    out_channels = channels[blocks - 1 - i];
    ResampleBlock block;
    for (int64_t j = 0; j < config.layers_per_block + 1; ++j) {
      SD_ASSIGN_OR_RETURN(ResnetBlock2D r, resnet(prefix + ".resnets." + std::to_string(j),
                                                  j == 0 ? in_channels : out_channels, out_channels));
      block.resnets.push_back(std::move(r));
    }
    if (i + 1 < blocks) {
      SD_ASSIGN_OR_RETURN(Upsample2D u, Upsample2D::load(load, prefix + ".upsamplers.0", out_channels));
      block.upsampler = std::make_unique<Upsample2D>(std::move(u));
    }
    decoder->up_blocks.push_back(std::move(block));
  }
  SD_ASSIGN_OR_RETURN(decoder->conv_norm_out, load.norm("decoder.conv_norm_out", channels[0]));
  SD_ASSIGN_OR_RETURN(decoder->conv_out, load.conv2d("decoder.conv_out", channels[0], config.out_channels, 3, same));
  model->decoder_ = std::move(decoder);
  return model;
}

// ---- decode / encode --------------------------------------------------------------------------

Result<Tensor> AutoencoderKL::decode(const Tensor& latents) {
  if (latents.rank() != 4 || latents.dim(3) != config_.latent_channels || latents.dtype() != tensor::DType::kF32) {
    return base::invalid_argument("vae: latents have shape " + latents.shape_string() + "; expected f32 [B, h, w, " +
                                  std::to_string(config_.latent_channels) + "] (NHWC)");
  }
  const Decoder& decoder = *decoder_;
  const int64_t batch = latents.dim(0);
  // The decoder's activations at 512 px are 67-268 MB each: the model's pool reuses their memory
  // from op to op and from call to call.
  BufferPool& pool = pool_;
  Tensor z = latents.is_contiguous() ? latents : latents.contiguous();  // [B, h, w, latent]
  if (post_quant_conv_ != nullptr) {
    Tensor projected = Tensor::empty(z.shape());
    post_quant_conv_->run(z, projected);
    z = projected;
  }
  // Every activation from conv_in on is in the operand dtype (bf16 in bf16 compute, as diffusers
  // computes in bf16): the decoder's largest tensors ([1, 512, 512, 128-256] at 512 px) are read
  // and written at half the memory traffic of f32.
  const DType operand = backend_.operand_dtype();
  // conv_in: [B, h, w, latent] -> [B, h, w, C_last]
  Tensor h = Tensor::empty({batch, z.dim(1), z.dim(2), config_.block_out_channels.back()}, operand);
  decoder.conv_in->run(z, h);
  h = decoder.mid_block->forward(h, &pool);
  for (const ResampleBlock& block : decoder.up_blocks) {
    for (const ResnetBlock2D& r : block.resnets) h = r.forward(h, Tensor(), &pool);
    if (block.upsampler != nullptr) h = block.upsampler->forward(h, 2 * h.dim(1), 2 * h.dim(2), &pool, operand);
  }
  // conv_out(silu(conv_norm_out(h))): [B, H, W, C0] -> [B, H, W, out], the norm in place.
  backend_.group_norm(h, decoder.conv_norm_out.gamma, decoder.conv_norm_out.beta, config_.norm_num_groups, kEps,
                      Activation::kSiLU, h);
  Tensor image = Tensor::empty({batch, h.dim(1), h.dim(2), config_.out_channels});
  decoder.conv_out->run(h, image);
  return image;
}

Result<LatentDistribution> AutoencoderKL::encode_distribution(const Tensor& image) {
  if (image.rank() != 4 || image.dim(3) != config_.in_channels || image.dtype() != tensor::DType::kF32) {
    return base::invalid_argument("vae: image has shape " + image.shape_string() + "; expected f32 [B, H, W, " +
                                  std::to_string(config_.in_channels) + "] (NHWC)");
  }
  if (encoder_ == nullptr) {
    return base::invalid_argument(
        "vae: loaded for decoding only (AutoencoderKL::Parts::kDecoderOnly); load it "
        "with its encoder to encode images");
  }
  const Encoder& encoder = *encoder_;
  const Tensor x = image.is_contiguous() ? image : image.contiguous();
  BufferPool& pool = pool_;  // as in decode
  const int64_t batch = x.dim(0), latent = config_.latent_channels;
  // conv_in: [B, H, W, in] -> [B, H, W, C0]; the activations in the operand dtype, as in decode.
  Tensor h = Tensor::empty({batch, x.dim(1), x.dim(2), config_.block_out_channels[0]}, backend_.operand_dtype());
  encoder.conv_in->run(x, h);
  for (const ResampleBlock& block : encoder.down_blocks) {
    for (const ResnetBlock2D& r : block.resnets) h = r.forward(h, Tensor(), &pool);
    if (block.downsampler != nullptr) h = block.downsampler->forward(h);
  }
  h = encoder.mid_block->forward(h, &pool);
  // moments = quant_conv(conv_out(silu(conv_norm_out(h)))): [B, h, w, 2 * latent]
  backend_.group_norm(h, encoder.conv_norm_out.gamma, encoder.conv_norm_out.beta, config_.norm_num_groups, kEps,
                      Activation::kSiLU, h);
  Tensor moments = Tensor::empty({batch, h.dim(1), h.dim(2), 2 * latent});
  encoder.conv_out->run(h, moments);
  if (quant_conv_ != nullptr) {
    Tensor quantized = Tensor::empty(moments.shape());
    quant_conv_->run(moments, quantized);
    moments = quantized;
  }

  // DiagonalGaussianDistribution: mean, logvar = moments.chunk(2, channels); logvar clamped.
  LatentDistribution dist;
  dist.mean = Tensor::empty({batch, h.dim(1), h.dim(2), latent});
  dist.logvar = Tensor::empty(dist.mean.shape());
  const float* m = moments.data<float>();
  float* mean = dist.mean.data<float>();
  float* logvar = dist.logvar.data<float>();
  const int64_t pixels = dist.mean.numel() / latent;
  for (int64_t p = 0; p < pixels; ++p) {
    for (int64_t c = 0; c < latent; ++c) {
      mean[p * latent + c] = m[p * 2 * latent + c];
      logvar[p * latent + c] = std::clamp(m[p * 2 * latent + latent + c], -30.0f, 20.0f);
    }
  }
  return dist;
}

Result<Tensor> AutoencoderKL::encode(const Tensor& image) {
  SD_ASSIGN_OR_RETURN(LatentDistribution dist, encode_distribution(image));
  return dist.mean;
}

Tensor LatentDistribution::std() const {
  Tensor out = Tensor::empty(logvar.shape());
  const float* lv = logvar.data<float>();
  float* s = out.data<float>();
  for (int64_t i = 0; i < out.numel(); ++i) s[i] = std::exp(0.5f * lv[i]);
  return out;
}

Tensor LatentDistribution::sample(const Tensor& noise) const {
  assert(noise.shape() == mean.shape());
  Tensor out = std();
  const std::vector<float> eps = noise.to_vector();
  const float* mu = mean.data<float>();
  float* x = out.data<float>();
  for (int64_t i = 0; i < out.numel(); ++i) x[i] = mu[i] + x[i] * eps[static_cast<size_t>(i)];
  return out;
}

}  // namespace sdstack::models
