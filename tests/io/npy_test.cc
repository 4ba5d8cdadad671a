// .npy: numpy's exact header layout, round trips, the golden files, and malformed files refused by name.
#include "io/npy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "base/file.h"
#include "testing/testing.h"

namespace sdstack::io {
namespace {

using tensor::DType;
using tensor::Shape;
using tensor::Tensor;

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "'\n  does not contain\n'" << part << "'";
}

// A .npy file by hand: magic, version `major`.0, the header length and text as given, then `data`.
void write_raw_npy(const std::string& path, int major, const std::string& header, const std::string& data) {
  std::string bytes = "\x93NUMPY";
  bytes += static_cast<char>(major);
  bytes += '\0';
  size_t length_bytes = major == 1 ? 2 : 4;
  for (size_t i = 0; i < length_bytes; ++i) bytes += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  bytes += header + data;
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string f32_bytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

std::string read_error(const std::string& path) {
  auto t = read_npy(path);
  EXPECT_FALSE(t.is_ok());
  if (t.is_ok()) return "";
  EXPECT_EQ(t.status().message().rfind(path + ": ", 0), 0u) << t.status().message();
  return t.status().message();
}

TEST(Npy, HeaderIsNumpysExactly) {
  testing::TempDir dir;
  std::string path = dir.file("a.npy");
  ASSERT_TRUE(write_npy(path, Tensor::zeros({2, 77, 32})).is_ok());
  auto bytes = base::read_file(path);
  ASSERT_TRUE(bytes.is_ok());
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 77, 32), }";
  ASSERT_EQ(bytes->substr(0, 10), std::string("\x93NUMPY\x01\x00\x76\x00", 10));
  EXPECT_EQ(bytes->substr(10, 118), dict + std::string(118 - 1 - dict.size(), ' ') + "\n");
  EXPECT_EQ(bytes->size(), 128u + 2 * 77 * 32 * 4);

  ASSERT_TRUE(write_npy(path, Tensor::zeros({1000})).is_ok());
  bytes = base::read_file(path);
  const std::string vector_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000,), }";
  EXPECT_EQ(bytes->substr(10, vector_dict.size() + 1), vector_dict + " ");
  ASSERT_TRUE(write_npy(path, Tensor::zeros({})).is_ok());
  bytes = base::read_file(path);
  const std::string scalar_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (), }";
  EXPECT_EQ(bytes->substr(10, scalar_dict.size() + 1), scalar_dict + " ");
  EXPECT_EQ(bytes->size(), 128u + 4);  // 10 + 56 + the newline just passes 64
}

TEST(Npy, SameHeaderAsTheGoldenFiles) {
  if (!testing::have_golden()) GTEST_SKIP() << "no golden data at " << testing::golden_dir();
  testing::TempDir dir;
  for (const char* name : {"cases/pndm_cfg7.5_s10_64/prompt_embeds.npy", "alphas_cumprod.npy"}) {
    std::string golden_path = testing::golden_dir() + "/" + name;
    auto golden = read_npy(golden_path);
    ASSERT_TRUE(golden.is_ok()) << golden.status().message();
    std::string path = dir.file("copy.npy");
    ASSERT_TRUE(write_npy(path, *golden).is_ok());
    // numpy wrote the golden file: writing what we read must give the same bytes.
    EXPECT_EQ(*base::read_file(path), *base::read_file(golden_path)) << name;
  }
}

TEST(Npy, RoundTrip) {
  testing::TempDir dir;
  std::string path = dir.file("a.npy");
  for (const Shape& shape : {Shape{2, 77, 32}, Shape{5}, Shape{}, Shape{3, 0}, Shape{1, 4, 8, 8}}) {
    Tensor t = testing::random_tensor(shape, 7);
    ASSERT_TRUE(write_npy(path, t).is_ok());
    auto back = read_npy(path);
    ASSERT_TRUE(back.is_ok()) << back.status().message();
    EXPECT_EQ(back->shape(), shape);
    EXPECT_EQ(back->dtype(), DType::kF32);
    if (t.numel() > 0) {  // to_vector() of an empty tensor trips UBSan in the tensor layer
      EXPECT_EQ(back->to_vector(), t.to_vector());
    }
  }
  // Other dtypes are written as f32.
  Tensor half = testing::random_tensor({4, 3}, 8).to(DType::kF16);
  ASSERT_TRUE(write_npy(path, half).is_ok());
  EXPECT_EQ(read_npy(path)->to_vector(), half.to_vector());
}

TEST(Npy, ReadsFloat16AndVersion2) {
  testing::TempDir dir;
  std::string path = dir.file("a.npy");
  std::vector<uint16_t> halves = {tensor::f32_to_f16(1.5f), tensor::f32_to_f16(-2.0f), tensor::f32_to_f16(0.25f)};
  write_raw_npy(path, 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }\n",
                std::string(reinterpret_cast<const char*>(halves.data()), 6));
  auto t = read_npy(path);
  ASSERT_TRUE(t.is_ok()) << t.status().message();
  EXPECT_EQ(t->to_vector(), (std::vector<float>{1.5f, -2.0f, 0.25f}));

  write_raw_npy(path, 2, "{\"descr\": \"<f4\", \"shape\": (1, 2), \"fortran_order\": False}\n", f32_bytes({3, 4}));
  t = read_npy(path);
  ASSERT_TRUE(t.is_ok()) << t.status().message();
  EXPECT_EQ(t->shape(), (Shape{1, 2}));
  EXPECT_EQ(t->to_vector(), (std::vector<float>{3, 4}));
}

TEST(Npy, RefusesFortranOrder) {
  testing::TempDir dir;
  std::string path = dir.file("a.npy");
  write_raw_npy(path, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n", f32_bytes({1, 2, 3, 4}));
  EXPECT_TRUE(contains(read_error(path), "Fortran order"));
}

TEST(Npy, RefusesOtherDtypes) {
  testing::TempDir dir;
  std::string path = dir.file("a.npy");
  for (const char* descr : {"<f8", ">f4", "<i8", "|b1"}) {
    write_raw_npy(path, 1, std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (2,), }\n",
                  std::string(16, '\0'));
    EXPECT_TRUE(contains(read_error(path), std::string("dtype '") + descr + "' is not supported"));
  }
}

TEST(Npy, RefusesBadMagicVersionAndHeader) {
  testing::TempDir dir;
  std::string path = dir.file("a.npy");
  std::ofstream(path, std::ios::binary) << "PK\x03\x04 this is a zip";
  EXPECT_TRUE(contains(read_error(path), "not a .npy file"));
  std::ofstream(path, std::ios::binary | std::ios::trunc);
  EXPECT_TRUE(contains(read_error(path), "not a .npy file"));
  write_raw_npy(path, 3, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n", f32_bytes({1}));
  EXPECT_TRUE(contains(read_error(path), "version 3.0 is not supported"));
  write_raw_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }\n", f32_bytes({1}));
  EXPECT_TRUE(contains(read_error(path), "'shape' must be a tuple"));
  write_raw_npy(path, 1, "{'descr': '<f4', 'shape': (1,), }\n", f32_bytes({1}));
  EXPECT_TRUE(contains(read_error(path), "header lacks"));
  write_raw_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}\n", f32_bytes({1}));
  EXPECT_TRUE(contains(read_error(path), "unexpected key 'extra'"));
}

TEST(Npy, RefusesTruncatedFiles) {
  testing::TempDir dir;
  std::string path = dir.file("a.npy");
  ASSERT_TRUE(write_npy(path, Tensor::zeros({4, 4})).is_ok());
  std::string bytes = *base::read_file(path);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() - 4);
  EXPECT_TRUE(contains(read_error(path), "file is truncated: shape (4, 4) needs 64 bytes of data but the file has 60"));
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, 40);
  EXPECT_TRUE(contains(read_error(path), "file is truncated: the header needs 128 bytes"));
}

TEST(Npy, MissingFileNamesIt) {
  auto t = read_npy("/nonexistent/a.npy");
  ASSERT_FALSE(t.is_ok());
  EXPECT_TRUE(contains(t.status().message(), "/nonexistent/a.npy"));
}

TEST(Npy, GoldenPromptEmbeds) {
  if (!testing::have_golden()) GTEST_SKIP() << "no golden data at " << testing::golden_dir();
  auto t = read_npy(testing::golden_dir() + "/cases/pndm_cfg7.5_s10_64/prompt_embeds.npy");
  ASSERT_TRUE(t.is_ok()) << t.status().message();
  EXPECT_EQ(t->shape(), (Shape{1, 77, 32}));
  EXPECT_EQ(t->dtype(), DType::kF32);
  auto alphas = read_npy(testing::golden_dir() + "/alphas_cumprod.npy");
  ASSERT_TRUE(alphas.is_ok()) << alphas.status().message();
  EXPECT_EQ(alphas->shape(), (Shape{1000}));
  EXPECT_NEAR(alphas->at({0}), 1.0f - 0.00085f, 1e-6f);
}

}  // namespace
}  // namespace sdstack::io
