// Random-weight Stable Diffusion models: a complete diffusers folder for a preset, made offline.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/status.h"
#include "models/presets.h"
#include "models/random_weights.h"

namespace sdstack::models {

// The weight-bearing components of a preset, in the order they are made.
inline const std::vector<std::string>& weight_components() {
  static const std::vector<std::string> components = {"text_encoder", "unet", "vae"};
  return components;
}

// Builds `component` ("text_encoder", "unet" or "vae") of `preset` from its config with `weights`
// on the load-only backend, so that `weights` records every tensor the component has (nothing is
// computed, and no weight is copied). Errors: a config the model code refuses, naming the file.
base::Status record_component(const ModelPreset& preset, const std::string& component,
                              const RandomWeightSource& weights);

struct RandomModelOptions {
  uint64_t seed = 0;
  DType dtype = DType::kF16;
  int64_t sample_size = 0;  // the UNet's latent size (images are 8x); 0 keeps the preset's
  bool force = false;       // replace a folder that exists and is not empty
};

struct WrittenComponent {
  std::string component;  // "unet"
  std::string file;       // "unet/diffusion_pytorch_model.safetensors"
  int64_t parameters = 0;
  uint64_t bytes = 0;
};

struct RandomModelSummary {
  std::string dir;
  std::vector<WrittenComponent> components;
  size_t tokenizer_merges = 0;
  int64_t parameters = 0;  // all components together
  uint64_t bytes = 0;      // every file of the folder
};

// Called as each weight component starts (done of total so far) and once at the end (done == total).
using MakeModelProgress = std::function<void(int done, int total, const std::string& component)>;

// Writes a diffusers folder for `preset` at `dir` with random weights (see RandomWeightSource):
// model_index.json, scheduler/, text_encoder/, tokenizer/ (the built-in tokenizer), unet/, vae/,
// each component's config as the preset has it and its weights as safetensors. The same preset,
// options and seed give the same bytes.
//
// Nothing incomplete is ever visible at `dir`: the folder is written as `dir.tmp-XXXXXX` beside
// it and renamed into place at the end, and removed on failure. A `dir` that exists and is not
// empty is refused unless options.force, which replaces it. Not thread-safe with another writer
// of the same `dir`.
base::Result<RandomModelSummary> write_random_model(const ModelPreset& preset, const std::string& dir,
                                                    const RandomModelOptions& options,
                                                    const MakeModelProgress& progress = {});

}  // namespace sdstack::models
