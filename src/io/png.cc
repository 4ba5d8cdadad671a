// PNG images with libpng.
#include "io/png.h"

#include <png.h>

#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>

#include "base/file.h"

namespace sdstack::io {
namespace {

struct PngError {
  std::string message;
};

void on_png_error(png_structp png, png_const_charp message) {
  auto* error = static_cast<PngError*>(png_get_error_ptr(png));
  error->message = message;
  std::longjmp(png_jmpbuf(png), 1);
}

void on_png_warning(png_structp, png_const_charp) {}

// The functions that call setjmp hold only plain C values, so a longjmp out of libpng skips no
// destructor and clobbers nothing.

// libpng's output callback: append to the std::string behind the io pointer.
void append_to_string(png_structp png, png_bytep data, png_size_t length) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), length);
}

void ignore_flush(png_structp) {}

// Encodes the image into `out` (kept in memory so that the file is written whole and atomically).
bool encode(std::string* out, const uint8_t* rgb, png_uint_32 width, png_uint_32 height, png_text* text,
            int text_count, PngError* error) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, error, on_png_error, on_png_warning);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png)) != 0) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_set_write_fn(png, out, append_to_string, ignore_flush);
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (text_count > 0) png_set_text(png, info, text, text_count);
  png_write_info(png, info);
  for (png_uint_32 y = 0; y < height; ++y) png_write_row(png, rgb + static_cast<size_t>(y) * width * 3);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

// Reads the header and sets up the conversion of every colour type and depth to 8-bit RGB.
bool read_header(png_structp png, png_infop info, std::FILE* file, png_uint_32* width, png_uint_32* height) {
  if (setjmp(png_jmpbuf(png)) != 0) return false;
  png_init_io(png, file);
  png_set_sig_bytes(png, 8);
  png_read_info(png, info);
  png_set_expand(png);
  png_set_strip_16(png);
  png_set_strip_alpha(png);
  png_set_gray_to_rgb(png);
  png_read_update_info(png, info);
  *width = png_get_image_width(png, info);
  *height = png_get_image_height(png, info);
  return true;
}

bool read_rows(png_structp png, png_infop info, uint8_t* rgb, png_uint_32 width, png_uint_32 height) {
  if (setjmp(png_jmpbuf(png)) != 0) return false;
  for (png_uint_32 y = 0; y < height; ++y) png_read_row(png, rgb + static_cast<size_t>(y) * width * 3, nullptr);
  png_read_end(png, info);
  return true;
}

}  // namespace

Image image_from_float(const tensor::Tensor& hwc) {
  Image image;
  image.height = hwc.dim(0);
  image.width = hwc.dim(1);
  std::vector<float> values = hwc.to_vector();
  image.rgb.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    float v = std::fmin(std::fmax(values[i], 0.0f), 1.0f);
    image.rgb[i] = static_cast<uint8_t>(std::nearbyint(v * 255.0f));  // ties to even, like numpy's round
  }
  return image;
}

base::Status write_png(const std::string& path, const Image& image) {
  if (image.width <= 0 || image.height <= 0 ||
      image.rgb.size() != static_cast<size_t>(image.width * image.height * 3)) {
    return base::invalid_argument(path + ": image has no pixels or a size that does not match its data");
  }
  std::vector<png_text> chunks(image.text.size());
  for (size_t i = 0; i < image.text.size(); ++i) {
    chunks[i].compression = PNG_TEXT_COMPRESSION_NONE;
    chunks[i].key = const_cast<char*>(image.text[i].first.c_str());
    chunks[i].text = const_cast<char*>(image.text[i].second.c_str());
    chunks[i].text_length = image.text[i].second.size();
  }
  std::string encoded;
  PngError error;
  if (!encode(&encoded, image.rgb.data(), static_cast<png_uint_32>(image.width),
              static_cast<png_uint_32>(image.height), chunks.data(), static_cast<int>(chunks.size()), &error)) {
    return base::internal_error(path + ": cannot encode PNG: " + error.message);
  }
  return base::write_file_atomic(path, encoded);
}

base::Result<Image> read_png(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    if (errno == ENOENT) return base::not_found(path + ": no such file");
    return base::io_error(path + ": cannot open: " + std::strerror(errno));
  }
  uint8_t signature[8] = {};
  if (std::fread(signature, 1, 8, file) != 8 || png_sig_cmp(signature, 0, 8) != 0) {
    std::fclose(file);
    return base::data_loss(path + ": not a PNG file");
  }
  PngError error;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &error, on_png_error, on_png_warning);
  png_infop info = png_create_info_struct(png);
  Image image;
  png_uint_32 width = 0, height = 0;
  bool ok = read_header(png, info, file, &width, &height);
  if (ok) {
    image.width = width;
    image.height = height;
    image.rgb.resize(static_cast<size_t>(width) * height * 3);
    ok = read_rows(png, info, image.rgb.data(), width, height);
  }
  if (ok) {
    png_textp text = nullptr;
    int count = png_get_text(png, info, &text, nullptr);
    for (int i = 0; i < count; ++i) image.text.emplace_back(text[i].key, std::string(text[i].text, text[i].text_length));
  }
  png_destroy_read_struct(&png, &info, nullptr);
  std::fclose(file);
  if (!ok) return base::data_loss(path + ": corrupt PNG: " + error.message);
  return image;
}

}  // namespace sdstack::io
