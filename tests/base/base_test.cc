// base: Status/Result propagation, "did you mean", atomic writes, memory maps.
#include <filesystem>

#include "base/file.h"
#include "base/status.h"
#include "base/strings.h"
#include "testing/testing.h"

namespace sdstack::base {
namespace {

Result<int> parse_positive(int value) {
  if (value <= 0) return invalid_argument("value " + std::to_string(value) + " must be positive");
  return value;
}

Result<int> doubled(int value) {
  SD_ASSIGN_OR_RETURN(int checked, parse_positive(value));
  return checked * 2;
}

Status check_both(int a, int b) {
  SD_RETURN_IF_ERROR(parse_positive(a).status());
  SD_RETURN_IF_ERROR(parse_positive(b).status().with_context("second"));
  return Status::ok();
}

TEST(StatusTest, ResultCarriesValueOrError) {
  Result<int> good = doubled(21);
  ASSERT_TRUE(good.is_ok());
  EXPECT_EQ(*good, 42);
  Result<int> bad = doubled(-1);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "value -1 must be positive");
}

TEST(StatusTest, ReturnIfErrorStopsAtTheFirstFailureWithContext) {
  EXPECT_TRUE(check_both(1, 2).is_ok());
  EXPECT_EQ(check_both(0, -5).message(), "value 0 must be positive");
  EXPECT_EQ(check_both(3, -5).message(), "second: value -5 must be positive");
}

TEST(StringsTest, EditDistance) {
  EXPECT_EQ(edit_distance("", ""), 0u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("comands", "commands"), 1u);
  EXPECT_EQ(edit_distance("abc", ""), 3u);
  EXPECT_EQ(edit_distance("uent", "unet"), 1u);  // adjacent swap
  EXPECT_EQ(did_you_mean("uent", {"unet", "vae", "text_encoder"}), " (did you mean 'unet'?)");
}

TEST(StringsTest, DidYouMeanSuggestsOnlyCloseWords) {
  std::vector<std::string> keys = {"commands", "artifacts", "resources", "deps"};
  EXPECT_EQ(did_you_mean("comands", keys), " (did you mean 'commands'?)");
  EXPECT_EQ(did_you_mean("artefacts", keys), " (did you mean 'artifacts'?)");
  EXPECT_EQ(did_you_mean("zzzzzz", keys), "");
  EXPECT_EQ(did_you_mean("x", keys), "");
}

TEST(StringsTest, JoinAndShapes) {
  EXPECT_EQ(join({"a", "b", "c"}, ", "), "a, b, c");
  EXPECT_EQ(join({}, ", "), "");
  EXPECT_EQ(shape_to_string({2, 77, 768}), "[2,77,768]");
  EXPECT_EQ(shape_to_string({}), "[]");
}

TEST(FileTest, AtomicWriteReplacesWholeAndLeavesNoTemporaries) {
  sdstack::testing::TempDir dir;
  std::string path = dir.file("out.txt");
  ASSERT_TRUE(write_file_atomic(path, "first").is_ok());
  ASSERT_TRUE(write_file_atomic(path, "second version").is_ok());
  Result<std::string> contents = read_file(path);
  ASSERT_TRUE(contents.is_ok());
  EXPECT_EQ(*contents, "second version");
  int entries = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir.path())) ++entries;
  EXPECT_EQ(entries, 1);
}

TEST(FileTest, AtomicWriteIntoMissingFolderFailsNamingIt) {
  sdstack::testing::TempDir dir;
  Status status = write_file_atomic(dir.file("missing/out.txt"), "x");
  ASSERT_FALSE(status.is_ok());
  EXPECT_NE(status.message().find("missing/out.txt"), std::string::npos) << status.message();
}

TEST(FileTest, ReadMissingFileNamesIt) {
  Result<std::string> contents = read_file("/nonexistent/file.json");
  ASSERT_FALSE(contents.is_ok());
  EXPECT_EQ(contents.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(contents.status().message(), "/nonexistent/file.json: no such file");
}

TEST(FileTest, MappedFileSeesTheBytesAndOutlivesItsHandle) {
  sdstack::testing::TempDir dir;
  std::string path = dir.file("data.bin");
  ASSERT_TRUE(write_file_atomic(path, std::string("\x01\x02\x03\x04", 4)).is_ok());
  Result<std::shared_ptr<MappedFile>> mapped = MappedFile::open(path);
  ASSERT_TRUE(mapped.is_ok());
  std::shared_ptr<MappedFile> file = *mapped;
  std::filesystem::remove(path);  // the mapping stays valid
  ASSERT_EQ(file->size(), 4u);
  EXPECT_EQ(file->data()[3], 4);
  EXPECT_FALSE(MappedFile::open(dir.path()).is_ok());  // a folder is not a file
}

TEST(FileTest, JoinPath) {
  EXPECT_EQ(join_path("a/b", "c"), "a/b/c");
  EXPECT_EQ(join_path("a/b/", "c"), "a/b/c");
  EXPECT_EQ(join_path("", "c"), "c");
}

}  // namespace
}  // namespace sdstack::base
