// The UNet, read top to bottom like diffusers' UNet2DConditionModel (unet_2d_condition.py) and the
// blocks of unet_2d_blocks.py it is made of.
#include "models/unet.h"

#include <algorithm>
#include <cassert>
#include <cmath>

#include "models/blocks.h"
#include "models/config_reader.h"

namespace sdstack::models {

using backend::Activation;
using backend::Conv2dParams;
using base::Result;
using base::Status;

// ---- config -----------------------------------------------------------------------------------

namespace {

// A key that diffusers accepts as one value or as a list with one value per down block.
Result<std::vector<int64_t>> per_down_block(const ConfigReader& reader, const nlohmann::json& json,
                                            const std::string& key, size_t blocks, int64_t fallback) {
  if (!reader.has(key)) return std::vector<int64_t>(blocks, fallback);
  if (!json.at(key).is_array()) {
    SD_ASSIGN_OR_RETURN(int64_t value, reader.integer(key));
    return std::vector<int64_t>(blocks, value);
  }
  SD_ASSIGN_OR_RETURN(std::vector<int64_t> values, reader.integers(key));
  if (values.size() != blocks) {
    return reader.error(key, "has " + std::to_string(values.size()) + " values; expected one per down block (" +
                                 std::to_string(blocks) + ")");
  }
  return values;
}

// Keys of UNet2DConditionModel that SD 1.x/2.x leave at their defaults; sdstack implements only those.
Status check_sd_defaults(const ConfigReader& reader, const nlohmann::json& json) {
  for (const char* key : {"class_embed_type", "num_class_embeds", "addition_embed_type", "encoder_hid_dim",
                          "encoder_hid_dim_type", "time_cond_proj_dim", "timestep_post_act", "time_embedding_act_fn",
                          "cross_attention_norm", "reverse_transformer_layers_per_block"}) {
    if (reader.has(key)) {
      return reader.error(key, "is " + json.at(key).dump() + "; sdstack's UNet supports only null here (SD 1.x/2.x)");
    }
  }
  struct Expected {
    const char* key;
    const char* value;
  };
  for (const Expected& e : {Expected{"act_fn", "silu"}, Expected{"resnet_time_scale_shift", "default"},
                            Expected{"time_embedding_type", "positional"}, Expected{"attention_type", "default"},
                            Expected{"mid_block_type", "UNetMidBlock2DCrossAttn"}}) {
    SD_ASSIGN_OR_RETURN(std::string value, reader.string(e.key, e.value));
    if (value != e.value) {
      return reader.error(e.key, "is '" + value + "'; sdstack supports only '" + e.value + "'");
    }
  }
  if (json.contains("mid_block_type") && json.at("mid_block_type").is_null()) {
    return reader.error("mid_block_type", "is null (no mid block); sdstack supports only 'UNetMidBlock2DCrossAttn'");
  }
  for (const char* key :
       {"dual_cross_attention", "resnet_skip_time_act", "class_embeddings_concat", "mid_block_only_cross_attention"}) {
    SD_ASSIGN_OR_RETURN(bool value, reader.boolean(key, false));
    if (value) return reader.error(key, "is true; sdstack supports only false");
  }
  if (reader.has("only_cross_attention")) {  // a bool, or one per down block
    const nlohmann::json& value = json.at("only_cross_attention");
    const bool all_false =
        value.is_array() ? std::all_of(value.begin(), value.end(), [](const nlohmann::json& v) { return v == false; })
                         : value == false;
    if (!all_false) return reader.error("only_cross_attention", "is " + value.dump() + "; sdstack supports only false");
  }
  return Status::ok();
}

// diffusers' get_down_block / get_up_block strip a "UNetRes" prefix from block type names.
std::string block_type(const std::string& name) { return name.rfind("UNetRes", 0) == 0 ? name.substr(7) : name; }

Status check_block_types(const ConfigReader& reader, const std::string& key, const std::vector<std::string>& types,
                         const char* cross_attn, const char* plain) {
  for (size_t i = 0; i < types.size(); ++i) {
    const std::string type = block_type(types[i]);
    if (type != cross_attn && type != plain) {
      return reader.error(key, "has '" + types[i] + "' (block " + std::to_string(i) + "); sdstack supports '" +
                                   cross_attn + "' and '" + plain + "'");
    }
  }
  return Status::ok();
}

}  // namespace

Result<UNet2DConditionConfig> UNet2DConditionConfig::from_json(const nlohmann::json& json, const std::string& source) {
  ConfigReader reader(json, source);
  UNet2DConditionConfig config;
  SD_RETURN_IF_ERROR(check_sd_defaults(reader, json));
  SD_ASSIGN_OR_RETURN(config.in_channels, reader.integer("in_channels", 4));
  SD_ASSIGN_OR_RETURN(config.out_channels, reader.integer("out_channels", 4));
  SD_ASSIGN_OR_RETURN(config.block_out_channels, reader.integers("block_out_channels"));
  SD_ASSIGN_OR_RETURN(config.down_block_types, reader.strings("down_block_types"));
  SD_ASSIGN_OR_RETURN(config.up_block_types, reader.strings("up_block_types"));
  SD_ASSIGN_OR_RETURN(config.layers_per_block, reader.integer("layers_per_block", 2));
  SD_ASSIGN_OR_RETURN(config.norm_num_groups, reader.integer("norm_num_groups", 32));
  SD_ASSIGN_OR_RETURN(config.norm_eps, reader.number("norm_eps", 1e-5));
  SD_ASSIGN_OR_RETURN(config.flip_sin_to_cos, reader.boolean("flip_sin_to_cos", true));
  SD_ASSIGN_OR_RETURN(config.freq_shift, reader.number("freq_shift", 0));
  SD_ASSIGN_OR_RETURN(config.use_linear_projection, reader.boolean("use_linear_projection", false));
  SD_ASSIGN_OR_RETURN(config.downsample_padding, reader.integer("downsample_padding", 1));
  SD_ASSIGN_OR_RETURN(config.mid_block_scale_factor, reader.number("mid_block_scale_factor", 1));
  SD_ASSIGN_OR_RETURN(config.conv_in_kernel, reader.integer("conv_in_kernel", 3));
  SD_ASSIGN_OR_RETURN(config.conv_out_kernel, reader.integer("conv_out_kernel", 3));
  SD_ASSIGN_OR_RETURN(config.center_input_sample, reader.boolean("center_input_sample", false));

  const size_t blocks = config.block_out_channels.size();
  if (blocks == 0) return reader.error("block_out_channels", "is empty");
  if (config.down_block_types.size() != blocks) {
    return reader.error("down_block_types", "has " + std::to_string(config.down_block_types.size()) +
                                                " entries; expected one per block_out_channels (" +
                                                std::to_string(blocks) + ")");
  }
  if (config.up_block_types.size() != blocks) {
    return reader.error("up_block_types", "has " + std::to_string(config.up_block_types.size()) +
                                              " entries; expected one per block_out_channels (" +
                                              std::to_string(blocks) + ")");
  }
  SD_RETURN_IF_ERROR(
      check_block_types(reader, "down_block_types", config.down_block_types, "CrossAttnDownBlock2D", "DownBlock2D"));
  SD_RETURN_IF_ERROR(
      check_block_types(reader, "up_block_types", config.up_block_types, "CrossAttnUpBlock2D", "UpBlock2D"));

  // Heads: diffusers' naming quirk makes `attention_head_dim` the number of heads (SD 1.x's 8 and
  // SD 2.x's [5, 10, 20, 20] are head counts), and it refuses `num_attention_heads` altogether.
  if (reader.has("num_attention_heads")) {
    return reader.error("num_attention_heads", "is " + json.at("num_attention_heads").dump() +
                                                   "; diffusers (and sdstack) take the number of heads from "
                                                   "'attention_head_dim' and require this key to be null");
  }
  const std::string heads_key = "attention_head_dim";
  SD_ASSIGN_OR_RETURN(config.num_attention_heads, per_down_block(reader, json, heads_key, blocks, 8));
  SD_ASSIGN_OR_RETURN(config.transformer_layers_per_block,
                      per_down_block(reader, json, "transformer_layers_per_block", blocks, 1));
  SD_ASSIGN_OR_RETURN(config.cross_attention_dim, per_down_block(reader, json, "cross_attention_dim", blocks, 1280));
  SD_ASSIGN_OR_RETURN(config.time_embedding_dim,
                      reader.integer("time_embedding_dim", config.block_out_channels[0] * 4));

  for (const char* key : {"in_channels", "out_channels", "layers_per_block", "norm_num_groups", "conv_in_kernel",
                          "conv_out_kernel", "time_embedding_dim"}) {
    SD_ASSIGN_OR_RETURN(int64_t value, reader.integer(key, 1));
    if (value <= 0) return reader.error(key, "must be positive");
  }
  if (config.conv_in_kernel % 2 == 0 || config.conv_out_kernel % 2 == 0) {
    return reader.error(config.conv_in_kernel % 2 == 0 ? "conv_in_kernel" : "conv_out_kernel", "must be odd");
  }
  if (config.downsample_padding < 0) return reader.error("downsample_padding", "must be 0 or more");
  if (config.mid_block_scale_factor == 0) return reader.error("mid_block_scale_factor", "must not be 0");
  for (size_t i = 0; i < blocks; ++i) {
    const int64_t channels = config.block_out_channels[i];
    if (channels <= 0 || channels % config.norm_num_groups != 0) {
      return reader.error("block_out_channels", "has " + std::to_string(channels) + ", which norm_num_groups (" +
                                                    std::to_string(config.norm_num_groups) + ") does not divide");
    }
    const int64_t heads = config.num_attention_heads[i];
    if (heads <= 0 || channels % heads != 0) {
      return reader.error(heads_key, "gives " + std::to_string(heads) + " heads to block " + std::to_string(i) +
                                         " of " + std::to_string(channels) + " channels; heads must divide channels");
    }
    if (config.transformer_layers_per_block[i] <= 0) {
      return reader.error("transformer_layers_per_block", "must be positive");
    }
    if (config.cross_attention_dim[i] != config.cross_attention_dim[0] || config.cross_attention_dim[i] <= 0) {
      return reader.error("cross_attention_dim", "must be one positive width for all blocks");
    }
  }
  return config;
}

// ---- blocks -----------------------------------------------------------------------------------

// CrossAttnDownBlock2D (resnets each followed by a transformer) or DownBlock2D (resnets only); every
// resnet's output, and the downsampler's, is a skip connection for the up blocks.
struct UNet2DConditionModel::DownBlock {
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2DModel> attentions;  // empty for DownBlock2D
  std::unique_ptr<Downsample2D> downsampler;   // absent in the last block
};

// UNetMidBlock2DCrossAttn: resnets[0], then (attentions[i], resnets[i + 1]).
struct UNet2DConditionModel::MidBlock {
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2DModel> attentions;
};

// CrossAttnUpBlock2D or UpBlock2D: each resnet takes the running tensor concatenated with the
// newest skip connection.
struct UNet2DConditionModel::UpBlock {
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2DModel> attentions;  // empty for UpBlock2D
  std::unique_ptr<Upsample2D> upsampler;       // absent in the last block
};

UNet2DConditionModel::UNet2DConditionModel(const UNet2DConditionConfig& config, Backend& backend)
    : config_(config), backend_(backend) {}
UNet2DConditionModel::~UNet2DConditionModel() = default;

Result<std::unique_ptr<UNet2DConditionModel>> UNet2DConditionModel::load(const io::ModelFolder& folder,
                                                                         Backend& backend, const std::string& variant) {
  SD_ASSIGN_OR_RETURN(nlohmann::json json, folder.config("unet"));
  SD_ASSIGN_OR_RETURN(UNet2DConditionConfig config, UNet2DConditionConfig::from_json(json, "unet/config.json"));
  SD_ASSIGN_OR_RETURN(io::WeightSet weights, folder.weights("unet", variant));
  return create(config, weights, backend);
}

Result<std::unique_ptr<UNet2DConditionModel>> UNet2DConditionModel::create(const UNet2DConditionConfig& config,
                                                                           const io::WeightSource& weights,
                                                                           Backend& backend) {
  std::unique_ptr<UNet2DConditionModel> model(new UNet2DConditionModel(config, backend));
  WeightLoader load(weights, backend);
  const std::vector<int64_t>& channels = config.block_out_channels;
  const size_t blocks = channels.size();
  const int64_t temb = config.time_embedding_dim;

  auto resnet = [&](const std::string& prefix, int64_t in, int64_t out, double output_scale_factor) {
    ResnetBlock2D::Options options;
    options.in_channels = in;
    options.out_channels = out;
    options.temb_channels = temb;
    options.groups = config.norm_num_groups;
    options.eps = static_cast<float>(config.norm_eps);
    options.output_scale_factor = static_cast<float>(output_scale_factor);
    return ResnetBlock2D::load(load, prefix, options);
  };
  auto transformer = [&](const std::string& prefix, int64_t c, size_t block) {
    Transformer2DModel::Options options;
    options.channels = c;
    options.heads = config.num_attention_heads[block];
    options.cross_attention_dim = config.cross_attention_dim[block];
    options.layers = config.transformer_layers_per_block[block];
    options.groups = config.norm_num_groups;
    options.use_linear_projection = config.use_linear_projection;
    return Transformer2DModel::load(load, prefix, options);
  };

  // Time embedding: get_timestep_embedding(t, C0) -> linear_1 -> SiLU -> linear_2.
  SD_ASSIGN_OR_RETURN(model->time_embedding_linear_1_, load.linear("time_embedding.linear_1", channels[0], temb));
  SD_ASSIGN_OR_RETURN(model->time_embedding_linear_2_, load.linear("time_embedding.linear_2", temb, temb));
  SD_ASSIGN_OR_RETURN(model->conv_in_, load.conv2d("conv_in", config.in_channels, channels[0], config.conv_in_kernel,
                                                   Conv2dParams{1, (config.conv_in_kernel - 1) / 2}));

  // Down blocks: channels[i - 1] -> channels[i], halving the size but in the last block.
  int64_t out_channels = channels[0];
  for (size_t i = 0; i < blocks; ++i) {
    const std::string prefix = "down_blocks." + std::to_string(i);
    const int64_t in_channels = out_channels;
    out_channels = channels[i];
    auto block = std::make_unique<DownBlock>();
    for (int64_t j = 0; j < config.layers_per_block; ++j) {
      const std::string layer = std::to_string(j);
      SD_ASSIGN_OR_RETURN(ResnetBlock2D r,
                          resnet(prefix + ".resnets." + layer, j == 0 ? in_channels : out_channels, out_channels, 1.0));
      block->resnets.push_back(std::move(r));
      if (block_type(config.down_block_types[i]) == "CrossAttnDownBlock2D") {
        SD_ASSIGN_OR_RETURN(Transformer2DModel t, transformer(prefix + ".attentions." + layer, out_channels, i));
        block->attentions.push_back(std::move(t));
      }
    }
    if (i + 1 < blocks) {
      SD_ASSIGN_OR_RETURN(Downsample2D d, Downsample2D::load(load, prefix + ".downsamplers.0", out_channels,
                                                             config.downsample_padding));
      block->downsampler = std::make_unique<Downsample2D>(std::move(d));
    }
    model->down_blocks_.push_back(std::move(block));
  }

  // Mid block at the deepest width.
  const int64_t deepest = channels.back();
  model->mid_block_ = std::make_unique<MidBlock>();
  for (int j = 0; j < 2; ++j) {
    SD_ASSIGN_OR_RETURN(ResnetBlock2D r, resnet("mid_block.resnets." + std::to_string(j), deepest, deepest,
                                                config.mid_block_scale_factor));
    model->mid_block_->resnets.push_back(std::move(r));
  }
  SD_ASSIGN_OR_RETURN(Transformer2DModel mid_attention, transformer("mid_block.attentions.0", deepest, blocks - 1));
  model->mid_block_->attentions.push_back(std::move(mid_attention));

  // Up blocks mirror the down blocks: block i works at reversed width i, takes layers_per_block + 1
  // skips, and doubles the size but in the last block. Per-block settings come reversed.
  out_channels = deepest;
  for (size_t i = 0; i < blocks; ++i) {
    const std::string prefix = "up_blocks." + std::to_string(i);
    const size_t mirrored = blocks - 1 - i;  // the down block at this width
    const int64_t prev_output_channels = out_channels;
    out_channels = channels[mirrored];
    const int64_t in_channels = channels[mirrored == 0 ? 0 : mirrored - 1];
    auto block = std::make_unique<UpBlock>();
    const int64_t layers = config.layers_per_block + 1;
    for (int64_t j = 0; j < layers; ++j) {
      const std::string layer = std::to_string(j);
      const int64_t skip_channels = j == layers - 1 ? in_channels : out_channels;
      const int64_t resnet_in = j == 0 ? prev_output_channels : out_channels;
      SD_ASSIGN_OR_RETURN(ResnetBlock2D r,
                          resnet(prefix + ".resnets." + layer, resnet_in + skip_channels, out_channels, 1.0));
      block->resnets.push_back(std::move(r));
      if (block_type(config.up_block_types[i]) == "CrossAttnUpBlock2D") {
        SD_ASSIGN_OR_RETURN(Transformer2DModel t, transformer(prefix + ".attentions." + layer, out_channels, mirrored));
        block->attentions.push_back(std::move(t));
      }
    }
    if (i + 1 < blocks) {
      SD_ASSIGN_OR_RETURN(Upsample2D u, Upsample2D::load(load, prefix + ".upsamplers.0", out_channels));
      block->upsampler = std::make_unique<Upsample2D>(std::move(u));
    }
    model->up_blocks_.push_back(std::move(block));
  }

  SD_ASSIGN_OR_RETURN(model->conv_norm_out_, load.norm("conv_norm_out", channels[0]));
  SD_ASSIGN_OR_RETURN(model->conv_out_,
                      load.conv2d("conv_out", channels[0], config.out_channels, config.conv_out_kernel,
                                  Conv2dParams{1, (config.conv_out_kernel - 1) / 2}));
  return model;
}

// ---- forward ----------------------------------------------------------------------------------
//
// Buffers: every block allocates its outputs (~300 tensors per call; at SD 1.5's 64x64 latents
// and batch 2 the largest are the GEGLU hidden states, 84 MB, and the 320-channel activations,
// 10 MB). Reuse opportunities, for when allocation shows in profiles: the skip tensors must live
// until their up block, but everything else fits a few ping-pong buffers sized for the largest
// activation per level; the transformers' scratch (q, k, v, GEGLU) can be one arena shared by all
// of them; and the cross-attention keys and values depend only on the text embeddings, so a
// sampler could compute them once per prompt instead of once per step.

Tensor UNet2DConditionModel::time_embedding(float timestep) {
  // get_timestep_embedding, in f32 and in torch's order of operations:
  //   freq[i] = exp(-ln(10000) * i / (half - freq_shift)); arg[i] = t * freq[i]
  //   emb = [sin(arg), cos(arg)], or [cos(arg), sin(arg)] with flip_sin_to_cos; zero-padded when odd.
  const int64_t dim = config_.block_out_channels[0], half = dim / 2;
  Tensor t_emb = Tensor::zeros({1, dim});  // [1, C0]
  float* emb = t_emb.data<float>();
  const float neg_log_max_period = static_cast<float>(-std::log(10000.0));
  const float denominator = static_cast<float>(static_cast<double>(half) - config_.freq_shift);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = neg_log_max_period * static_cast<float>(i) / denominator;
    const float arg = timestep * std::exp(exponent);
    const float sin_arg = static_cast<float>(std::sin(static_cast<double>(arg)));
    const float cos_arg = static_cast<float>(std::cos(static_cast<double>(arg)));
    emb[i] = config_.flip_sin_to_cos ? cos_arg : sin_arg;
    emb[half + i] = config_.flip_sin_to_cos ? sin_arg : cos_arg;
  }
  // TimestepEmbedding: linear_2(silu(linear_1(t_emb))); every resnet then applies SiLU to it, so
  // that SiLU is fused here once. Both outputs are only read by linears: in the operand dtype, each
  // rounded once here rather than by each of the ~20 resnets' time_emb_proj.
  const int64_t temb = config_.time_embedding_dim;
  Tensor hidden = Tensor::empty({1, temb}, backend_.operand_dtype());
  time_embedding_linear_1_->run(t_emb, hidden, backend::LinearExtras{Activation::kSiLU, {}});
  Tensor silu_emb = Tensor::empty({1, temb}, backend_.operand_dtype());
  time_embedding_linear_2_->run(hidden, silu_emb, backend::LinearExtras{Activation::kSiLU, {}});
  return silu_emb;
}

Result<Tensor> UNet2DConditionModel::forward(const Tensor& sample, float timestep,
                                             const Tensor& encoder_hidden_states) {
  if (sample.rank() != 4 || sample.dim(3) != config_.in_channels || sample.dtype() != tensor::DType::kF32) {
    return base::invalid_argument("unet: sample has shape " + sample.shape_string() + "; expected f32 [B, h, w, " +
                                  std::to_string(config_.in_channels) + "] (NHWC)");
  }
  const int64_t batch = sample.dim(0), cross_dim = config_.cross_attention_dim[0];
  if (encoder_hidden_states.rank() != 3 || encoder_hidden_states.dim(0) != batch ||
      encoder_hidden_states.dim(2) != cross_dim || encoder_hidden_states.dtype() != tensor::DType::kF32) {
    return base::invalid_argument("unet: encoder_hidden_states has shape " + encoder_hidden_states.shape_string() +
                                  "; expected f32 [" + std::to_string(batch) + ", L, " + std::to_string(cross_dim) +
                                  "] (one text embedding per sample)");
  }
  const Tensor x = sample.is_contiguous() ? sample : sample.contiguous();
  // The text embeddings only feed the cross-attention's to_k and to_v: in the operand dtype, rounded
  // once per call rather than by each of those 32 linears (in SD 1.5).
  const tensor::DType operand = backend_.operand_dtype();
  const Tensor context = encoder_hidden_states.is_contiguous() && encoder_hidden_states.dtype() == operand
                             ? encoder_hidden_states
                             : encoder_hidden_states.to(operand);

  // 1. Time: silu(time_embedding(t)) as [1, temb], shared by the batch.
  const Tensor temb = time_embedding(timestep);

  // 2. conv_in (after 2x - 1 when center_input_sample): [B, h, w, in] -> [B, h, w, C0].
  Tensor input = x;
  if (config_.center_input_sample) {
    input = Tensor::empty(x.shape());
    backend_.scale(x, 2.0f, input);
    Tensor minus_one = Tensor::empty({config_.in_channels});
    minus_one.fill(-1.0f);
    backend_.add(input, minus_one, input);
  }
  Tensor h = Tensor::empty({batch, x.dim(1), x.dim(2), config_.block_out_channels[0]});
  conv_in_->run(input, h);

  // 3. Down: every resnet's (or transformer's) output and every downsampled tensor is kept as a skip.
  std::vector<Tensor> skips = {h};
  for (const std::unique_ptr<DownBlock>& block : down_blocks_) {
    for (size_t j = 0; j < block->resnets.size(); ++j) {
      h = block->resnets[j].forward(h, temb);
      if (!block->attentions.empty()) h = block->attentions[j].forward(h, context);
      skips.push_back(h);
    }
    if (block->downsampler != nullptr) {
      h = block->downsampler->forward(h);
      skips.push_back(h);
    }
  }

  // 4. Mid: resnet, (transformer, resnet).
  h = mid_block_->resnets[0].forward(h, temb);
  for (size_t j = 0; j < mid_block_->attentions.size(); ++j) {
    h = mid_block_->attentions[j].forward(h, context);
    h = mid_block_->resnets[j + 1].forward(h, temb);
  }

  // 5. Up: each resnet eats cat([h, newest skip], channels). The upsampler doubles h to the size of
  // the next skip (diffusers' upsample_size; exactly 2x unless a size was odd on the way down).
  for (const std::unique_ptr<UpBlock>& block : up_blocks_) {
    for (size_t j = 0; j < block->resnets.size(); ++j) {
      const Tensor skip = skips.back();
      skips.pop_back();
      Tensor joined = Tensor::empty({batch, h.dim(1), h.dim(2), h.dim(3) + skip.dim(3)});
      backend_.concat_last(h, skip, joined);
      h = block->resnets[j].forward(joined, temb);
      if (!block->attentions.empty()) h = block->attentions[j].forward(h, context);
    }
    if (block->upsampler != nullptr) {
      assert(!skips.empty());
      h = block->upsampler->forward(h, skips.back().dim(1), skips.back().dim(2));
    }
  }
  assert(skips.empty());

  // 6. Out: conv_out(silu(conv_norm_out(h))): [B, h, w, C0] -> [B, h, w, out].
  Tensor normed = backend_.operand_dtype() == h.dtype() ? h : Tensor::empty(h.shape(), backend_.operand_dtype());
  backend_.group_norm(h, conv_norm_out_.gamma, conv_norm_out_.beta, config_.norm_num_groups,
                      static_cast<float>(config_.norm_eps), Activation::kSiLU, normed);
  Tensor out = Tensor::empty({batch, h.dim(1), h.dim(2), config_.out_channels});
  conv_out_->run(normed, out);
  return out;
}

}  // namespace sdstack::models
