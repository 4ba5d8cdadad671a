// WeightSet: one component's tensors across its safetensors shards, looked up by checkpoint name.
#include "io/weights.h"

#include <cstdint>

#include "base/strings.h"

namespace sdstack::io {
namespace {

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Module prefix of a checkpoint name: "conv_in.bias" -> "conv_in.".
std::string module_prefix(const std::string& name) {
  size_t dot = name.find_last_of('.');
  return dot == std::string::npos ? "" : name.substr(0, dot + 1);
}

}  // namespace

WeightSource::~WeightSource() = default;

void WeightSource::release(const std::string&) const {}

std::string display_path(const std::string& path) {
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  size_t last = trimmed.find_last_of('/');
  if (last == std::string::npos || last == 0) return trimmed;
  size_t second = trimmed.find_last_of('/', last - 1);
  return second == std::string::npos ? trimmed : trimmed.substr(second + 1);
}

base::Result<WeightSet> WeightSet::open(const std::vector<std::string>& paths) {
  if (paths.empty()) return base::invalid_argument("no weight files given");
  WeightSet set;
  for (const std::string& path : paths) {
    SD_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> file, SafetensorsFile::open(path));
    const size_t file_index = set.files_.size();
    auto check_duplicate = [&](const std::string& name) -> base::Status {
      size_t other = SIZE_MAX;
      if (auto it = set.index_.find(name); it != set.index_.end()) other = it->second.first;
      if (auto it = set.unreadable_.find(name); it != set.unreadable_.end()) other = it->second.first;
      if (other == SIZE_MAX) return base::Status::ok();
      return base::data_loss(display_path(path) + ": tensor '" + name + "' is also in " +
                             display_path(set.files_[other]->path()) +
                             "; shards must not repeat a tensor (a download mixing two revisions? re-download it)");
    };
    for (const TensorInfo& info : file->tensors()) {
      SD_RETURN_IF_ERROR(check_duplicate(info.name));
      set.index_[info.name] = {file_index, &info};
    }
    for (const UnreadableTensor& info : file->unreadable_tensors()) {
      SD_RETURN_IF_ERROR(check_duplicate(info.name));
      set.unreadable_[info.name] = {file_index, &info};
    }
    set.files_.push_back(std::move(file));
  }
  return set;
}

bool WeightSet::contains(const std::string& name) const { return index_.count(name) != 0; }

std::vector<std::string> WeightSet::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, where] : index_) out.push_back(name);
  return out;
}

std::string WeightSet::source() const {
  if (files_.size() == 1) return display_path(files_[0]->path());
  return std::to_string(files_.size()) + " shards in " + display_path(parent_dir(files_[0]->path()));
}

base::Result<Tensor> WeightSet::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it != index_.end()) return files_[it->second.first]->tensor(*it->second.second);
  if (auto bad = unreadable_.find(name); bad != unreadable_.end()) {
    return unreadable_tensor_error(display_path(files_[bad->second.first]->path()), *bad->second.second);
  }

  // A sibling in the same module first ('conv_in.weight' for a missing 'conv_in.bias'): the
  // module exists, so the config and the checkpoint disagree about that parameter. Otherwise
  // the name may be a typo of any tensor.
  std::string hint;
  const std::string prefix = module_prefix(name);
  std::string closest;
  if (!prefix.empty()) {
    for (auto sibling = index_.lower_bound(prefix); sibling != index_.end(); ++sibling) {
      if (sibling->first.compare(0, prefix.size(), prefix) != 0) break;
      if (sibling->first.find('.', prefix.size()) != std::string::npos)
        continue;  // a submodule's tensor, not a sibling
      if (closest.empty() || base::edit_distance(name, sibling->first) < base::edit_distance(name, closest)) {
        closest = sibling->first;
      }
    }
  }
  if (!closest.empty()) {
    hint = " (did you mean '" + closest + "'?)";
  } else {
    hint = base::did_you_mean(name, names());
  }
  return base::not_found(source() + ": missing tensor '" + name + "'" + hint);
}

void WeightSet::release(const std::string& name) const {
  auto it = index_.find(name);
  if (it != index_.end()) files_[it->second.first]->release(*it->second.second);
}

base::Result<Tensor> WeightSet::get(const std::string& name, const Shape& expected) const {
  SD_ASSIGN_OR_RETURN(Tensor t, get(name));
  if (t.shape() != expected) {
    const std::string& file = files_[index_.find(name)->second.first]->path();
    return base::invalid_argument(display_path(file) + ": tensor '" + name + "' has shape " + t.shape_string() +
                                  ", expected " + base::shape_to_string(expected));
  }
  return t;
}

}  // namespace sdstack::io
