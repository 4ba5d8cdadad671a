// The CLIP text encoder, read top to bottom like transformers' CLIPTextTransformer.
#include "models/clip_text_model.h"

#include <cstring>

#include "models/config_reader.h"

namespace sdstack::models {

using backend::Activation;
using backend::LinearExtras;
using base::Result;
using base::Status;

Result<CLIPTextConfig> CLIPTextConfig::from_json(const nlohmann::json& json, const std::string& source) {
  ConfigReader reader(json, source);
  CLIPTextConfig config;
  SD_ASSIGN_OR_RETURN(config.vocab_size, reader.integer("vocab_size"));
  SD_ASSIGN_OR_RETURN(config.hidden_size, reader.integer("hidden_size"));
  SD_ASSIGN_OR_RETURN(config.intermediate_size, reader.integer("intermediate_size"));
  SD_ASSIGN_OR_RETURN(config.num_hidden_layers, reader.integer("num_hidden_layers"));
  SD_ASSIGN_OR_RETURN(config.num_attention_heads, reader.integer("num_attention_heads"));
  SD_ASSIGN_OR_RETURN(config.max_position_embeddings, reader.integer("max_position_embeddings", 77));
  SD_ASSIGN_OR_RETURN(config.layer_norm_eps, reader.number("layer_norm_eps", 1e-5));
  SD_ASSIGN_OR_RETURN(std::string act, reader.string("hidden_act", "quick_gelu"));
  if (act == "quick_gelu") {
    config.hidden_act = Activation::kQuickGELU;
  } else if (act == "gelu") {
    config.hidden_act = Activation::kGELU;
  } else {
    return reader.error("hidden_act", "is '" + act + "'; sdstack supports 'quick_gelu' and 'gelu'");
  }
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "max_position_embeddings"}) {
    SD_ASSIGN_OR_RETURN(int64_t value, reader.integer(key, 1));
    if (value <= 0) return reader.error(key, "must be positive");
  }
  if (config.hidden_size % config.num_attention_heads != 0) {
    return reader.error("num_attention_heads", "must divide hidden_size (" + std::to_string(config.hidden_size) + ")");
  }
  return config;
}

// One pre-norm transformer layer: x += attn(ln1(x)); x += mlp(ln2(x)).
struct CLIPTextModel::Layer {
  NormWeights layer_norm1;
  std::unique_ptr<backend::Linear> q_proj, k_proj, v_proj, out_proj;
  NormWeights layer_norm2;
  std::unique_ptr<backend::Linear> fc1, fc2;
};

CLIPTextModel::CLIPTextModel(const CLIPTextConfig& config, Backend& backend) : config_(config), backend_(backend) {}
CLIPTextModel::~CLIPTextModel() = default;

Result<std::unique_ptr<CLIPTextModel>> CLIPTextModel::load(const io::ModelFolder& folder, Backend& backend,
                                                           const std::string& variant) {
  SD_ASSIGN_OR_RETURN(nlohmann::json json, folder.config("text_encoder"));
  SD_ASSIGN_OR_RETURN(CLIPTextConfig config, CLIPTextConfig::from_json(json, "text_encoder/config.json"));
  SD_ASSIGN_OR_RETURN(io::WeightSet weights, folder.weights("text_encoder", variant));
  return create(config, weights, backend);
}

Result<std::unique_ptr<CLIPTextModel>> CLIPTextModel::create(const CLIPTextConfig& config,
                                                             const io::WeightSource& weights, Backend& backend) {
  std::unique_ptr<CLIPTextModel> model(new CLIPTextModel(config, backend));
  WeightLoader load(weights, backend);
  const int64_t hidden = config.hidden_size;
  const std::string root = "text_model.";

  SD_ASSIGN_OR_RETURN(model->token_embedding_,
                      load.raw(root + "embeddings.token_embedding.weight", {config.vocab_size, hidden}));
  SD_ASSIGN_OR_RETURN(model->position_embedding_, load.f32(root + "embeddings.position_embedding.weight",
                                                           {config.max_position_embeddings, hidden}));
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string prefix = root + "encoder.layers." + std::to_string(i) + ".";
    auto layer = std::make_unique<Layer>();
    SD_ASSIGN_OR_RETURN(layer->layer_norm1, load.norm(prefix + "layer_norm1", hidden));
    SD_ASSIGN_OR_RETURN(layer->q_proj, load.linear(prefix + "self_attn.q_proj", hidden, hidden));
    SD_ASSIGN_OR_RETURN(layer->k_proj, load.linear(prefix + "self_attn.k_proj", hidden, hidden));
    SD_ASSIGN_OR_RETURN(layer->v_proj, load.linear(prefix + "self_attn.v_proj", hidden, hidden));
    SD_ASSIGN_OR_RETURN(layer->out_proj, load.linear(prefix + "self_attn.out_proj", hidden, hidden));
    SD_ASSIGN_OR_RETURN(layer->layer_norm2, load.norm(prefix + "layer_norm2", hidden));
    SD_ASSIGN_OR_RETURN(layer->fc1, load.linear(prefix + "mlp.fc1", hidden, config.intermediate_size));
    SD_ASSIGN_OR_RETURN(layer->fc2, load.linear(prefix + "mlp.fc2", config.intermediate_size, hidden));
    model->layers_.push_back(std::move(layer));
  }
  SD_ASSIGN_OR_RETURN(model->final_layer_norm_, load.norm(root + "final_layer_norm", hidden));
  return model;
}

Result<Tensor> CLIPTextModel::encode(const std::vector<std::vector<int32_t>>& ids, int clip_skip) {
  const int64_t batch = static_cast<int64_t>(ids.size());
  if (batch == 0) return base::invalid_argument("text encoder: no token sequences to encode");
  const int64_t length = static_cast<int64_t>(ids[0].size());
  if (length == 0 || length > config_.max_position_embeddings) {
    return base::invalid_argument("text encoder: sequence length " + std::to_string(length) + " is outside 1.." +
                                  std::to_string(config_.max_position_embeddings));
  }
  if (clip_skip < 0 || clip_skip >= config_.num_hidden_layers) {
    return base::invalid_argument("clip_skip " + std::to_string(clip_skip) + " is outside 0.." +
                                  std::to_string(config_.num_hidden_layers - 1) + " for this text encoder");
  }
  const int64_t hidden = config_.hidden_size;

  // Embeddings: x[b, i] = token_embedding[ids[b][i]] + position_embedding[i].
  Tensor x = Tensor::empty({batch, length, hidden});  // [B, L, hidden]
  const size_t row_bytes = static_cast<size_t>(hidden) * tensor::dtype_size(token_embedding_.dtype());
  const auto* table = static_cast<const uint8_t*>(token_embedding_.raw_data());
  const float* positions = position_embedding_.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    if (static_cast<int64_t>(ids[static_cast<size_t>(b)].size()) != length) {
      return base::invalid_argument("text encoder: token sequences must have equal lengths");
    }
    for (int64_t i = 0; i < length; ++i) {
      int32_t id = ids[static_cast<size_t>(b)][static_cast<size_t>(i)];
      if (id < 0 || id >= config_.vocab_size) {
        return base::invalid_argument("text encoder: token id " + std::to_string(id) + " is outside the vocabulary (" +
                                      std::to_string(config_.vocab_size) + " tokens)");
      }
      float* row = x.data<float>() + (b * length + i) * hidden;
      tensor::convert_to_f32(table + static_cast<size_t>(id) * row_bytes, token_embedding_.dtype(), row,
                             static_cast<size_t>(hidden));
      for (int64_t c = 0; c < hidden; ++c) row[c] += positions[i * hidden + c];
    }
  }

  // Buffers reused by every layer.
  Tensor normed = Tensor::empty({batch, length, hidden});
  Tensor q = Tensor::empty({batch, length, hidden});
  Tensor k = Tensor::empty({batch, length, hidden});
  Tensor v = Tensor::empty({batch, length, hidden});
  Tensor attended = Tensor::empty({batch, length, hidden});
  Tensor mlp_hidden = Tensor::empty({batch, length, config_.intermediate_size});
  const int64_t heads = config_.num_attention_heads;
  const float eps = static_cast<float>(config_.layer_norm_eps);

  const size_t layers_to_run = layers_.size() - static_cast<size_t>(clip_skip);
  for (size_t l = 0; l < layers_to_run; ++l) {
    Layer& layer = *layers_[l];
    // Causal self-attention, residual fused into the output projection.
    backend_.layer_norm(x, layer.layer_norm1.gamma, layer.layer_norm1.beta, eps, normed);
    layer.q_proj->run(normed, q);
    layer.k_proj->run(normed, k);
    layer.v_proj->run(normed, v);
    backend_.attention(q, k, v, heads, /*causal=*/true, attended);
    layer.out_proj->run(attended, x, LinearExtras{.activation = Activation::kNone, .residual = x});
    // MLP: fc2(act(fc1(x))), residual fused into fc2.
    backend_.layer_norm(x, layer.layer_norm2.gamma, layer.layer_norm2.beta, eps, normed);
    layer.fc1->run(normed, mlp_hidden, LinearExtras{.activation = config_.hidden_act, .residual = {}});
    layer.fc2->run(mlp_hidden, x, LinearExtras{.activation = Activation::kNone, .residual = x});
  }
  backend_.layer_norm(x, final_layer_norm_.gamma, final_layer_norm_.beta, eps, x);
  return x;
}

}  // namespace sdstack::models
