// PNG images: 8-bit RGB read/write with libpng, text metadata (prompt, seed, ...) in tEXt chunks.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"
#include "tensor/tensor.h"

namespace sdstack::io {

struct Image {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> rgb;  // height * width * 3, row-major
  std::vector<std::pair<std::string, std::string>> text;  // tEXt chunks, in file order
};

// Pixels from a float image [H, W, 3] (NHWC without the batch, values in [0, 1]) as diffusers'
// numpy_to_pil does it: clamp to [0, 1], then round(x * 255) with ties to even.
Image image_from_float(const tensor::Tensor& hwc);

// Writes an 8-bit RGB PNG atomically (a temporary name, renamed after it is complete).
base::Status write_png(const std::string& path, const Image& image);

// Reads a PNG of any colour type and depth as 8-bit RGB (alpha dropped, grey expanded).
base::Result<Image> read_png(const std::string& path);

}  // namespace sdstack::io
