// The diffusers folder layout: model_index.json, each component's config, weight file selection.
#pragma once

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "base/status.h"
#include "io/weights.h"

namespace sdstack::io {

// A diffusers pipeline folder (what `from_pretrained` reads). Thread-safe once open.
class ModelFolder {
 public:
  // Reads and checks `dir/model_index.json`. A folder without one gets an error saying what a
  // diffusers folder looks like.
  static base::Result<ModelFolder> open(const std::string& dir);

  const std::string& root() const { return root_; }
  const nlohmann::json& model_index() const { return model_index_; }
  // Components listed in model_index.json with a non-null class (unet, vae, text_encoder, ...).
  std::vector<std::string> components() const;
  bool has_component(const std::string& name) const;
  std::string component_dir(const std::string& name) const;

  // The component's config: `config.json`, or `scheduler_config.json` for a scheduler,
  // `tokenizer_config.json` for a tokenizer.
  base::Result<nlohmann::json> config(const std::string& component) const;

  // The weight files diffusers would load for a component, chosen as diffusers does:
  // `model.safetensors` or `diffusion_pytorch_model.safetensors`, the `.fp16` variant when
  // `variant == "fp16"` or when it is the only one, a sharded `*.safetensors.index.json`.
  // Pickle files (`.bin`, `.ckpt`) are refused with a message saying why and what to do.
  // A variant asked for and missing falls back to the default weights with a warning, once per
  // component and folder object (a pipeline checks its files up front and reads them later).
  base::Result<std::vector<std::string>> weight_files(const std::string& component,
                                                      const std::string& variant = "") const;
  // weight_files() opened as one WeightSet.
  base::Result<WeightSet> weights(const std::string& component, const std::string& variant = "") const;

 private:
  std::string root_;
  nlohmann::json model_index_;
  mutable std::set<std::string> warned_fallbacks_;  // component dirs whose variant fallback was reported
};

}  // namespace sdstack::io
