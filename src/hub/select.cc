// The files a diffusers pipeline loads, chosen from a repo's listing as diffusers chooses them.
#include "hub/select.h"

#include <algorithm>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "base/strings.h"

namespace sdstack::hub {
namespace {

// Loaded only when asked (diffusers' pipelines run without them; sdstack never loads them).
const std::set<std::string> kOptionalComponents = {"safety_checker", "feature_extractor"};

// Extensions of weight files in any format, and of the indexes of sharded ones.
const std::vector<std::string> kWeightExtensions = {".safetensors", ".bin",       ".ckpt", ".pt", ".pth", ".msgpack",
                                                    ".onnx",        ".onnx_data", ".pb",   ".h5", ".gguf"};

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string basename(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool is_weight_index(const std::string& name) {
  static const std::regex index(R"(.+\.(safetensors|bin|msgpack|h5)\.index(\.[A-Za-z0-9_]+)?\.json)");
  return std::regex_match(name, index);
}

bool is_weight_like(const std::string& name) {
  for (const std::string& extension : kWeightExtensions) {
    if (ends_with(name, extension)) return true;
  }
  return is_weight_index(name);
}

// The variant of a safetensors weight file or index diffusers would load ("" for the default), or
// nullopt when the name is not one diffusers loads:
//   diffusion_pytorch_model.safetensors, model.fp16.safetensors, model.fp16-00001-of-00002.safetensors,
//   diffusion_pytorch_model.safetensors.index.fp16.json, model.fp16.safetensors.index.json
std::optional<std::string> safetensors_variant(const std::string& name) {
  static const std::regex weights(
      R"((diffusion_pytorch_model|model)(\.([A-Za-z0-9_]+))?(-\d{5}-of-\d{5})?\.safetensors)");
  static const std::regex index_after(
      R"((diffusion_pytorch_model|model)\.safetensors\.index(\.([A-Za-z0-9_]+))?\.json)");
  static const std::regex index_before(R"((diffusion_pytorch_model|model)\.([A-Za-z0-9_]+)\.safetensors\.index\.json)");
  std::smatch match;
  if (std::regex_match(name, match, weights)) return match[3].str();
  if (std::regex_match(name, match, index_after)) return match[3].str();
  if (std::regex_match(name, match, index_before)) return match[2].str();
  return std::nullopt;
}

// The components model_index.json lists with a class: {"unet": ["diffusers", "UNet2DConditionModel"]}.
std::vector<std::string> listed_components(const nlohmann::json& model_index) {
  std::vector<std::string> names;
  if (!model_index.is_object()) return names;
  for (auto it = model_index.begin(); it != model_index.end(); ++it) {
    if (it.key().empty() || it.key()[0] == '_') continue;
    const nlohmann::json& value = it.value();
    if (value.is_array() && value.size() == 2 && value[1].is_string()) names.push_back(it.key());
  }
  return names;
}

bool glob_match_at(const std::string& pattern, size_t p, const std::string& text, size_t t) {
  while (p < pattern.size()) {
    const char c = pattern[p];
    if (c == '*') {
      while (p < pattern.size() && pattern[p] == '*') ++p;
      if (p == pattern.size()) return true;
      for (size_t from = t; from <= text.size(); ++from) {
        if (glob_match_at(pattern, p, text, from)) return true;
      }
      return false;
    }
    if (t == text.size()) return false;
    if (c == '?') {
      ++p;
      ++t;
      continue;
    }
    if (c == '[') {
      size_t close = pattern.find(']', p + 2);
      if (close != std::string::npos) {
        size_t q = p + 1;
        const bool negated = pattern[q] == '!' || pattern[q] == '^';
        if (negated) ++q;
        bool found = false;
        for (; q < close; ++q) {
          if (q + 2 < close && pattern[q + 1] == '-') {
            found = found || (text[t] >= pattern[q] && text[t] <= pattern[q + 2]);
            q += 2;
          } else {
            found = found || text[t] == pattern[q];
          }
        }
        if (found == negated) return false;
        p = close + 1;
        ++t;
        continue;
      }
    }
    if (c != text[t]) return false;
    ++p;
    ++t;
  }
  return t == text.size();
}

}  // namespace

bool glob_match(const std::string& pattern, const std::string& path) {
  if (!pattern.empty() && pattern.back() == '/') return glob_match_at(pattern + "*", 0, path, 0);
  return glob_match_at(pattern, 0, path, 0);
}

base::Result<std::vector<std::string>> select_pipeline_files(const std::string& repo_id,
                                                             const nlohmann::json& model_index,
                                                             const std::vector<std::string>& repo_files,
                                                             const SelectOptions& options) {
  std::set<std::string> selected;
  if (std::find(repo_files.begin(), repo_files.end(), "model_index.json") != repo_files.end()) {
    selected.insert("model_index.json");
  }
  // Weight problems wait until --include has had its say: including a folder's .bin files is an answer.
  std::map<std::string, base::Status> weight_problems;

  for (const std::string& component : listed_components(model_index)) {
    if (kOptionalComponents.count(component) > 0) continue;
    const std::string folder = component + "/";
    std::vector<std::string> files;
    for (const std::string& path : repo_files) {
      if (path.rfind(folder, 0) == 0) files.push_back(path);
    }
    if (files.empty()) {
      return base::not_found(repo_id + ": model_index.json lists the component '" + component +
                             "' but the repository has no " + folder + " folder; is this revision complete?");
    }
    std::map<std::string, std::vector<std::string>> safetensors;  // variant -> weight files and indexes
    std::vector<std::string> other_weights;
    for (const std::string& path : files) {
      const std::string name = basename(path);
      if (!is_weight_like(name)) {
        selected.insert(path);  // configs, tokenizer files
      } else if (auto variant = safetensors_variant(name); variant && path == folder + name) {
        safetensors[*variant].push_back(path);
      } else {
        other_weights.push_back(path);
      }
    }
    if (safetensors.empty() && other_weights.empty()) continue;  // a tokenizer or scheduler: no weights

    std::optional<std::string> chosen;
    if (!options.variant.empty() && safetensors.count(options.variant) > 0) {
      chosen = options.variant;
    } else if (safetensors.count("") > 0) {
      chosen = "";
    } else if (options.variant.empty() && safetensors.size() == 1) {
      chosen = safetensors.begin()->first;  // the only variant there is, as diffusers falls back to it
    }
    if (chosen) {
      selected.insert(safetensors[*chosen].begin(), safetensors[*chosen].end());
      continue;
    }
    if (safetensors.empty()) {
      std::vector<std::string> names;
      for (const std::string& path : other_weights) names.push_back(basename(path));
      weight_problems[component] = base::unsupported(
          repo_id + ": '" + component + "' has no .safetensors weights, only " + base::join(names, ", ") +
          "; sdstack does not load pickle or other formats. Pull another revision (--revision), or take these "
          "files anyway with --include '" +
          folder + "*'");
    } else {
      std::vector<std::string> variants;
      for (const auto& [variant, unused] : safetensors) variants.push_back(variant);
      weight_problems[component] =
          base::not_found(repo_id + ": '" + component + "' has no " +
                          (options.variant.empty() ? "default" : options.variant + " or default") +
                          " weights, only the variants " + base::join(variants, ", ") + "; choose one with --variant");
    }
  }

  for (const std::string& path : repo_files) {
    for (const std::string& pattern : options.include) {
      if (glob_match(pattern, path)) selected.insert(path);
    }
  }
  for (auto it = selected.begin(); it != selected.end();) {
    bool excluded = std::any_of(options.exclude.begin(), options.exclude.end(),
                                [&](const std::string& pattern) { return glob_match(pattern, *it); });
    it = excluded ? selected.erase(it) : std::next(it);
  }
  for (const auto& [component, problem] : weight_problems) {
    const std::string folder = component + "/";
    bool has_weights = std::any_of(selected.begin(), selected.end(), [&](const std::string& path) {
      return path.rfind(folder, 0) == 0 && is_weight_like(basename(path));
    });
    if (!has_weights) return problem;
  }
  return std::vector<std::string>(selected.begin(), selected.end());
}

}  // namespace sdstack::hub
