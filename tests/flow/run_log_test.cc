// Run logs: the line format, how output bytes become lines, masking, concurrent writers, following.
#include "flow/run_log.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "base/file.h"
#include "testing/testing.h"

namespace sdstack::flow {
namespace {

// The log's lines as "stream text" ("out hello"), timestamps checked to parse and left out.
std::vector<std::string> read_lines(const std::string& path) {
  auto lines = read_log(path);
  EXPECT_TRUE(lines.is_ok()) << lines.status().message();
  std::vector<std::string> shown;
  if (!lines.is_ok()) return shown;
  for (const LogLine& line : *lines) shown.push_back(std::string(log_stream_name(line.stream)) + " " + line.text);
  return shown;
}

std::unique_ptr<LogWriter> open_writer(const std::string& path) {
  auto writer = LogWriter::open(path);
  EXPECT_TRUE(writer.is_ok()) << writer.status().message();
  return writer.is_ok() ? std::move(writer).value() : nullptr;
}

TEST(RunLogTest, FormatAndParseRoundTrip) {
  LogLine line{1795600800123456, LogStream::kErr, "Traceback (most recent call last):"};
  EXPECT_EQ(format_log_line(line), "2026-11-25T10:00:00.123456Z err Traceback (most recent call last):");
  const struct {
    int64_t time_us;
    LogStream stream;
    std::string text;
  } cases[] = {{0, LogStream::kOut, "epoch"},
               {1795600800000001, LogStream::kSys, "sdstack: run started"},
               {1795600800999999, LogStream::kOut, ""},
               {1795600800500000, LogStream::kErr, "  spaces  \ttabs and \xe2\x96\x88 utf-8 "},
               {-1, LogStream::kOut, "a microsecond before 1970"}};
  for (const auto& c : cases) {
    std::string text = format_log_line(LogLine{c.time_us, c.stream, c.text});
    auto parsed = parse_log_line(text);
    ASSERT_TRUE(parsed.is_ok()) << text << ": " << parsed.status().message();
    EXPECT_EQ(parsed->time_us, c.time_us) << text;
    EXPECT_EQ(parsed->stream, c.stream) << text;
    EXPECT_EQ(parsed->text, c.text) << text;
  }
  EXPECT_EQ(format_log_line(LogLine{-1, LogStream::kOut, "x"}), "1969-12-31T23:59:59.999999Z out x");
  // An empty line whose trailing space an editor stripped still parses.
  auto stripped = parse_log_line("2026-11-25T10:00:00.000000Z out");
  ASSERT_TRUE(stripped.is_ok());
  EXPECT_EQ(stripped->text, "");
}

TEST(RunLogTest, BadLinesAreRefusedWithTheExpectedForm) {
  for (const char* bad :
       {"", "hello world", "2026-11-25T10:00:00.123456Z log text", "2026-11-25 10:00:00.123456Z out x",
        "2026-13-25T10:00:00.123456Z out x", "2026-11-25T10:00:00.123456Zout x", "2026-11-25T10:00:00.123456Z outx",
        "2026-11-25T10:00:00.12345Z out x"}) {
    auto parsed = parse_log_line(bad);
    ASSERT_FALSE(parsed.is_ok()) << bad;
    EXPECT_EQ(parsed.status().code(), base::StatusCode::kDataLoss);
  }
  EXPECT_EQ(parse_log_line("hello world").status().message(),
            "bad log line 'hello world' (expected '2026-11-25T10:00:00.123456Z out|err|sys TEXT')");
}

TEST(RunLogTest, ReadLogNamesTheFileAndLine) {
  testing::TempDir dir;
  auto missing = read_log(dir.file("log"));
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), base::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir.file("log")), std::string::npos);

  testing::write_text_file(dir.file("log"), "2026-11-25T10:00:00.000000Z out one\ngarbage\n");
  auto bad = read_log(dir.file("log"));
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().message().rfind(dir.file("log") + ":2: bad log line 'garbage'", 0), 0u)
      << bad.status().message();
}

TEST(RunLogTest, CompleteLinesAreWrittenAtOncePartialOnesHeldUntilFlush) {
  testing::TempDir dir;
  auto writer = open_writer(dir.file("log"));
  ASSERT_TRUE(writer);
  int64_t before = now_us();
  ASSERT_TRUE(writer->write(LogStream::kOut, "first\nsec").is_ok());
  EXPECT_EQ(read_lines(dir.file("log")), (std::vector<std::string>{"out first"}));
  ASSERT_TRUE(writer->write(LogStream::kErr, "an error without newline").is_ok());
  ASSERT_TRUE(writer->write(LogStream::kOut, "ond\n\nthird").is_ok());
  EXPECT_EQ(read_lines(dir.file("log")), (std::vector<std::string>{"out first", "out second", "out "}));
  ASSERT_TRUE(writer->sys("artifacts saved").is_ok());
  ASSERT_TRUE(writer->flush().is_ok());
  EXPECT_EQ(read_lines(dir.file("log")),
            (std::vector<std::string>{"out first", "out second", "out ", "sys sdstack: artifacts saved", "out third",
                                      "err an error without newline"}));
  auto lines = read_log(dir.file("log"));
  ASSERT_TRUE(lines.is_ok());
  for (const LogLine& line : *lines) {
    EXPECT_GE(line.time_us, before);
    EXPECT_LE(line.time_us, now_us());
  }
}

TEST(RunLogTest, CarriageReturnsEndLines) {
  testing::TempDir dir;
  auto writer = open_writer(dir.file("log"));
  ASSERT_TRUE(writer);
  // Each case: the chunks written (to see "\r" and "\n" split between reads), the lines expected.
  const struct {
    std::vector<std::string> chunks;
    std::vector<std::string> lines;
  } cases[] = {
      {{"dos\r\nline\r\n"}, {"dos", "line"}},
      {{"\r 10%|#  |\r 50%|## |\r100%|###|\n"}, {" 10%|#  |", " 50%|## |", "100%|###|"}},
      {{"split\r", "\nnext\n"}, {"split", "next"}},
      {{"a\r", "b\n"}, {"a", "b"}},
      {{"blank dos lines\r\n\r", "\n\r\n"}, {"blank dos lines", "", ""}},
      {{"\r", "\r", "x\n"}, {"x"}},
      {{"mixed\n\r\n\n"}, {"mixed", "", ""}},
  };
  for (const auto& c : cases) {
    testing::write_text_file(dir.file("log"), "");
    for (const std::string& chunk : c.chunks) ASSERT_TRUE(writer->write(LogStream::kOut, chunk).is_ok());
    ASSERT_TRUE(writer->flush().is_ok());
    std::vector<std::string> expected;
    for (const std::string& line : c.lines) expected.push_back("out " + line);
    EXPECT_EQ(read_lines(dir.file("log")), expected) << ::testing::PrintToString(c.chunks);
  }
}

TEST(RunLogTest, SecretsAreMasked) {
  testing::TempDir dir;
  auto writer = open_writer(dir.file("log"));
  ASSERT_TRUE(writer);
  writer->set_secrets({"hf_abc123", "", "hf_abc123XYZ", "pw"});
  ASSERT_TRUE(writer->write(LogStream::kOut, "token=hf_abc123 again hf_abc123XYZ and pwpw\n").is_ok());
  ASSERT_TRUE(writer->write(LogStream::kErr, "no secret here\n").is_ok());
  ASSERT_TRUE(writer->sys("logged in with hf_abc123").is_ok());
  EXPECT_EQ(read_lines(dir.file("log")),
            (std::vector<std::string>{"out token=*** again *** and ******", "err no secret here",
                                      "sys sdstack: logged in with ***"}));
  auto contents = base::read_file(dir.file("log"));
  ASSERT_TRUE(contents.is_ok());
  EXPECT_EQ(contents->find("abc123"), std::string::npos);
}

TEST(RunLogTest, LongLinesAreCutAt64KiB) {
  testing::TempDir dir;
  auto writer = open_writer(dir.file("log"));
  ASSERT_TRUE(writer);
  // A partial line is held up to 64 KiB; one byte more and the first 64 KiB go out.
  ASSERT_TRUE(writer->write(LogStream::kOut, std::string(kMaxLogLineBytes, 'a')).is_ok());
  EXPECT_EQ(read_lines(dir.file("log")).size(), 0u);
  ASSERT_TRUE(writer->write(LogStream::kOut, "bc\n").is_ok());
  EXPECT_EQ(read_lines(dir.file("log")),
            (std::vector<std::string>{"out " + std::string(kMaxLogLineBytes, 'a'), "out bc"}));

  // A complete 150 KiB line in one write: three lines. A cut never splits a UTF-8 character.
  testing::write_text_file(dir.file("log"), "");
  std::string text = std::string(kMaxLogLineBytes - 1, 'x') + "\xe2\x96\x88" + std::string(90 * 1024, 'y');
  ASSERT_TRUE(writer->write(LogStream::kErr, text + "\n").is_ok());
  auto lines = read_log(dir.file("log"));
  ASSERT_TRUE(lines.is_ok());
  ASSERT_EQ(lines->size(), 3u);
  EXPECT_EQ((*lines)[0].text, std::string(kMaxLogLineBytes - 1, 'x'));
  EXPECT_EQ((*lines)[1].text.substr(0, 3), "\xe2\x96\x88");
  EXPECT_EQ((*lines)[1].text.size(), kMaxLogLineBytes);
  EXPECT_EQ((*lines)[0].text + (*lines)[1].text + (*lines)[2].text, text);
}

TEST(RunLogTest, TwoWritersOnOneFileInterleaveWholeLines) {
  testing::TempDir dir;
  auto first = open_writer(dir.file("log"));
  auto second = open_writer(dir.file("log"));
  ASSERT_TRUE(first && second);
  const int kLines = 2000;
  // Lines of 3000 bytes written in small pieces: with any buffering across calls, or a line split
  // over two write(2)s, the other writer's lines would land inside them.
  auto write_many = [kLines](LogWriter* writer, char fill) {
    std::string line(3000, fill);
    for (int i = 0; i < kLines; ++i) {
      std::string numbered = std::to_string(i) + " " + line + "\n";
      for (size_t at = 0; at < numbered.size(); at += 700) {
        if (!writer->write(LogStream::kOut, std::string_view(numbered).substr(at, 700)).is_ok()) return;
      }
    }
  };
  std::thread a(write_many, first.get(), 'a');
  std::thread b(write_many, second.get(), 'b');
  a.join();
  b.join();
  auto lines = read_log(dir.file("log"));
  ASSERT_TRUE(lines.is_ok()) << lines.status().message();
  ASSERT_EQ(lines->size(), 2u * kLines);
  int next[2] = {0, 0};
  for (const LogLine& line : *lines) {
    size_t space = line.text.find(' ');
    ASSERT_NE(space, std::string::npos);
    std::string body = line.text.substr(space + 1);
    ASSERT_EQ(body.size(), 3000u);
    char fill = body[0];
    ASSERT_TRUE(fill == 'a' || fill == 'b');
    ASSERT_EQ(body, std::string(3000, fill));
    EXPECT_EQ(line.text.substr(0, space), std::to_string(next[fill - 'a']++));  // each writer's lines in order
  }
}

TEST(RunLogTest, FollowSeesLinesAsTheyAreAppendedAndReturnsWhenFinished) {
  testing::TempDir dir;
  const std::string path = dir.file("log");
  std::atomic<bool> finished{false};
  std::thread writer_thread([&] {
    // The follower starts before the file exists; lines arrive over ~300 ms, some in pieces.
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    auto writer = LogWriter::open(path);
    if (!writer.is_ok()) return;
    for (int i = 0; i < 30; ++i) {
      (void)(*writer)->write(LogStream::kOut, "line " + std::to_string(i));
      if (i % 3 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(30));
      (void)(*writer)->write(LogStream::kOut, "\n");
    }
    (void)(*writer)->write(LogStream::kErr, "partial at the end");
    (void)(*writer)->flush();
    finished = true;
  });
  std::vector<std::string> seen;
  auto started = std::chrono::steady_clock::now();
  bool saw_line_before_end = false;
  base::Status status = follow_log(
      path,
      [&](const LogLine& line) {
        seen.push_back(std::string(log_stream_name(line.stream)) + " " + line.text);
        if (!finished) saw_line_before_end = true;
      },
      [&] { return finished.load(); });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  writer_thread.join();
  ASSERT_TRUE(status.is_ok()) << status.message();
  ASSERT_EQ(seen.size(), 31u);
  for (int i = 0; i < 30; ++i) EXPECT_EQ(seen[i], "out line " + std::to_string(i));
  EXPECT_EQ(seen[30], "err partial at the end");
  EXPECT_TRUE(saw_line_before_end);  // followed live, not read at the end
  EXPECT_LT(seconds, 2.0);
}

TEST(RunLogTest, FollowDeliversAPartialLastLineAtTheEnd) {
  testing::TempDir dir;
  testing::write_text_file(dir.file("log"),
                           "2026-11-25T10:00:00.000000Z out done\n2026-11-25T10:00:00.000001Z err cut");
  std::vector<std::string> seen;
  base::Status status = follow_log(
      dir.file("log"), [&](const LogLine& line) { seen.push_back(line.text); }, [] { return true; });
  ASSERT_TRUE(status.is_ok()) << status.message();
  EXPECT_EQ(seen, (std::vector<std::string>{"done", "cut"}));

  base::Status missing = follow_log(
      dir.file("nothing"), [](const LogLine&) {}, [] { return true; });
  EXPECT_EQ(missing.code(), base::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sdstack::flow
