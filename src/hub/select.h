// Which files of a repo a diffusers pipeline needs, chosen as diffusers' DiffusionPipeline.download
// chooses them: model_index.json, each listed component's folder, only the safetensors weights
// (of the asked variant when there is one), no safety checker or feature extractor unless asked.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/status.h"

namespace sdstack::hub {

struct SelectOptions {
  std::string variant;               // "fp16": prefer diffusion_pytorch_model.fp16.safetensors
  std::vector<std::string> include;  // globs: also take matching files (e.g. "safety_checker/*")
  std::vector<std::string> exclude;  // globs: drop matching files, applied last
};

// Picks from `repo_files` (every path at one commit) what a pipeline described by `model_index`
// loads, in sorted order:
//  - model_index.json;
//  - for each component with a class (unet, vae, text_encoder, tokenizer, scheduler, ...) except
//    safety_checker and feature_extractor: every non-weight file of its folder (configs,
//    tokenizer files) and one set of safetensors weights: the `variant`'s when the folder has it,
//    else the default (no variant), else the only variant there is; shards and their index too;
//  - never pickles (.bin, .ckpt, .pt), other formats (.msgpack, .onnx), other variants (non_ema,
//    ema), or root checkpoints (v1-5-pruned.safetensors);
//  - then files matching `include`, minus files matching `exclude`.
// Errors, naming the repo and component: a component folder that is missing, or that has weights
// but no safetensors (pickles only), or only several variants and no --variant to choose.
base::Result<std::vector<std::string>> select_pipeline_files(const std::string& repo_id,
                                                             const nlohmann::json& model_index,
                                                             const std::vector<std::string>& repo_files,
                                                             const SelectOptions& options);

// fnmatch(3)-style matching as huggingface_hub's allow/ignore patterns: '*' matches any run of
// characters, '/' included; '?' one character; "[abc]", "[!abc]" a set. A pattern ending in '/'
// matches everything under that folder.
bool glob_match(const std::string& pattern, const std::string& path);

}  // namespace sdstack::hub
