// The diffusers folder layout: model_index.json, component configs, and choosing weight files as diffusers does.
#include "io/model_folder.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <set>

#include "base/file.h"
#include "base/log.h"
#include "base/strings.h"

namespace sdstack::io {
namespace {

using base::Result;
using base::Status;

// The weight file stems diffusers (models) and transformers (text encoders) save under.
const char* const kWeightStems[] = {"diffusion_pytorch_model", "model"};
// Pickle formats: refused, never opened, because unpickling runs arbitrary code.
const char* const kPickleExtensions[] = {".bin", ".ckpt", ".pt", ".pth"};

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Reads a JSON object from `path`; errors name the file and, for syntax errors, the byte.
Result<nlohmann::json> read_json_object(const std::string& path) {
  SD_ASSIGN_OR_RETURN(std::string text, base::read_file(path));
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // "path:line:column:" as compilers write it; e.byte is the 1-based offset of the bad character.
    size_t offset = std::min<size_t>(e.byte > 0 ? e.byte - 1 : 0, text.size());
    size_t line = 1, line_start = 0;
    for (size_t i = 0; i < offset; ++i) {
      if (text[i] == '\n') {
        ++line;
        line_start = i + 1;
      }
    }
    std::string reason = e.what();
    size_t colon = reason.find(": ", reason.find("parse error"));
    if (colon != std::string::npos) reason = reason.substr(colon + 2);
    return base::data_loss(path + ":" + std::to_string(line) + ":" + std::to_string(offset - line_start + 1) +
                           ": not valid JSON: " + reason);
  }
  if (!value.is_object()) {
    return base::data_loss(path + ": is " + std::string(value.type_name()) + ", expected a JSON object");
  }
  return value;
}

std::vector<std::string> list_files(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (entry.is_regular_file(error)) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The index file names diffusers and transformers have used for a sharded checkpoint, for a
// variant or none: `<stem>.fp16.safetensors.index.json`, and the spellings that insert the
// variant later (`.safetensors.fp16.index.json` by diffusers' _add_variant, `.index.fp16.json`
// by transformers').
std::vector<std::string> index_names(const std::string& stem, const std::string& variant) {
  if (variant.empty()) return {stem + ".safetensors.index.json"};
  return {stem + "." + variant + ".safetensors.index.json", stem + ".safetensors." + variant + ".index.json",
          stem + ".safetensors.index." + variant + ".json"};
}

// The variant a file name carries for `stem`, if it is a single file or an index of that stem
// ("diffusion_pytorch_model.fp16.safetensors" -> "fp16"); shards themselves are not entry points.
std::optional<std::string> variant_of(const std::string& file, const std::string& stem) {
  const std::vector<std::pair<std::string, std::string>> patterns = {
      {stem + ".", ".safetensors"},
      {stem + ".", ".safetensors.index.json"},
      {stem + ".safetensors.", ".index.json"},
      {stem + ".safetensors.index.", ".json"},
  };
  for (const auto& [prefix, suffix] : patterns) {
    if (file.size() <= prefix.size() + suffix.size() || !starts_with(file, prefix) || !ends_with(file, suffix))
      continue;
    std::string middle = file.substr(prefix.size(), file.size() - prefix.size() - suffix.size());
    if (middle.find('.') == std::string::npos && middle.find("-of-") == std::string::npos) return middle;
  }
  return std::nullopt;
}

// The shard files a `*.safetensors.index.json` names, each checked to exist beside it.
Result<std::vector<std::string>> read_shard_index(const std::string& dir, const std::string& index_path) {
  SD_ASSIGN_OR_RETURN(nlohmann::json index, read_json_object(index_path));
  auto map = index.find("weight_map");
  if (map == index.end() || !map->is_object() || map->empty()) {
    return base::data_loss(index_path +
                           ": no \"weight_map\" object mapping tensors to shard files (re-pull the model)");
  }
  std::set<std::string> shards;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it->is_string()) {
      return base::data_loss(index_path + ": weight_map entry '" + it.key() + "' is not a file name");
    }
    shards.insert(it->get<std::string>());
  }
  std::vector<std::string> paths;
  for (const std::string& shard : shards) {
    // A shard must be a plain file beside the index: a path could point anywhere on disk.
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == ".." ||
        !ends_with(shard, ".safetensors")) {
      return base::data_loss(index_path + ": shard '" + shard + "' is not a .safetensors file name in the same folder");
    }
    std::string path = base::join_path(dir, shard);
    if (!base::file_exists(path)) {
      return base::not_found(index_path + " names shard '" + shard + "', which is missing from " + dir +
                             " (the download is incomplete: re-pull the model)");
    }
    paths.push_back(path);
  }
  return paths;
}

// The weights for one variant ("" = none) in `dir`: a single file first, then a sharded index;
// nullopt when there are none.
Result<std::optional<std::vector<std::string>>> find_weights(const std::string& dir, const std::string& variant) {
  for (const char* stem : kWeightStems) {
    std::string single =
        base::join_path(dir, std::string(stem) + (variant.empty() ? "" : "." + variant) + ".safetensors");
    if (base::file_exists(single)) return std::optional<std::vector<std::string>>(std::vector<std::string>{single});
    for (const std::string& name : index_names(stem, variant)) {
      std::string index_path = base::join_path(dir, name);
      if (!base::file_exists(index_path)) continue;
      SD_ASSIGN_OR_RETURN(std::vector<std::string> shards, read_shard_index(dir, index_path));
      return std::optional<std::vector<std::string>>(std::move(shards));
    }
  }
  return std::optional<std::vector<std::string>>();
}

}  // namespace

Result<ModelFolder> ModelFolder::open(const std::string& dir) {
  if (!base::is_directory(dir)) {
    return base::not_found(
        dir + ": no such folder (get a model with 'sdstack pull runwayml/stable-diffusion-v1-5 --to " + dir + "')");
  }
  std::string index_path = base::join_path(dir, "model_index.json");
  if (!base::file_exists(index_path)) {
    return base::not_found(dir +
                           " is not a diffusers model folder: no model_index.json (expected model_index.json, unet/, "
                           "vae/, text_encoder/, tokenizer/, scheduler/ — get one with 'sdstack pull "
                           "runwayml/stable-diffusion-v1-5 --to " +
                           dir + "')");
  }
  SD_ASSIGN_OR_RETURN(nlohmann::json index, read_json_object(index_path));
  ModelFolder folder;
  folder.root_ = dir;
  folder.model_index_ = std::move(index);
  return folder;
}

std::vector<std::string> ModelFolder::components() const {
  std::vector<std::string> names;
  for (auto it = model_index_.begin(); it != model_index_.end(); ++it) {
    // Keys like "_class_name" are pipeline attributes; components are [library, class] pairs,
    // and a null class marks one the pipeline was saved without (safety_checker, say).
    if (starts_with(it.key(), "_") || !it->is_array() || it->size() != 2) continue;
    if (!(*it)[1].is_string()) continue;
    names.push_back(it.key());
  }
  return names;
}

bool ModelFolder::has_component(const std::string& name) const {
  std::vector<std::string> names = components();
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string ModelFolder::component_dir(const std::string& name) const { return base::join_path(root_, name); }

Result<nlohmann::json> ModelFolder::config(const std::string& component) const {
  if (!has_component(component)) {
    return base::not_found(base::join_path(root_, "model_index.json") + ": no component '" + component + "'" +
                           base::did_you_mean(component, components()));
  }
  std::string file = "config.json";
  if (starts_with(component, "scheduler")) file = "scheduler_config.json";
  if (starts_with(component, "tokenizer")) file = "tokenizer_config.json";
  std::string path = base::join_path(component_dir(component), file);
  if (!base::file_exists(path)) {
    return base::not_found(path + ": no such file (model_index.json lists '" + component +
                           "'; the download is incomplete: re-pull the model)");
  }
  return read_json_object(path);
}

Result<std::vector<std::string>> ModelFolder::weight_files(const std::string& component,
                                                           const std::string& variant) const {
  const std::string dir = component_dir(component);
  if (!base::is_directory(dir)) {
    if (!has_component(component)) {
      return base::not_found(base::join_path(root_, "model_index.json") + ": no component '" + component + "'" +
                             base::did_you_mean(component, components()));
    }
    return base::not_found(dir + ": no such folder (model_index.json lists '" + component +
                           "'; the download is incomplete: re-pull the model)");
  }

  if (!variant.empty()) {
    SD_ASSIGN_OR_RETURN(auto wanted, find_weights(dir, variant));
    if (wanted) return std::move(*wanted);
    SD_ASSIGN_OR_RETURN(auto plain, find_weights(dir, ""));
    if (plain) {
      // diffusers raises here; using the full-precision weights instead gives the same images.
      if (warned_fallbacks_.insert(dir).second) {
        SD_LOG(kWarning, dir << ": no " << variant << " weights; using " << display_path((*plain)[0])
                             << (plain->size() > 1 ? " and its other shards" : ""));
      }
      return std::move(*plain);
    }
  } else {
    SD_ASSIGN_OR_RETURN(auto plain, find_weights(dir, ""));
    if (plain) return std::move(*plain);
    // No default weights: a variant that is the only one is what diffusers falls back to.
    std::set<std::string> variants;
    for (const std::string& file : list_files(dir)) {
      for (const char* stem : kWeightStems) {
        if (auto v = variant_of(file, stem)) variants.insert(*v);
      }
    }
    if (variants.size() == 1) {
      SD_ASSIGN_OR_RETURN(auto only, find_weights(dir, *variants.begin()));
      if (only) {
        SD_LOG(kDebug, dir << ": no default weights; using the only variant, " << *variants.begin());
        return std::move(*only);
      }
    } else if (variants.size() > 1) {
      return base::not_found(dir + ": no default weights, only the variants " +
                             base::join(std::vector<std::string>(variants.begin(), variants.end()), ", ") +
                             "; choose one with --variant");
    }
  }

  // Nothing loadable: say why, most specific first.
  std::vector<std::string> pickles, other_safetensors;
  for (const std::string& file : list_files(dir)) {
    for (const char* ext : kPickleExtensions) {
      if (ends_with(file, ext)) pickles.push_back(file);
    }
    if (ends_with(file, ".safetensors")) other_safetensors.push_back(file);
  }
  if (!pickles.empty() && other_safetensors.empty()) {
    return base::unsupported(
        dir + ": only pickle weights found (" + base::join(pickles, ", ") +
        "); sdstack does not load pickle files because unpickling can run arbitrary code. Convert them to "
        "safetensors (e.g. with diffusers' save_pretrained(..., safe_serialization=True)) or pull a revision that "
        "has .safetensors");
  }
  std::string expected = "diffusion_pytorch_model" + (variant.empty() ? "" : "." + variant) + ".safetensors or model" +
                         (variant.empty() ? "" : "." + variant) + ".safetensors";
  if (!other_safetensors.empty()) {
    return base::not_found(dir + ": no weights named " + expected + " (found " + base::join(other_safetensors, ", ") +
                           ", which diffusers would not load)");
  }
  return base::not_found(dir + ": no weight files (expected " + expected +
                         "); the download is incomplete: re-pull the model");
}

Result<WeightSet> ModelFolder::weights(const std::string& component, const std::string& variant) const {
  SD_ASSIGN_OR_RETURN(std::vector<std::string> files, weight_files(component, variant));
  return WeightSet::open(files);
}

}  // namespace sdstack::io
