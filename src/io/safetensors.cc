// safetensors: header validation over a memory map, tensor views into it, and an atomic writer.
#include "io/safetensors.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "base/strings.h"

namespace sdstack::io {
namespace {

using base::Result;
using base::Status;

// The reference implementation's limit; a larger header is corruption, not a real model.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Every dtype the safetensors format defines, with its width in bits (F4/F6 pack below a byte)
// and the sdstack dtype when sdstack reads it.
struct DTypeSpec {
  const char* name;
  int bits;
  std::optional<DType> dtype;
};

constexpr DTypeSpec kDTypes[] = {
    {"F32", 32, DType::kF32},  {"F16", 16, DType::kF16},     {"BF16", 16, DType::kBF16},   {"F64", 64, std::nullopt},
    {"I64", 64, std::nullopt}, {"U64", 64, std::nullopt},    {"I32", 32, std::nullopt},    {"U32", 32, std::nullopt},
    {"I16", 16, std::nullopt}, {"U16", 16, std::nullopt},    {"I8", 8, std::nullopt},      {"U8", 8, std::nullopt},
    {"BOOL", 8, std::nullopt}, {"F8_E4M3", 8, std::nullopt}, {"F8_E5M2", 8, std::nullopt}, {"F8_E8M0", 8, std::nullopt},
    {"C64", 64, std::nullopt}, {"F6_E2M3", 6, std::nullopt}, {"F6_E3M2", 6, std::nullopt}, {"F4", 4, std::nullopt},
};

const DTypeSpec* find_dtype(const std::string& name) {
  for (const DTypeSpec& spec : kDTypes) {
    if (name == spec.name) return &spec;
  }
  return nullptr;
}

const char* safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A non-negative JSON integer that fits in int64 (what shapes and offsets must be).
std::optional<uint64_t> as_count(const nlohmann::json& value) {
  if (value.is_number_unsigned()) {
    uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return v;
  }
  if (value.is_number_integer()) {
    int64_t v = value.get<int64_t>();
    if (v < 0) return std::nullopt;
    return static_cast<uint64_t>(v);
  }
  return std::nullopt;
}

// One header entry after its own checks; `spec` says whether sdstack can read it.
struct Entry {
  std::string name;
  const DTypeSpec* spec;
  Shape shape;
  uint64_t begin;
  uint64_t end;
};

// The JSON text of a header as it appears in messages: short, on one line.
std::string json_snippet(const nlohmann::json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

Result<Entry> parse_entry(const std::string& path, const std::string& name, const nlohmann::json& value) {
  const std::string where = path + ": tensor '" + name + "'";
  const std::string corrupt = " (the file is corrupt or was written by a broken tool)";
  if (!value.is_object()) {
    return base::data_loss(where + ": header entry is " + json_snippet(value) +
                           ", expected an object with dtype, shape and data_offsets" + corrupt);
  }
  Entry entry;
  entry.name = name;

  auto dtype_it = value.find("dtype");
  if (dtype_it == value.end() || !dtype_it->is_string()) {
    return base::data_loss(where + ": header entry has no dtype string" + corrupt);
  }
  const std::string dtype_name = dtype_it->get<std::string>();
  entry.spec = find_dtype(dtype_name);
  if (entry.spec == nullptr) {
    std::vector<std::string> known;
    for (const DTypeSpec& spec : kDTypes) known.push_back(spec.name);
    return base::data_loss(where + ": unknown dtype '" + dtype_name + "'" + base::did_you_mean(dtype_name, known) +
                           "; sdstack reads F32, F16 and BF16 (the file is corrupt or not safetensors)");
  }

  auto shape_it = value.find("shape");
  if (shape_it == value.end() || !shape_it->is_array()) {
    return base::data_loss(where + ": header entry has no shape array" + corrupt);
  }
  for (const nlohmann::json& dim : *shape_it) {
    std::optional<uint64_t> d = as_count(dim);
    if (!d) {
      return base::data_loss(where + ": shape " + json_snippet(*shape_it) +
                             " must be an array of non-negative integers" + corrupt);
    }
    entry.shape.push_back(static_cast<int64_t>(*d));
  }

  auto offsets_it = value.find("data_offsets");
  std::optional<uint64_t> begin, end;
  if (offsets_it != value.end() && offsets_it->is_array() && offsets_it->size() == 2) {
    begin = as_count((*offsets_it)[0]);
    end = as_count((*offsets_it)[1]);
  }
  if (!begin || !end) {
    std::string got = offsets_it == value.end() ? "missing" : json_snippet(*offsets_it);
    return base::data_loss(where + ": data_offsets is " + got + ", expected [begin, end] (non-negative integers)" +
                           corrupt);
  }
  if (*begin > *end) {
    return base::data_loss(where + ": data_offsets [" + std::to_string(*begin) + "," + std::to_string(*end) +
                           "] end before they begin" + corrupt);
  }
  entry.begin = *begin;
  entry.end = *end;

  // numel * bits / 8, refusing overflow: a huge shape must not wrap around to a plausible size.
  uint64_t bits = static_cast<uint64_t>(entry.spec->bits);
  bool overflow = false;
  for (int64_t d : entry.shape) overflow |= __builtin_mul_overflow(bits, static_cast<uint64_t>(d), &bits);
  uint64_t have = entry.end - entry.begin;
  if (overflow || bits % 8 != 0 || bits / 8 != have) {
    std::string want = overflow        ? "more than 2^64 bits"
                       : bits % 8 != 0 ? std::to_string(bits) + " bits (not whole bytes)"
                                       : std::to_string(bits / 8) + " bytes";
    return base::data_loss(where + ": " + dtype_name + " " + base::shape_to_string(entry.shape) + " needs " + want +
                           " but data_offsets [" + std::to_string(entry.begin) + "," + std::to_string(entry.end) +
                           "] hold " + std::to_string(have) + corrupt);
  }
  return entry;
}

}  // namespace

Result<std::shared_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  SD_ASSIGN_OR_RETURN(std::shared_ptr<base::MappedFile> file, base::MappedFile::open(path));
  const uint64_t file_size = file->size();
  if (file_size < 8) {
    return base::data_loss(path + ": file is too short to be safetensors (" + std::to_string(file_size) +
                           " bytes; it starts with an 8-byte header length): it is truncated or not a "
                           "safetensors file (re-download it)");
  }
  const uint64_t header_size = read_u64_le(file->data());
  if (header_size > kMaxHeaderBytes) {
    return base::data_loss(path + ": header length " + std::to_string(header_size) +
                           " exceeds the 100 MB limit: the file is corrupt or not a safetensors file");
  }
  if (header_size > file_size - 8) {
    return base::data_loss(path + ": header length " + std::to_string(header_size) +
                           " runs past the end of the file (it needs " + std::to_string(8 + header_size) +
                           " bytes, the file has " + std::to_string(file_size) +
                           "): the file is truncated or not safetensors (re-download it)");
  }

  const char* header_text = reinterpret_cast<const char*>(file->data() + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_text, header_text + header_size);
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte counts from 1 within the header; users find the spot more easily by file offset.
    std::string reason = e.what();
    size_t colon = reason.find(": ", reason.find("parse error"));
    if (colon != std::string::npos) reason = reason.substr(colon + 2);
    return base::data_loss(path + ": header is not valid JSON at byte " + std::to_string(8 + e.byte - 1) +
                           " of the file: " + reason + " (the file is corrupt or not a safetensors file)");
  }
  if (!header.is_object()) {
    return base::data_loss(path + ": header is " + std::string(header.type_name()) +
                           ", expected a JSON object (the file is corrupt or not a safetensors file)");
  }

  std::shared_ptr<SafetensorsFile> result(new SafetensorsFile());
  result->data_offset_ = 8 + header_size;
  const uint64_t data_size = file_size - result->data_offset_;

  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) {
        return base::data_loss(path + ": __metadata__ is " + json_snippet(*it) + ", expected an object of strings");
      }
      for (auto meta = it->begin(); meta != it->end(); ++meta) {
        if (!meta->is_string()) {
          return base::data_loss(path + ": __metadata__ key '" + meta.key() + "' holds " + json_snippet(*meta) +
                                 "; metadata values must be strings");
        }
        result->metadata_[meta.key()] = meta->get<std::string>();
      }
      continue;
    }
    SD_ASSIGN_OR_RETURN(Entry entry, parse_entry(path, it.key(), *it));
    entries.push_back(std::move(entry));
  }

  // Checked in file order, so a truncated file reports the first tensor that runs past the end.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const Entry* previous = nullptr;
  for (const Entry& entry : entries) {
    if (entry.end > data_size) {
      return base::data_loss(path + ": file is truncated: tensor '" + entry.name + "' ends at byte " +
                             std::to_string(result->data_offset_ + entry.end) + " but the file has " +
                             std::to_string(file_size) + " (re-download it)");
    }
    if (entry.begin == entry.end) continue;  // empty tensors occupy no bytes, so overlap nothing
    if (previous != nullptr && entry.begin < previous->end) {
      return base::data_loss(path + ": tensors '" + previous->name + "' (data_offsets [" +
                             std::to_string(previous->begin) + "," + std::to_string(previous->end) + "]) and '" +
                             entry.name + "' (data_offsets [" + std::to_string(entry.begin) + "," +
                             std::to_string(entry.end) + "]) overlap (the file is corrupt)");
    }
    previous = &entry;
  }

  for (Entry& entry : entries) {
    if (entry.spec->dtype) {
      result->index_[entry.name] = result->tensors_.size();
      result->tensors_.push_back(TensorInfo{entry.name, *entry.spec->dtype, std::move(entry.shape),
                                            static_cast<size_t>(entry.begin), static_cast<size_t>(entry.end)});
    } else {
      result->unreadable_index_[entry.name] = result->unreadable_.size();
      result->unreadable_.push_back(UnreadableTensor{entry.name, entry.spec->name, std::move(entry.shape),
                                                     static_cast<size_t>(entry.begin), static_cast<size_t>(entry.end)});
    }
  }
  result->file_ = std::move(file);
  return result;
}

const std::string& SafetensorsFile::path() const { return file_->path(); }

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const UnreadableTensor* SafetensorsFile::find_unreadable(const std::string& name) const {
  auto it = unreadable_index_.find(name);
  return it == unreadable_index_.end() ? nullptr : &unreadable_[it->second];
}

Tensor SafetensorsFile::tensor(const TensorInfo& info) const {
  const uint8_t* data = file_->data() + data_offset_ + info.begin;
  // Aliasing constructor: the view owns a share of the mapping but points at this tensor's bytes.
  std::shared_ptr<const void> keepalive(file_, data);
  return Tensor::borrow(std::move(keepalive), data, info.shape, info.dtype);
}

void SafetensorsFile::release(const TensorInfo& info) const {
  if (info.end == info.begin) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(file_->data() + data_offset_ + info.begin) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(file_->data() + data_offset_ + info.end);
  // Only a hint: on failure the pages stay resident until the file is unmapped, which is correct.
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

Status unreadable_tensor_error(const std::string& file, const UnreadableTensor& info) {
  return base::unsupported(file + ": tensor '" + info.name + "' has dtype " + info.dtype +
                           "; sdstack reads F32, F16 and BF16 tensors only");
}

Status write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  // Larger elements first keeps every tensor aligned to its element size without padding
  // (the reference readers refuse gaps between tensors); names make the layout deterministic.
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    size_t size_a = tensor::dtype_size(tensors[a].second.dtype());
    size_t size_b = tensor::dtype_size(tensors[b].second.dtype());
    return size_a != size_b ? size_a > size_b : tensors[a].first < tensors[b].first;
  });
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__" || !names.insert(name).second) {
      return base::invalid_argument(path + ": tensor name '" + name + "' given twice or reserved");
    }
  }

  // ordered_json keeps __metadata__ first and the tensors in data order, as the reference writes.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }
  size_t offset = 0;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = safetensors_dtype_name(t.dtype());
    entry["shape"] = t.shape();
    entry["data_offsets"] = {offset, offset + t.nbytes()};
    header[name] = std::move(entry);
    offset += t.nbytes();
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(static_cast<uint64_t>(header_text.size()) >> (8 * i));

  base::AtomicFileWriter writer(path);
  SD_RETURN_IF_ERROR(writer.open());
  SD_RETURN_IF_ERROR(writer.write(length, sizeof length));
  SD_RETURN_IF_ERROR(writer.write(header_text.data(), header_text.size()));
  for (size_t i : order) {
    const Tensor& t = tensors[i].second;
    if (t.numel() == 0) continue;
    if (t.is_contiguous()) {
      SD_RETURN_IF_ERROR(writer.write(t.raw_data(), t.nbytes()));
    } else {
      Tensor packed = t.contiguous();
      SD_RETURN_IF_ERROR(writer.write(packed.raw_data(), packed.nbytes()));
    }
  }
  return writer.commit();
}

}  // namespace sdstack::io
