// Model presets: the diffusers configs of architectures sdstack can make random-weight models of.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace sdstack::models {

// Every config file of a Stable Diffusion folder, as the real model's folder has them.
struct ModelPreset {
  std::string name;
  std::string description;      // one line, for help and messages
  nlohmann::json model_index;   // model_index.json
  nlohmann::json scheduler;     // scheduler/scheduler_config.json
  nlohmann::json text_encoder;  // text_encoder/config.json
  nlohmann::json unet;          // unet/config.json
  nlohmann::json vae;           // vae/config.json

  // Sets the UNet's sample_size (the latent size: the default image is 8x it) and the VAE's
  // sample_size to match, as a real folder would have them.
  void set_sample_size(int64_t latent_size);
};

// "tiny" (the golden tests' tiny-sd topology, about 5 M parameters) and "sd15"
// (runwayml/stable-diffusion-v1-5: UNet 860 M, VAE 84 M, CLIP ViT-L/14 text 123 M).
std::vector<std::string> model_preset_names();

// The preset called `name`; an unknown name is an error listing the known ones.
base::Result<ModelPreset> model_preset(const std::string& name);

}  // namespace sdstack::models
