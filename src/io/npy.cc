// NumPy .npy files (format 1.0/2.0): '<f4' writer, '<f4'/'<f2' reader with a small header-dict parser.
#include "io/npy.h"

#include <cctype>
#include <cstdint>
#include <cstring>
#include <optional>

#include "base/file.h"

namespace sdstack::io {
namespace {

using base::Result;
using base::Status;

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
// numpy pads the header so the data starts on a 64-byte boundary (numpy.lib.format.ARRAY_ALIGN).
constexpr size_t kAlign = 64;

// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (1, 77, 32), }.
// This parses exactly the literals numpy writes there: strings, True/False, tuples of integers.
struct NpyHeader {
  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<tensor::Shape> shape;
};

class HeaderParser {
 public:
  explicit HeaderParser(std::string_view text) : text_(text) {}

  // Returns an error text (without the file name) or "".
  std::string parse(NpyHeader* header) {
    skip_space();
    if (!consume('{')) return "header does not start with '{'";
    for (;;) {
      skip_space();
      if (consume('}')) break;
      std::string key;
      if (!parse_string(&key)) return error("expected a quoted key");
      skip_space();
      if (!consume(':')) return error("expected ':' after '" + key + "'");
      skip_space();
      if (key == "descr") {
        std::string descr;
        if (!parse_string(&descr)) return error("'descr' must be a string");
        header->descr = descr;
      } else if (key == "fortran_order") {
        if (consume_word("True")) {
          header->fortran_order = true;
        } else if (consume_word("False")) {
          header->fortran_order = false;
        } else {
          return error("'fortran_order' must be True or False");
        }
      } else if (key == "shape") {
        tensor::Shape shape;
        if (!parse_shape(&shape)) return error("'shape' must be a tuple of non-negative integers");
        header->shape = shape;
      } else {
        return error("unexpected key '" + key + "'");
      }
      skip_space();
      if (consume(',')) continue;
      skip_space();
      if (consume('}')) break;
      return error("expected ',' or '}'");
    }
    return "";
  }

 private:
  std::string error(const std::string& what) const {
    return "bad header at character " + std::to_string(pos_) + ": " + what;
  }
  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool consume_word(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  bool parse_string(std::string* out) {
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) return false;
    char quote = text_[pos_++];
    size_t end = text_.find(quote, pos_);
    if (end == std::string_view::npos) return false;
    *out = std::string(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return true;
  }
  bool parse_shape(tensor::Shape* shape) {
    if (!consume('(')) return false;
    for (;;) {
      skip_space();
      if (consume(')')) return true;
      size_t start = pos_;
      int64_t value = 0;
      while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
        if (value > (INT64_MAX - 9) / 10) return false;
        value = value * 10 + (text_[pos_++] - '0');
      }
      if (pos_ == start) return false;
      consume('L');  // Python 2 longs, as old numpy wrote them
      shape->push_back(value);
      skip_space();
      if (consume(',')) continue;
      skip_space();
      if (consume(')')) return true;
      return false;
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
};

std::string shape_tuple(const tensor::Shape& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ",";  // a one-element tuple in Python needs its comma
  return out + ")";
}

}  // namespace

Status write_npy(const std::string& path, const tensor::Tensor& t) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_tuple(t.shape()) + ", }";
  // As numpy: pad with spaces and end with '\n' so magic + version + length + header is a
  // multiple of 64; version 2.0 (4-byte length) only when the header does not fit in 65535 bytes.
  size_t preamble = kMagicSize + 2 + 2;
  size_t padding = kAlign - (preamble + dict.size() + 1) % kAlign;
  int major = 1;
  if (dict.size() + padding + 1 > 65535) {
    major = 2;
    preamble = kMagicSize + 2 + 4;
    padding = kAlign - (preamble + dict.size() + 1) % kAlign;
  }
  std::string header = dict + std::string(padding, ' ') + "\n";

  // to_vector() on an empty tensor hands memcpy a null pointer (UBSan), so skip it there.
  std::vector<float> values = t.numel() > 0 ? t.to_vector() : std::vector<float>();
  std::string out(kMagic, kMagicSize);
  out += static_cast<char>(major);
  out += '\0';
  const size_t length_bytes = major == 1 ? 2 : 4;
  for (size_t i = 0; i < length_bytes; ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  out += header;
  // The data is little-endian f32: the host's layout on every machine sdstack targets.
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return base::write_file_atomic(path, out);
}

Result<tensor::Tensor> read_npy(const std::string& path) {
  SD_ASSIGN_OR_RETURN(std::shared_ptr<base::MappedFile> file, base::MappedFile::open(path));
  const uint8_t* bytes = file->data();
  const size_t size = file->size();
  if (size < kMagicSize + 4 || std::memcmp(bytes, kMagic, kMagicSize) != 0) {
    return base::data_loss(path + ": not a .npy file (it does not start with \\x93NUMPY)");
  }
  const int major = bytes[6];
  size_t header_start = 0, header_size = 0;
  if (major == 1) {
    header_start = 10;
    header_size = bytes[8] | static_cast<size_t>(bytes[9]) << 8;
  } else if (major == 2) {
    if (size < 12) return base::data_loss(path + ": file is truncated inside the .npy header (re-create it)");
    header_start = 12;
    header_size = bytes[8] | static_cast<size_t>(bytes[9]) << 8 | static_cast<size_t>(bytes[10]) << 16 |
                  static_cast<size_t>(bytes[11]) << 24;
  } else {
    return base::unsupported(path + ": .npy format version " + std::to_string(major) + "." + std::to_string(bytes[7]) +
                             " is not supported (sdstack reads 1.0 and 2.0)");
  }
  if (header_size > size - header_start) {
    return base::data_loss(path + ": file is truncated: the header needs " +
                           std::to_string(header_start + header_size) + " bytes but the file has " +
                           std::to_string(size) + " (re-create it)");
  }

  NpyHeader header;
  std::string_view text(reinterpret_cast<const char*>(bytes + header_start), header_size);
  std::string error = HeaderParser(text).parse(&header);
  if (!error.empty()) return base::data_loss(path + ": " + error);
  if (!header.descr || !header.fortran_order || !header.shape) {
    return base::data_loss(path + ": header lacks one of 'descr', 'fortran_order', 'shape'");
  }
  tensor::DType stored;
  if (*header.descr == "<f4") {
    stored = tensor::DType::kF32;
  } else if (*header.descr == "<f2") {
    stored = tensor::DType::kF16;
  } else {
    return base::unsupported(path + ": dtype '" + *header.descr +
                             "' is not supported (sdstack reads little-endian float32 '<f4' and float16 '<f2'; "
                             "save with arr.astype(np.float32))");
  }
  if (*header.fortran_order) {
    return base::unsupported(path +
                             ": array is in Fortran order; sdstack reads C order only "
                             "(save np.ascontiguousarray(arr))");
  }

  const tensor::Shape& shape = *header.shape;
  uint64_t count = 1;
  bool overflow = false;
  for (int64_t d : shape) overflow |= __builtin_mul_overflow(count, static_cast<uint64_t>(d), &count);
  const size_t data_start = header_start + header_size;
  const uint64_t item = tensor::dtype_size(stored);
  uint64_t need = 0;
  overflow |= __builtin_mul_overflow(count, item, &need);
  if (overflow || need > size - data_start) {
    return base::data_loss(path + ": file is truncated: shape " + shape_tuple(shape) + " needs " +
                           (overflow ? std::string("more than 2^64") : std::to_string(need)) +
                           " bytes of data but the file has " + std::to_string(size - data_start) + " (re-create it)");
  }

  tensor::Tensor out = tensor::Tensor::empty(shape, tensor::DType::kF32);
  const uint8_t* data = bytes + data_start;
  if (reinterpret_cast<uintptr_t>(data) % item == 0) {
    tensor::convert_to_f32(data, stored, out.data<float>(), static_cast<size_t>(count));
  } else {
    // numpy aligns the data to 64 bytes, but a hand-made header may not: copy to aligned memory.
    tensor::Tensor aligned = tensor::Tensor::empty(shape, stored);
    std::memcpy(aligned.raw_data(), data, static_cast<size_t>(need));
    tensor::convert_to_f32(aligned.raw_data(), stored, out.data<float>(), static_cast<size_t>(count));
  }
  return out;
}

}  // namespace sdstack::io
