// Random-weight models: each component built from its config on the load-only backend, its
// recorded weights written as safetensors, the folder published with one rename.
#include "models/random_model.h"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "base/file.h"
#include "io/safetensors.h"
#include "models/builtin_tokenizer.h"
#include "models/clip_text_model.h"
#include "models/unet.h"
#include "models/vae.h"

namespace sdstack::models {
namespace {

namespace fs = std::filesystem;

base::Status make_dir(const std::string& path) {
  std::error_code error;
  fs::create_directories(path, error);
  if (error) return base::io_error(path + ": cannot create folder: " + error.message());
  return base::Status::ok();
}

base::Status write_json(const std::string& path, const nlohmann::json& json) {
  return base::write_file_atomic(path, json.dump(2) + "\n");
}

// A new empty folder named `prefix` + six random characters (mkdtemp), beside the target.
base::Result<std::string> make_temp_dir(const std::string& prefix) {
  std::string pattern = prefix + "XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    return base::io_error(prefix + "XXXXXX: cannot create a temporary folder: " + std::strerror(errno));
  }
  return pattern;
}

uint64_t folder_bytes(const std::string& dir) {
  uint64_t bytes = 0;
  std::error_code error;
  for (const auto& entry : fs::recursive_directory_iterator(dir, error)) {
    if (entry.is_regular_file(error)) bytes += entry.file_size(error);
  }
  return bytes;
}

// Removes a temporary folder unless it was published (renamed into place) first.
class TempFolder {
 public:
  explicit TempFolder(std::string path) : path_(std::move(path)) {}
  ~TempFolder() {
    std::error_code ignored;
    if (!path_.empty()) fs::remove_all(path_, ignored);
  }
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;
  const std::string& path() const { return path_; }
  void release() { path_.clear(); }

 private:
  std::string path_;
};

base::Status not_empty_error(const std::string& dir) {
  return base::io_error(dir + ": exists and is not empty; refusing to overwrite it (--force replaces it)");
}

// Moves `from` (complete) to `to`, replacing an empty `to`, or a non-empty one when `force`.
base::Status publish(const std::string& from, const std::string& to, bool force) {
  std::error_code error;
  if (fs::exists(to, error)) {
    if (fs::is_empty(to, error)) {
      fs::remove(to, error);
    } else if (force) {
      // The old folder moves aside first, so `to` is at every moment either the old model or the new one.
      SD_ASSIGN_OR_RETURN(std::string aside, make_temp_dir(to + ".old-"));
      fs::rename(to, aside, error);
      if (error) return base::io_error(to + ": cannot move the old folder aside: " + error.message());
      fs::rename(from, to, error);
      if (error) {
        std::error_code ignored;
        fs::rename(aside, to, ignored);
        return base::io_error(to + ": cannot move the new model into place: " + error.message());
      }
      fs::remove_all(aside, error);
      return base::Status::ok();
    } else {
      return not_empty_error(to);
    }
  }
  fs::rename(from, to, error);
  if (error) return base::io_error(to + ": cannot move the new model into place: " + error.message());
  return base::Status::ok();
}

std::string weight_file(const std::string& component) {
  return component == "text_encoder" ? "model.safetensors" : "diffusion_pytorch_model.safetensors";
}

}  // namespace

base::Status record_component(const ModelPreset& preset, const std::string& component,
                              const RandomWeightSource& weights) {
  std::unique_ptr<backend::Backend> backend = make_load_only_backend();
  const std::string source = component + "/config.json";
  if (component == "text_encoder") {
    SD_ASSIGN_OR_RETURN(CLIPTextConfig config, CLIPTextConfig::from_json(preset.text_encoder, source));
    SD_ASSIGN_OR_RETURN(auto model, CLIPTextModel::create(config, weights, *backend));
    return base::Status::ok();
  }
  if (component == "unet") {
    SD_ASSIGN_OR_RETURN(UNet2DConditionConfig config, UNet2DConditionConfig::from_json(preset.unet, source));
    SD_ASSIGN_OR_RETURN(auto model, UNet2DConditionModel::create(config, weights, *backend));
    return base::Status::ok();
  }
  if (component == "vae") {
    SD_ASSIGN_OR_RETURN(AutoencoderKLConfig config, AutoencoderKLConfig::from_json(preset.vae, source));
    SD_ASSIGN_OR_RETURN(auto model, AutoencoderKL::create(config, weights, *backend));
    return base::Status::ok();
  }
  return base::invalid_argument("no weight component '" + component + "' (text_encoder, unet, vae)");
}

base::Result<RandomModelSummary> write_random_model(const ModelPreset& preset_in, const std::string& dir,
                                                    const RandomModelOptions& options,
                                                    const MakeModelProgress& progress) {
  std::string target = dir;
  while (target.size() > 1 && target.back() == '/') target.pop_back();
  if (target.empty()) return base::invalid_argument("no folder given to write the model to");
  std::error_code error;
  if (fs::exists(target, error)) {
    if (!fs::is_directory(target, error)) return base::io_error(target + ": exists and is not a folder");
    if (!fs::is_empty(target, error) && !options.force) {
      return not_empty_error(target);
    }
  }
  ModelPreset preset = preset_in;
  if (options.sample_size > 0) preset.set_sample_size(options.sample_size);
  // Checked before anything is written, so a bad config leaves no trace.
  for (const std::string& component : weight_components()) {
    RandomWeightSource shapes({.seed = options.seed, .dtype = options.dtype, .shapes_only = true});
    SD_RETURN_IF_ERROR(record_component(preset, component, shapes));
  }

  const std::string parent = fs::path(target).parent_path().string();
  if (!parent.empty()) SD_RETURN_IF_ERROR(make_dir(parent));
  SD_ASSIGN_OR_RETURN(std::string temp_path, make_temp_dir(target + ".tmp-"));
  TempFolder temp(temp_path);
  // mkdtemp makes the folder private (0700); the published model is an ordinary folder.
  fs::permissions(temp.path(),
                  fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read |
                      fs::perms::others_exec,
                  error);
  auto in_temp = [&](const std::string& path) { return base::join_path(temp.path(), path); };

  nlohmann::json model_index = preset.model_index;
  // Keys starting with "_" are private to the writer; diffusers ignores them.
  model_index["_sdstack_random_weights"] = {
      {"preset", preset.name}, {"seed", options.seed}, {"dtype", tensor::dtype_name(options.dtype)}};
  SD_RETURN_IF_ERROR(write_json(in_temp("model_index.json"), model_index));
  SD_RETURN_IF_ERROR(make_dir(in_temp("scheduler")));
  SD_RETURN_IF_ERROR(write_json(in_temp("scheduler/scheduler_config.json"), preset.scheduler));
  SD_RETURN_IF_ERROR(make_dir(in_temp("tokenizer")));
  SD_RETURN_IF_ERROR(write_builtin_tokenizer(in_temp("tokenizer")));

  RandomModelSummary summary;
  summary.tokenizer_merges = make_builtin_tokenizer().merges;
  const int total = static_cast<int>(weight_components().size());
  for (int i = 0; i < total; ++i) {
    const std::string& component = weight_components()[static_cast<size_t>(i)];
    if (progress) progress(i, total, component);
    SD_RETURN_IF_ERROR(make_dir(in_temp(component)));
    const nlohmann::json& config = component == "text_encoder" ? preset.text_encoder
                                   : component == "unet"       ? preset.unet
                                                               : preset.vae;
    SD_RETURN_IF_ERROR(write_json(in_temp(component + "/config.json"), config));

    RandomWeightSource weights({.seed = options.seed, .dtype = options.dtype});
    SD_RETURN_IF_ERROR(record_component(preset, component, weights));
    WrittenComponent written;
    written.component = component;
    written.file = component + "/" + weight_file(component);
    written.parameters = weights.parameter_count();
    SD_RETURN_IF_ERROR(io::write_safetensors(in_temp(written.file), weights.recorded(), {{"format", "pt"}}));
    weights.clear();  // the next component's weights need the memory (SD 1.5's UNet: 1.7 GB in f16)
    written.bytes = fs::file_size(in_temp(written.file), error);
    summary.parameters += written.parameters;
    summary.components.push_back(std::move(written));
  }
  if (progress) progress(total, total, "");

  SD_RETURN_IF_ERROR(publish(temp.path(), target, options.force));
  temp.release();
  summary.dir = target;
  summary.bytes = folder_bytes(target);
  return summary;
}

}  // namespace sdstack::models
