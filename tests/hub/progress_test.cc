// The download progress bar: sizes, speed and ETA as a terminal shows them.
#include "base/progress.h"

#include <cstdio>
#include <string>

#include "testing/testing.h"

namespace sdstack {
namespace {

TEST(ProgressTest, FormatsBytesAndDurations) {
  EXPECT_EQ(base::format_bytes(0), "0 B");
  EXPECT_EQ(base::format_bytes(999), "999 B");
  EXPECT_EQ(base::format_bytes(1500), "1.5 kB");
  EXPECT_EQ(base::format_bytes(3438000000), "3.4 GB");
  EXPECT_EQ(base::format_duration(0), "0:00");
  EXPECT_EQ(base::format_duration(75.4), "1:15");
  EXPECT_EQ(base::format_duration(3725), "1:02:05");
}

TEST(ProgressTest, ABytesBarShowsSizesSpeedAndFiles) {
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  {
    base::ProgressBar bar("downloading", 4000000, /*force=*/true, out);
    bar.set_unit(base::ProgressUnit::kBytes);
    bar.set_detail("1/3 files");
    bar.update(4000000);
  }
  std::rewind(out);
  char buffer[512] = {0};
  size_t n = std::fread(buffer, 1, sizeof buffer - 1, out);
  std::fclose(out);
  const std::string drawn(buffer, n);
  EXPECT_NE(drawn.find("downloading [##############################] 4.0 MB/4.0 MB  "), std::string::npos) << drawn;
  EXPECT_NE(drawn.find("/s  ETA "), std::string::npos) << drawn;
  EXPECT_NE(drawn.find("  1/3 files"), std::string::npos) << drawn;
}

}  // namespace
}  // namespace sdstack
