// Building blocks shared by the UNet and the VAE, read like diffusers' modules of the same names.
#include "models/blocks.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

namespace sdstack::models {

using backend::Activation;
using backend::Conv2dExtras;
using backend::Conv2dParams;
using backend::LinearExtras;
using base::Result;
using tensor::DType;

namespace {

// Shape [N, H, W, C] with another channel count.
Shape with_channels(const Tensor& x, int64_t channels) { return {x.dim(0), x.dim(1), x.dim(2), channels}; }

}  // namespace

// ---- ResnetBlock2D ----------------------------------------------------------------------------

Result<ResnetBlock2D> ResnetBlock2D::load(WeightLoader& load, const std::string& prefix, const Options& options) {
  ResnetBlock2D block;
  block.backend_ = &load.backend();
  block.options_ = options;
  const int64_t in = options.in_channels, out = options.out_channels;
  if (in % options.groups != 0 || out % options.groups != 0) {
    return base::invalid_argument(prefix + ": " + std::to_string(in) + " -> " + std::to_string(out) +
                                  " channels do not split into " + std::to_string(options.groups) +
                                  " groups (norm_num_groups)");
  }
  const Conv2dParams same{1, 1};
  SD_ASSIGN_OR_RETURN(block.norm1_, load.norm(prefix + ".norm1", in));
  SD_ASSIGN_OR_RETURN(block.conv1_, load.conv2d(prefix + ".conv1", in, out, 3, same));
  if (options.temb_channels > 0) {
    SD_ASSIGN_OR_RETURN(block.time_emb_proj_, load.linear(prefix + ".time_emb_proj", options.temb_channels, out));
  }
  SD_ASSIGN_OR_RETURN(block.norm2_, load.norm(prefix + ".norm2", out));
  SD_ASSIGN_OR_RETURN(block.conv2_, load.conv2d(prefix + ".conv2", out, out, 3, same));
  if (in != out) {
    SD_ASSIGN_OR_RETURN(block.conv_shortcut_, load.conv2d(prefix + ".conv_shortcut", in, out, 1, Conv2dParams{1, 0}));
  }
  return block;
}

Tensor ResnetBlock2D::forward(const Tensor& x, const Tensor& silu_temb, BufferPool* pool) const {
  Backend& backend = *backend_;
  const int64_t out = options_.out_channels;
  const DType operand = backend.operand_dtype();
  const DType activations = options_.operand_activations ? operand : DType::kF32;
  assert(x.dtype() == activations || (conv_shortcut_ != nullptr && x.dtype() == operand));
  // Each buffer lives only while it is needed: the VAE decoder runs these blocks on
  // [1, 512, 512, 256] activations (268 MB each in f32), so every one held past its last use
  // adds to the peak memory of a 512x512 decode.

  // h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb)): the projected time embedding, the same
  // for every image of the batch, is one more bias of conv1.
  Conv2dExtras conv1_extras;
  if (time_emb_proj_ != nullptr) {
    assert(silu_temb.defined() && silu_temb.dim(0) == 1);
    Tensor time_bias = Tensor::empty({1, out});  // [1, out]
    time_emb_proj_->run(silu_temb, time_bias);
    conv1_extras.extra_bias = time_bias.reshape({out});
  }
  // The convolutions' inputs are written in the backend's operand dtype (bf16 in bf16 compute), and
  // so are conv1's output and y where the options ask.
  Tensor h = empty_activation(pool, with_channels(x, out), activations);
  {
    Tensor normed = empty_activation(pool, x.shape(), operand);  // [N, H, W, in], freed once conv1 has read it
    backend.group_norm(x, norm1_.gamma, norm1_.beta, options_.groups, options_.eps, Activation::kSiLU, normed);
    conv1_->run(normed, h, conv1_extras);
  }
  // silu(norm2(h)): in place where h is in the operand dtype; else into an operand copy, and conv1's
  // f32 output is freed.
  Tensor h_normed = operand == h.dtype() ? h : empty_activation(pool, h.shape(), operand);
  backend.group_norm(h, norm2_.gamma, norm2_.beta, options_.groups, options_.eps, Activation::kSiLU, h_normed);
  h = Tensor();

  // y = shortcut(x) + conv2(h), the residual fused into conv2. A 1x1 shortcut is written straight
  // into y, which conv2 then accumulates onto (the residual may alias the output).
  Tensor y = empty_activation(pool, with_channels(x, out), activations);  // [N, H, W, out]
  Conv2dExtras conv2_extras;
  conv2_extras.residual = x;
  if (conv_shortcut_ != nullptr) {
    conv_shortcut_->run(x, y);
    conv2_extras.residual = y;
  }
  conv2_->run(h_normed, y, conv2_extras);
  if (options_.output_scale_factor != 1.0f) {
    assert(y.dtype() == DType::kF32);  // Backend::scale is f32's; no model scales an operand stream
    backend.scale(y, 1.0f / options_.output_scale_factor, y);
  }
  return y;
}

// ---- Downsample2D / Upsample2D ----------------------------------------------------------------

Result<Downsample2D> Downsample2D::load(WeightLoader& load, const std::string& prefix, int64_t channels,
                                        int64_t padding) {
  Conv2dParams params{2, padding};
  if (padding == 0) {  // diffusers: F.pad(x, (0, 1, 0, 1)), then the unpadded stride-2 conv
    params.extra_bottom = 1;
    params.extra_right = 1;
  }
  Downsample2D block;
  SD_ASSIGN_OR_RETURN(block.conv_, load.conv2d(prefix + ".conv", channels, channels, 3, params));
  return block;
}

Tensor Downsample2D::forward(const Tensor& x) const {
  // x: [N, H, W, C] -> [N, Ho, Wo, C]
  const Conv2dParams& params = conv_->params();
  Tensor y =
      Tensor::empty({x.dim(0), params.out_height(x.dim(1), 3), params.out_width(x.dim(2), 3), x.dim(3)}, x.dtype());
  conv_->run(x, y);
  return y;
}

Result<Upsample2D> Upsample2D::load(WeightLoader& load, const std::string& prefix, int64_t channels) {
  Upsample2D block;
  block.backend_ = &load.backend();
  SD_ASSIGN_OR_RETURN(block.conv_, load.conv2d(prefix + ".conv", channels, channels, 3, Conv2dParams{1, 1}));
  return block;
}

namespace {

// torch's F.interpolate(mode="nearest", size=...) for sizes other than 2x: source row
// min(floor(dst * (in / out)), in - 1), the scale computed in float as torch does. Each pixel's C
// values are copied, so x and y are of one dtype, any.
void resize_nearest(const Tensor& x, Tensor& y) {
  // x: [N, H, W, C]; y: [N, Ho, Wo, C]
  assert(x.dtype() == y.dtype() && x.is_contiguous() && y.is_contiguous());
  const int64_t n_batch = x.dim(0), h_in = x.dim(1), w_in = x.dim(2), channels = x.dim(3);
  const int64_t h_out = y.dim(1), w_out = y.dim(2);
  auto source = [](int64_t dst, int64_t in, int64_t out) {
    if (out == in) return dst;
    if (out == 2 * in) return dst >> 1;
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    const int64_t src = static_cast<int64_t>(std::floor(static_cast<float>(dst) * scale));
    return src < in - 1 ? src : in - 1;
  };
  const size_t pixel_bytes = static_cast<size_t>(channels) * tensor::dtype_size(x.dtype());
  const char* in = static_cast<const char*>(x.raw_data());
  char* out = static_cast<char*>(y.raw_data());
  for (int64_t n = 0; n < n_batch; ++n) {
    for (int64_t i = 0; i < h_out; ++i) {
      const int64_t si = source(i, h_in, h_out);
      for (int64_t j = 0; j < w_out; ++j) {
        const int64_t sj = source(j, w_in, w_out);
        std::memcpy(out + static_cast<size_t>((n * h_out + i) * w_out + j) * pixel_bytes,
                    in + static_cast<size_t>((n * h_in + si) * w_in + sj) * pixel_bytes, pixel_bytes);
      }
    }
  }
}

}  // namespace

Tensor Upsample2D::forward(const Tensor& x, int64_t out_height, int64_t out_width, BufferPool* pool,
                           DType output) const {
  // x: [N, H, W, C] -> up: [N, out_height, out_width, C] -> conv -> same shape. Exactly 2x, the
  // backend fuses the two (Conv2d::run_upsampled2x); other sizes are resized here first.
  Tensor y = empty_activation(pool, {x.dim(0), out_height, out_width, x.dim(3)}, output);
  if (out_height == 2 * x.dim(1) && out_width == 2 * x.dim(2)) {
    Tensor scratch = empty_activation(pool, y.shape());
    conv_->run_upsampled2x(x, y, scratch);
    return y;
  }
  Tensor up = empty_activation(pool, y.shape(), x.dtype());  // the conv reads f32 or the operand dtype
  resize_nearest(x, up);
  conv_->run(up, y);
  return y;
}

// ---- Transformer2DModel -----------------------------------------------------------------------

// diffusers' BasicTransformerBlock ("layer_norm" norms, eps 1e-5), on h: [N, L, C]:
//   h = attn1(norm1(h)) + h                 self-attention
//   h = attn2(norm2(h), context) + h        cross-attention on the text embeddings
//   h = ff(norm3(h)) + h                    ff.net.2(GEGLU(ff.net.0.proj(.)))
// attn*.to_q/to_k/to_v have no bias, to_out.0 has one; the residuals are fused into to_out.0 and ff.net.2.
struct Transformer2DModel::BasicTransformerBlock {
  struct Attention {
    std::unique_ptr<backend::Linear> to_q, to_k, to_v, to_out;
  };
  NormWeights norm1, norm2, norm3;
  Attention attn1, attn2;
  std::unique_ptr<backend::Linear> ff_proj, ff_out;  // ff.net.0.proj [2F, C], ff.net.2 [C, F]
};

Transformer2DModel::~Transformer2DModel() = default;
Transformer2DModel::Transformer2DModel(Transformer2DModel&&) noexcept = default;
Transformer2DModel& Transformer2DModel::operator=(Transformer2DModel&&) noexcept = default;

namespace {

constexpr float kTransformerGroupNormEps = 1e-6f;  // Transformer2DModel.norm
constexpr float kTransformerLayerNormEps = 1e-5f;  // BasicTransformerBlock's norms (norm_eps default)
constexpr int64_t kFeedForwardMult = 4;            // FeedForward(mult=4)
// The feed-forward runs over blocks of this many rows (tokens) where its hidden activations outweigh
// its weights: a block's [rows, 2F] hidden (5.2 MB in f32 at SD's first level, where the whole is
// 84 MB per call) stays in cache from the projection through GEGLU to ff.net.2, instead of going to
// memory and back. Measured 1.3-1.5x faster at the 64x64 and 32x32 levels, f32 and bf16; at 16x16
// the weights (26 MB in bf16) outweigh the activations and one block is better. 512 rows rather
// than 128 (whose hidden fits L2): AMX's matmuls run better on more rows, 2-4% off a bf16 UNet step
// (7 alternated runs, 6 faster), f32 unchanged.
constexpr int64_t kFeedForwardBlockRows = 512;

}  // namespace

Result<Transformer2DModel> Transformer2DModel::load(WeightLoader& load, const std::string& prefix,
                                                    const Options& options) {
  Transformer2DModel model;
  model.backend_ = &load.backend();
  model.options_ = options;
  const int64_t c = options.channels, ctx = options.cross_attention_dim, ff = kFeedForwardMult * c;
  assert(c % options.heads == 0);

  SD_ASSIGN_OR_RETURN(model.norm_, load.norm(prefix + ".norm", c));
  auto projection = [&](const std::string& name) -> Result<std::unique_ptr<backend::Linear>> {
    if (options.use_linear_projection) return load.linear(prefix + "." + name, c, c);
    SD_ASSIGN_OR_RETURN(Tensor weight, load.raw(prefix + "." + name + ".weight", {c, c, 1, 1}));
    SD_ASSIGN_OR_RETURN(Tensor bias, load.raw(prefix + "." + name + ".bias", {c}));
    return load.prepared_linear(prefix + "." + name, weight.reshape({c, c}), bias);
  };
  SD_ASSIGN_OR_RETURN(model.proj_in_, projection("proj_in"));

  for (int64_t i = 0; i < options.layers; ++i) {
    const std::string p = prefix + ".transformer_blocks." + std::to_string(i) + ".";
    BasicTransformerBlock block;
    SD_ASSIGN_OR_RETURN(block.norm1, load.norm(p + "norm1", c));
    SD_ASSIGN_OR_RETURN(block.attn1.to_q, load.linear(p + "attn1.to_q", c, c, /*bias=*/false));
    SD_ASSIGN_OR_RETURN(block.attn1.to_k, load.linear(p + "attn1.to_k", c, c, /*bias=*/false));
    SD_ASSIGN_OR_RETURN(block.attn1.to_v, load.linear(p + "attn1.to_v", c, c, /*bias=*/false));
    SD_ASSIGN_OR_RETURN(block.attn1.to_out, load.linear(p + "attn1.to_out.0", c, c));
    SD_ASSIGN_OR_RETURN(block.norm2, load.norm(p + "norm2", c));
    SD_ASSIGN_OR_RETURN(block.attn2.to_q, load.linear(p + "attn2.to_q", c, c, /*bias=*/false));
    SD_ASSIGN_OR_RETURN(block.attn2.to_k, load.linear(p + "attn2.to_k", ctx, c, /*bias=*/false));
    SD_ASSIGN_OR_RETURN(block.attn2.to_v, load.linear(p + "attn2.to_v", ctx, c, /*bias=*/false));
    SD_ASSIGN_OR_RETURN(block.attn2.to_out, load.linear(p + "attn2.to_out.0", c, c));
    SD_ASSIGN_OR_RETURN(block.norm3, load.norm(p + "norm3", c));
    SD_ASSIGN_OR_RETURN(block.ff_proj, load.linear(p + "ff.net.0.proj", c, 2 * ff));
    SD_ASSIGN_OR_RETURN(block.ff_out, load.linear(p + "ff.net.2", ff, c));
    model.transformer_blocks_.push_back(std::move(block));
  }
  SD_ASSIGN_OR_RETURN(model.proj_out_, projection("proj_out"));
  return model;
}

Tensor Transformer2DModel::forward(const Tensor& x, const Tensor& context) const {
  Backend& backend = *backend_;
  const int64_t n = x.dim(0), length = x.dim(1) * x.dim(2), c = options_.channels, heads = options_.heads;
  const int64_t context_length = context.dim(1), ff = kFeedForwardMult * c;
  assert(x.dim(3) == c && context.dim(0) == n && context.dim(2) == options_.cross_attention_dim);

  // h = proj_in(norm(x)): x: [N, H, W, C] -> h: [N, H*W, C]
  Tensor h = Tensor::empty({n, length, c});
  {
    Tensor normed = Tensor::empty(x.shape(), backend.operand_dtype());  // freed once proj_in has read it
    backend.group_norm(x, norm_.gamma, norm_.beta, options_.groups, kTransformerGroupNormEps, Activation::kNone,
                       normed);
    proj_in_->run(normed.reshape({n, length, c}), h);
  }

  // Buffers shared by the blocks.
  // The inputs of linears and attention, and the feed-forward's hidden activations (GEGLU's input),
  // are written in the backend's operand dtype (bf16 in bf16 compute, as diffusers holds them in
  // bf16); h, which the residuals accumulate onto, stays f32.
  const DType operand = backend.operand_dtype();
  Tensor h_normed = Tensor::empty({n, length, c}, operand);
  Tensor q = Tensor::empty({n, length, c}, operand);
  Tensor self_k = Tensor::empty({n, length, c}, operand), self_v = Tensor::empty({n, length, c}, operand);
  Tensor cross_k = Tensor::empty({n, context_length, c}, operand);
  Tensor cross_v = Tensor::empty({n, context_length, c}, operand);
  Tensor attended = Tensor::empty({n, length, c}, operand);
  // The feed-forward's rows per block (see kFeedForwardBlockRows) and its buffers for one block.
  const int64_t rows = n * length;
  const int64_t block_rows = rows >= 2 * c ? std::min(kFeedForwardBlockRows, rows) : rows;
  Tensor ff_normed = Tensor::empty({block_rows, c}, operand);
  Tensor ff_hidden = Tensor::empty({block_rows, 2 * ff}, operand);
  Tensor ff_gated = Tensor::empty({block_rows, ff}, operand);
  const LinearExtras add_to_h{Activation::kNone, h};  // y = x W^T + b + h, written over h

  for (const BasicTransformerBlock& block : transformer_blocks_) {
    // 1. Self-attention.
    backend.layer_norm(h, block.norm1.gamma, block.norm1.beta, kTransformerLayerNormEps, h_normed);
    block.attn1.to_q->run(h_normed, q);
    block.attn1.to_k->run(h_normed, self_k);
    block.attn1.to_v->run(h_normed, self_v);
    backend.attention(q, self_k, self_v, heads, /*causal=*/false, attended);
    block.attn1.to_out->run(attended, h, add_to_h);
    // 2. Cross-attention: queries from the image, keys and values from the text.
    backend.layer_norm(h, block.norm2.gamma, block.norm2.beta, kTransformerLayerNormEps, h_normed);
    block.attn2.to_q->run(h_normed, q);
    block.attn2.to_k->run(context, cross_k);
    block.attn2.to_v->run(context, cross_v);
    backend.attention(q, cross_k, cross_v, heads, /*causal=*/false, attended);
    block.attn2.to_out->run(attended, h, add_to_h);
    // 3. Feed-forward with GEGLU, per block of rows: [R, C] -> [R, 2F] -> [R, F] -> [R, C].
    const Tensor h_rows = h.reshape({rows, c});
    for (int64_t r0 = 0; r0 < rows; r0 += block_rows) {
      const int64_t r = std::min(block_rows, rows - r0);
      Tensor h_block = h_rows.slice0(r0, r);
      Tensor normed = ff_normed.slice0(0, r), hidden = ff_hidden.slice0(0, r), gated = ff_gated.slice0(0, r);
      backend.layer_norm(h_block, block.norm3.gamma, block.norm3.beta, kTransformerLayerNormEps, normed);
      block.ff_proj->run(normed, hidden);
      backend.geglu(hidden, gated);
      block.ff_out->run(gated, h_block, LinearExtras{Activation::kNone, h_block});
    }
  }

  // y = proj_out(h) + x: [N, H*W, C] -> [N, H, W, C]
  Tensor y = Tensor::empty(x.shape());
  Tensor y_rows = y.reshape({n, length, c});
  proj_out_->run(h, y_rows, LinearExtras{Activation::kNone, x.reshape({n, length, c})});
  return y;
}

// ---- helpers ----------------------------------------------------------------------------------

Result<std::unique_ptr<backend::Linear>> load_linear_or_1x1(const io::WeightSource& weights, WeightLoader& load,
                                                            const std::string& prefix, int64_t in, int64_t out,
                                                            bool bias) {
  const std::string name = prefix + ".weight";
  if (weights.contains(name)) {
    SD_ASSIGN_OR_RETURN(Tensor stored, weights.get(name));
    if (stored.shape() == Shape{out, in, 1, 1}) {
      Tensor bias_tensor;
      if (bias) {
        SD_ASSIGN_OR_RETURN(bias_tensor, load.raw(prefix + ".bias", {out}));
      }
      return load.prepared_linear(prefix, stored.reshape({out, in}), bias_tensor);
    }
  }
  return load.linear(prefix, in, out, bias);  // [out, in], or the error naming the tensor and both shapes
}

}  // namespace sdstack::models
