// safetensors: round trips per dtype, the writer's layout, and every malformed header refused by name.
#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>

#include "base/file.h"
#include "io/weights.h"
#include "testing/testing.h"

namespace sdstack::io {
namespace {

// gtest without gmock: substring checks that print both strings on failure.
::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "'\n  does not contain\n'" << part << "'";
}
::testing::AssertionResult starts_with(const std::string& text, const std::string& prefix) {
  if (text.compare(0, prefix.size(), prefix) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "'\n  does not start with\n'" << prefix << "'";
}

// Writes a safetensors file by hand: the 8-byte length (the header's own unless `length` is
// given), the header text as is, then `data` bytes. Lets tests build files no writer would.
void write_raw(const std::string& path, const std::string& header, size_t data_bytes,
               std::optional<uint64_t> length = std::nullopt) {
  uint64_t n = length ? *length : header.size();
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes += static_cast<char>((n >> (8 * i)) & 0xff);
  bytes += header;
  bytes += std::string(data_bytes, '\x01');
  std::ofstream(path, std::ios::binary) << bytes;
}

// Opens a file that must be refused; returns the message after checking it names the file.
std::string open_error(const std::string& path) {
  auto file = SafetensorsFile::open(path);
  EXPECT_FALSE(file.is_ok());
  if (file.is_ok()) return "";
  EXPECT_TRUE(starts_with(file.status().message(), path + ": "));
  return file.status().message();
}

TEST(Safetensors, RoundTripKeepsEachDtype) {
  testing::TempDir dir;
  Tensor f32 = testing::random_tensor({3, 5}, 1);
  Tensor f16 = testing::random_tensor({4, 2, 3}, 2).to(DType::kF16);
  Tensor bf16 = testing::random_tensor({7}, 3).to(DType::kBF16);
  std::string path = dir.file("model.safetensors");
  ASSERT_TRUE(write_safetensors(path, {{"w.f32", f32}, {"w.f16", f16}, {"w.bf16", bf16}}, {{"format", "pt"}}).is_ok());

  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  ASSERT_EQ((*file)->tensors().size(), 3u);
  for (const auto& [name, expected] : {std::pair{"w.f32", f32}, std::pair{"w.f16", f16}, std::pair{"w.bf16", bf16}}) {
    const TensorInfo* info = (*file)->find(name);
    ASSERT_NE(info, nullptr) << name;
    Tensor t = (*file)->tensor(*info);
    EXPECT_EQ(t.dtype(), expected.dtype()) << name;
    EXPECT_EQ(t.shape(), expected.shape()) << name;
    EXPECT_EQ(t.to_vector(), expected.to_vector()) << name;  // bit-exact: no conversion on the way
  }
  EXPECT_EQ((*file)->find("absent"), nullptr);
}

TEST(Safetensors, ViewsKeepTheMappingAlive) {
  testing::TempDir dir;
  Tensor values = testing::random_tensor({16}, 4);
  std::string path = dir.file("a.safetensors");
  ASSERT_TRUE(write_safetensors(path, {{"x", values}}).is_ok());
  Tensor view;
  {
    auto file = SafetensorsFile::open(path);
    ASSERT_TRUE(file.is_ok());
    view = (*file)->tensor(*(*file)->find("x"));
  }  // the SafetensorsFile is gone; the view still holds the mapping
  EXPECT_EQ(view.to_vector(), values.to_vector());
}

// The process's resident KiB of the mapping that holds `address`, from /proc/self/smaps (-1 when
// no mapping holds it).
int64_t resident_kib(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  const auto where = reinterpret_cast<uintptr_t>(address);
  bool inside = false;
  std::string line;
  while (std::getline(smaps, line)) {
    unsigned long long begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx ", &begin, &end) == 2) {
      inside = begin <= where && where < end;
    } else if (inside && line.rfind("Rss:", 0) == 0) {
      return std::stoll(line.substr(4));
    }
  }
  return -1;
}

TEST(Safetensors, ReleasedTensorsLeaveMemoryAndReadBackFromTheFile) {
  testing::TempDir dir;
  Tensor big = testing::random_tensor({1 << 20}, 5);  // 4 MiB, a thousand pages
  Tensor small = testing::random_tensor({16}, 6);
  std::string path = dir.file("a.safetensors");
  ASSERT_TRUE(write_safetensors(path, {{"big", big}, {"small", small}}).is_ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok());
  Tensor view = (*file)->tensor(*(*file)->find("big"));
  EXPECT_EQ(view.to_vector(), big.to_vector());  // reads every page
  EXPECT_GE(resident_kib(view.raw_data()), 4096);

  (*file)->release(*(*file)->find("big"));
  EXPECT_LT(resident_kib(view.raw_data()), 64);  // the header and a page or two at the edges at most
  EXPECT_EQ(view.to_vector(), big.to_vector());  // the view is still good: the pages come back from the file
  EXPECT_EQ((*file)->tensor(*(*file)->find("small")).to_vector(), small.to_vector());
}

TEST(Safetensors, EmptyAndScalarTensors) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  Tensor scalar = Tensor::from_vector({}, {2.5f});
  ASSERT_TRUE(write_safetensors(path, {{"empty", Tensor::zeros({0, 3})}, {"scalar", scalar}}).is_ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  EXPECT_EQ((*file)->tensor(*(*file)->find("empty")).shape(), (Shape{0, 3}));
  EXPECT_EQ((*file)->tensor(*(*file)->find("scalar")).to_vector(), std::vector<float>{2.5f});
}

TEST(Safetensors, WriterLayoutMatchesTheReference) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  // f16 given first: the writer still puts the 4-byte f32 first so both stay aligned.
  ASSERT_TRUE(
      write_safetensors(path, {{"b", Tensor::zeros({3}, DType::kF16)}, {"a", Tensor::zeros({2})}}, {{"format", "pt"}})
          .is_ok());
  auto bytes = base::read_file(path);
  ASSERT_TRUE(bytes.is_ok());
  const std::string json = R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]}})";
  size_t padded = (json.size() + 7) / 8 * 8;
  ASSERT_EQ(bytes->size(), 8 + padded + 14);
  EXPECT_EQ(static_cast<uint8_t>((*bytes)[0]), padded);
  EXPECT_EQ(bytes->substr(8, padded), json + std::string(padded - json.size(), ' '));
}

TEST(Safetensors, WriterRefusesDuplicateNamesAndLeavesNoFile) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  base::Status status = write_safetensors(path, {{"x", Tensor::zeros({1})}, {"x", Tensor::zeros({2})}});
  EXPECT_FALSE(status.is_ok());
  EXPECT_TRUE(contains(status.message(), "'x'"));
  EXPECT_FALSE(base::file_exists(path));
}

TEST(Safetensors, RefusesFileShorterThanTheLength) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  std::ofstream(path, std::ios::binary) << "abc";
  EXPECT_TRUE(contains(open_error(path), "too short"));
  std::ofstream(path, std::ios::binary | std::ios::trunc);
  EXPECT_TRUE(contains(open_error(path), "0 bytes"));
}

TEST(Safetensors, RefusesOversizedHeaderLength) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  write_raw(path, "{}", 0, uint64_t{200'000'000});
  EXPECT_TRUE(contains(open_error(path), "header length 200000000 exceeds the 100 MB limit"));
  write_raw(path, "{}", 0, ~uint64_t{0});
  EXPECT_TRUE(contains(open_error(path), "exceeds"));
}

TEST(Safetensors, RefusesHeaderLengthPastEndOfFile) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  write_raw(path, "{}", 0, uint64_t{1000});
  std::string message = open_error(path);
  EXPECT_TRUE(contains(message, "truncated"));
  EXPECT_TRUE(contains(message, "1008"));
  EXPECT_TRUE(contains(message, "re-download"));
}

TEST(Safetensors, RefusesBadJsonWithItsBytePosition) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  write_raw(path, R"({"x": {"dtype": "F32",, }})", 0);
  std::string message = open_error(path);
  EXPECT_TRUE(contains(message, "not valid JSON at byte 30"));  // 8 + the 23rd header byte - 1
  write_raw(path, "[1, 2]", 0);
  EXPECT_TRUE(contains(open_error(path), "expected a JSON object"));
}

TEST(Safetensors, RefusesUnknownDtype) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  write_raw(path, R"({"w": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}})", 8);
  std::string message = open_error(path);
  EXPECT_TRUE(contains(message, "tensor 'w'"));
  EXPECT_TRUE(contains(message, "unknown dtype 'F33'"));
  EXPECT_TRUE(contains(message, "did you mean 'F32'"));
  write_raw(path, R"({"w": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}})", 8);
  EXPECT_TRUE(contains(open_error(path), "tensor 'w'"));
}

TEST(Safetensors, OtherSafetensorsDtypesAreValidatedButRefusedByName) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  write_raw(path,
            R"({"ids": {"dtype": "I64", "shape": [1, 3], "data_offsets": [0, 24]},)"
            R"( "d": {"dtype": "F64", "shape": [1], "data_offsets": [24, 32]},)"
            R"( "m": {"dtype": "BOOL", "shape": [2], "data_offsets": [32, 34]},)"
            R"( "q": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [34, 36]},)"
            R"( "u": {"dtype": "U8", "shape": [4], "data_offsets": [36, 40]},)"
            R"( "w": {"dtype": "F32", "shape": [2], "data_offsets": [40, 48]}})",
            48);
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  EXPECT_EQ((*file)->tensors().size(), 1u);
  EXPECT_EQ((*file)->unreadable_tensors().size(), 5u);
  EXPECT_EQ((*file)->find("ids"), nullptr);
  ASSERT_NE((*file)->find_unreadable("ids"), nullptr);

  auto weights = WeightSet::open({path});
  ASSERT_TRUE(weights.is_ok());
  for (const auto& [name, dtype] :
       {std::pair{"ids", "I64"}, {"d", "F64"}, {"m", "BOOL"}, {"q", "F8_E4M3"}, {"u", "U8"}}) {
    auto t = weights->get(name);
    ASSERT_FALSE(t.is_ok());
    EXPECT_EQ(t.status().code(), base::StatusCode::kUnsupported);
    EXPECT_EQ(t.status().message(), display_path(path) + ": tensor '" + name + "' has dtype " + dtype +
                                        "; sdstack reads F32, F16 and BF16 tensors only");
  }
  // Their sizes are checked like any other's.
  write_raw(path, R"({"ids": {"dtype": "I64", "shape": [1, 3], "data_offsets": [0, 12]}})", 12);
  EXPECT_TRUE(contains(open_error(path), "tensor 'ids': I64 [1,3] needs 24 bytes"));
}

TEST(Safetensors, RefusesOffsetsOutOfRange) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  const std::string header = R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})";
  write_raw(path, header, 16);
  std::string message = open_error(path);
  EXPECT_EQ(message, path + ": file is truncated: tensor 'w' ends at byte " + std::to_string(8 + header.size() + 24) +
                         " but the file has " + std::to_string(8 + header.size() + 16) + " (re-download it)");
  write_raw(path, R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})", 16);
  EXPECT_TRUE(contains(open_error(path), "tensor 'w': data_offsets [8,0] end before they begin"));
  write_raw(path, R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0]}})", 16);
  EXPECT_TRUE(contains(open_error(path), "tensor 'w': data_offsets is [0], expected [begin, end]"));
  write_raw(path, R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}})", 16);
  EXPECT_TRUE(contains(open_error(path), "tensor 'w': data_offsets"));
}

TEST(Safetensors, RefusesTruncatedFile) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  ASSERT_TRUE(write_safetensors(path, {{"a", Tensor::zeros({64})}, {"b", Tensor::zeros({64})}}).is_ok());
  auto bytes = base::read_file(path);
  ASSERT_TRUE(bytes.is_ok());
  std::string cut = bytes->substr(0, bytes->size() - 100);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << cut;
  EXPECT_EQ(open_error(path), path + ": file is truncated: tensor 'b' ends at byte " + std::to_string(bytes->size()) +
                                  " but the file has " + std::to_string(cut.size()) + " (re-download it)");
}

TEST(Safetensors, RefusesOverlappingTensors) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  write_raw(path,
            R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
            R"( "b": {"dtype": "F16", "shape": [4], "data_offsets": [12, 20]}})",
            20);
  std::string message = open_error(path);
  EXPECT_TRUE(contains(message, "tensors 'a' (data_offsets [0,16]) and 'b' (data_offsets [12,20]) overlap"));
  // Empty tensors take no bytes and may sit anywhere.
  write_raw(path,
            R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
            R"( "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})",
            16);
  EXPECT_TRUE(SafetensorsFile::open(path).is_ok());
}

TEST(Safetensors, RefusesSizeInconsistentWithShape) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  write_raw(path, R"({"w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 24]}})", 24);
  EXPECT_TRUE(contains(open_error(path), "tensor 'w': F16 [2,3] needs 12 bytes but data_offsets [0,24] hold 24"));
  // A shape whose byte count overflows must not wrap around to something plausible.
  write_raw(path, R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})", 0);
  EXPECT_TRUE(contains(open_error(path), "tensor 'w'"));
}

TEST(Safetensors, RefusesNegativeOrNonIntegerShape) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  write_raw(path, R"({"w": {"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, 16]}})", 16);
  EXPECT_TRUE(contains(open_error(path), "tensor 'w': shape [-2,2] must be an array of non-negative integers"));
  write_raw(path, R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 16]}})", 16);
  EXPECT_TRUE(contains(open_error(path), "tensor 'w': shape"));
  write_raw(path, R"({"w": {"dtype": "F32", "data_offsets": [0, 16]}})", 16);
  EXPECT_TRUE(contains(open_error(path), "tensor 'w': header entry has no shape"));
  write_raw(path, R"({"w": [1, 2]})", 16);
  EXPECT_TRUE(contains(open_error(path), "tensor 'w': header entry is [1,2]"));
}

TEST(Safetensors, RefusesNonStringMetadata) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  write_raw(path, R"({"__metadata__": {"format": 1}})", 0);
  EXPECT_TRUE(contains(open_error(path), "__metadata__ key 'format'"));
  write_raw(path, R"({"__metadata__": "pt"})", 0);
  EXPECT_TRUE(contains(open_error(path), "__metadata__"));
}

TEST(Safetensors, AcceptsHeaderPaddingAndMissingMetadata) {
  testing::TempDir dir;
  std::string path = dir.file("a.safetensors");
  write_raw(path, R"({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}      )", 4);
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  EXPECT_TRUE((*file)->metadata().empty());
  EXPECT_EQ((*file)->tensors()[0].dtype, DType::kBF16);
}

TEST(Safetensors, MissingFileNamesIt) {
  auto file = SafetensorsFile::open("/nonexistent/x.safetensors");
  ASSERT_FALSE(file.is_ok());
  EXPECT_TRUE(starts_with(file.status().message(), "/nonexistent/x.safetensors"));
}

TEST(Safetensors, GoldenTextEncoderOpens) {
  if (!testing::have_golden()) GTEST_SKIP() << "no golden data at " << testing::golden_dir();
  auto file = SafetensorsFile::open(testing::golden_dir() + "/tiny-sd/text_encoder/model.safetensors");
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  const TensorInfo* info = (*file)->find("text_model.embeddings.token_embedding.weight");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dtype, DType::kF16);
  EXPECT_EQ(info->shape, (Shape{49408, 32}));
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  // transformers 4.30 saves the position ids buffer as I64.
  ASSERT_NE((*file)->find_unreadable("text_model.embeddings.position_ids"), nullptr);
  EXPECT_EQ((*file)->find_unreadable("text_model.embeddings.position_ids")->dtype, "I64");
}

}  // namespace
}  // namespace sdstack::io
