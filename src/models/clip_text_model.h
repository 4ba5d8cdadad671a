// The CLIP text encoder (transformers' CLIPTextModel): token ids -> the embeddings that
// condition the UNet.
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

struct CLIPTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t max_position_embeddings = 77;
  double layer_norm_eps = 1e-5;
  backend::Activation hidden_act = backend::Activation::kQuickGELU;  // "quick_gelu" or "gelu"

  // From text_encoder/config.json; `source` names the file in errors.
  static base::Result<CLIPTextConfig> from_json(const nlohmann::json& json, const std::string& source);
};

// The text transformer: embeddings, pre-norm encoder layers with causal self-attention, final
// layer norm. Weights are looked up by their checkpoint names (`text_model.encoder.layers.0...`).
// Holds a reference to the backend, which must outlive it. Not thread-safe.
class CLIPTextModel {
 public:
  // Loads `text_encoder/` of a diffusers folder.
  static base::Result<std::unique_ptr<CLIPTextModel>> load(const io::ModelFolder& folder, Backend& backend,
                                                           const std::string& variant = "");
  static base::Result<std::unique_ptr<CLIPTextModel>> create(const CLIPTextConfig& config,
                                                             const io::WeightSource& weights, Backend& backend);
  ~CLIPTextModel();

  // ids: B sequences of equal length L <= max_position_embeddings. Returns [B, L, hidden], the
  // last hidden state after the final layer norm. With clip_skip = k > 0 the last k layers are
  // skipped and the final layer norm applied to the output of the layer before them (what
  // diffusers' `clip_skip` does). Errors: ids outside the vocabulary, bad lengths, bad clip_skip.
  base::Result<Tensor> encode(const std::vector<std::vector<int32_t>>& ids, int clip_skip = 0);

  const CLIPTextConfig& config() const { return config_; }

 private:
  struct Layer;
  CLIPTextModel(const CLIPTextConfig& config, Backend& backend);

  CLIPTextConfig config_;
  Backend& backend_;
  Tensor token_embedding_;     // [vocab, hidden], as stored (rows converted on lookup)
  Tensor position_embedding_;  // [max_positions, hidden] f32
  std::vector<std::unique_ptr<Layer>> layers_;
  NormWeights final_layer_norm_;
};

}  // namespace sdstack::models
