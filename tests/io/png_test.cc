// PNG: round trips with metadata, diffusers' float-to-pixel rounding, the golden images, bad files.
#include "io/png.h"

#include <filesystem>

#include "io/npy.h"
#include "testing/testing.h"

namespace sdstack::io {
namespace {

TEST(PngTest, RoundTripKeepsPixelsAndText) {
  sdstack::testing::TempDir dir;
  Image image;
  image.width = 5;
  image.height = 3;
  for (int i = 0; i < 5 * 3 * 3; ++i) image.rgb.push_back(static_cast<uint8_t>(i * 5));
  image.text = {{"prompt", "cats in hats"}, {"seed", "42"}};
  ASSERT_TRUE(write_png(dir.file("a.png"), image).is_ok());
  auto read = read_png(dir.file("a.png"));
  ASSERT_TRUE(read.is_ok()) << read.status().message();
  EXPECT_EQ(read->width, 5);
  EXPECT_EQ(read->height, 3);
  EXPECT_EQ(read->rgb, image.rgb);
  EXPECT_EQ(read->text, image.text);
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++entries;
  EXPECT_EQ(entries, 1) << "no temporary file left behind";
}

TEST(PngTest, FloatToPixelsClampsAndRoundsHalfToEven) {
  // 0.5/255 -> 0.5 rounds to 0; 1.5/255 -> 2; 2.5/255 -> 2; below 0 and above 1 clamp.
  tensor::Tensor hwc = tensor::Tensor::from_vector({1, 2, 3}, {0.5f / 255, 1.5f / 255, 2.5f / 255, -0.3f, 1.7f, 0.5f});
  Image image = image_from_float(hwc);
  EXPECT_EQ(image.rgb, (std::vector<uint8_t>{0, 2, 2, 0, 255, 128}));
}

TEST(PngTest, GoldenImagePixelsMatchDiffusersImageArray) {
  if (!sdstack::testing::have_golden()) GTEST_SKIP() << "no golden data";
  const std::string dir = sdstack::testing::golden_dir() + "/cases/pndm_cfg7.5_s10_64/";
  auto png = read_png(dir + "image_0.png");
  ASSERT_TRUE(png.is_ok()) << png.status().message();
  auto image = read_npy(dir + "image.npy");  // [1, 64, 64, 3] in [0, 1]
  ASSERT_TRUE(image.is_ok());
  Image ours = image_from_float(image->reshape({image->dim(1), image->dim(2), 3}));
  EXPECT_EQ(png->width, 64);
  EXPECT_EQ(ours.rgb, png->rgb);
}

TEST(PngTest, BadFilesAreNamed) {
  sdstack::testing::TempDir dir;
  sdstack::testing::write_text_file(dir.file("fake.png"), "not a png at all");
  auto fake = read_png(dir.file("fake.png"));
  ASSERT_FALSE(fake.is_ok());
  EXPECT_NE(fake.status().message().find("fake.png: not a PNG file"), std::string::npos);

  Image image;
  image.width = 4;
  image.height = 4;
  image.rgb.assign(4 * 4 * 3, 7);
  ASSERT_TRUE(write_png(dir.file("good.png"), image).is_ok());
  std::filesystem::resize_file(dir.file("good.png"), 40);
  auto truncated = read_png(dir.file("good.png"));
  ASSERT_FALSE(truncated.is_ok());
  EXPECT_NE(truncated.status().message().find("good.png"), std::string::npos);

  EXPECT_FALSE(write_png(dir.file("missing/x.png"), image).is_ok());
  auto missing = read_png(dir.file("nope.png"));
  EXPECT_EQ(missing.status().message(), dir.file("nope.png") + ": no such file");
}

}  // namespace
}  // namespace sdstack::io
