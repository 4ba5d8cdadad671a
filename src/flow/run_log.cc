// Run logs: line splitting, masking and O_APPEND writes; parsing; following a growing file.
#include "flow/run_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <thread>

#include "base/file.h"

namespace sdstack::flow {

using base::Result;
using base::Status;

namespace {

constexpr size_t kTimestampSize = 27;  // "2026-11-25T10:00:00.123456Z"
constexpr auto kFollowInterval = std::chrono::milliseconds(50);

std::string format_timestamp(int64_t time_us) {
  int64_t seconds = time_us / 1000000;
  int64_t micros = time_us % 1000000;
  if (micros < 0) {  // round toward the past for times before 1970
    micros += 1000000;
    seconds -= 1;
  }
  time_t time = static_cast<time_t>(seconds);
  struct tm utc;
  gmtime_r(&time, &utc);
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(micros));
  return buffer;
}

// The "TIMESTAMP stream " that starts every line.
std::string line_prefix(int64_t time_us, LogStream stream) {
  std::string prefix = format_timestamp(time_us);
  prefix += ' ';
  prefix += log_stream_name(stream);
  prefix += ' ';
  return prefix;
}

// Where to cut a text longer than kMaxLogLineBytes: at most that many bytes, not inside a UTF-8
// character (a continuation byte 10xxxxxx never starts a piece, unless the text isn't UTF-8).
size_t cut_point(std::string_view text) {
  size_t cut = kMaxLogLineBytes;
  while (cut > kMaxLogLineBytes - 3 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80 ? kMaxLogLineBytes : cut;
}

bool parse_digits(std::string_view text, size_t at, size_t count, int* value) {
  *value = 0;
  for (size_t i = at; i < at + count; ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
    *value = *value * 10 + (text[i] - '0');
  }
  return true;
}

bool parse_timestamp(std::string_view text, int64_t* time_us) {
  if (text.size() < kTimestampSize) return false;
  int year, month, day, hour, minute, second, micros;
  if (!parse_digits(text, 0, 4, &year) || text[4] != '-' || !parse_digits(text, 5, 2, &month) || text[7] != '-' ||
      !parse_digits(text, 8, 2, &day) || text[10] != 'T' || !parse_digits(text, 11, 2, &hour) || text[13] != ':' ||
      !parse_digits(text, 14, 2, &minute) || text[16] != ':' || !parse_digits(text, 17, 2, &second) ||
      text[19] != '.' || !parse_digits(text, 20, 6, &micros) || text[26] != 'Z') {
    return false;
  }
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) return false;
  struct tm utc {};
  utc.tm_year = year - 1900;
  utc.tm_mon = month - 1;
  utc.tm_mday = day;
  utc.tm_hour = hour;
  utc.tm_min = minute;
  utc.tm_sec = second;
  *time_us = static_cast<int64_t>(timegm(&utc)) * 1000000 + micros;
  return true;
}

// Parses one line of `path` for read_log and follow_log, naming "path:line" in the error.
Result<LogLine> parse_numbered(const std::string& path, int line_number, std::string_view text) {
  auto line = parse_log_line(text);
  if (!line.is_ok()) return base::data_loss(path + ":" + std::to_string(line_number) + ": " + line.status().message());
  return line;
}

}  // namespace

std::string_view log_stream_name(LogStream stream) {
  switch (stream) {
    case LogStream::kOut:
      return "out";
    case LogStream::kErr:
      return "err";
    case LogStream::kSys:
      return "sys";
  }
  return "out";
}

int64_t now_us() {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
}

std::string format_log_line(const LogLine& line) {
  std::string text = line_prefix(line.time_us, line.stream);
  text += line.text;
  return text;
}

Result<LogLine> parse_log_line(std::string_view text) {
  LogLine line;
  bool ok = parse_timestamp(text, &line.time_us) && text.size() >= kTimestampSize + 4 && text[kTimestampSize] == ' ';
  if (ok) {
    std::string_view stream = text.substr(kTimestampSize + 1, 3);
    if (stream == "out") {
      line.stream = LogStream::kOut;
    } else if (stream == "err") {
      line.stream = LogStream::kErr;
    } else if (stream == "sys") {
      line.stream = LogStream::kSys;
    } else {
      ok = false;
    }
  }
  const size_t text_at = kTimestampSize + 5;
  if (ok && text.size() > kTimestampSize + 4) {
    ok = text[kTimestampSize + 4] == ' ';
    if (ok) line.text = std::string(text.substr(text_at));
  }
  if (!ok) {
    std::string shown(text.substr(0, 80));
    if (text.size() > 80) shown += "...";
    return base::data_loss("bad log line '" + shown + "' (expected '2026-11-25T10:00:00.123456Z out|err|sys TEXT')");
  }
  return line;
}

// ---------------------------------------------------------------------------------------------
// LogWriter

Result<std::unique_ptr<LogWriter>> LogWriter::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return base::io_error(path + ": cannot open the log: " + std::strerror(errno));
  return std::unique_ptr<LogWriter>(new LogWriter(path, fd));
}

LogWriter::~LogWriter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    (void)flush_locked();
  }
  ::close(fd_);
}

void LogWriter::set_secrets(std::vector<std::string> values) {
  values.erase(std::remove(values.begin(), values.end(), std::string()), values.end());
  // Longest first, so a secret that contains another is masked whole.
  std::sort(values.begin(), values.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  std::lock_guard<std::mutex> lock(mutex_);
  secrets_ = std::move(values);
}

void LogWriter::append_line(std::string_view prefix, std::string_view text, std::string* out) const {
  std::string masked;
  if (!secrets_.empty()) {
    masked = std::string(text);
    for (const std::string& secret : secrets_) {
      for (size_t at = masked.find(secret); at != std::string::npos; at = masked.find(secret, at + 3)) {
        masked.replace(at, secret.size(), "***");
      }
    }
    text = masked;
  }
  while (text.size() > kMaxLogLineBytes) {
    size_t cut = cut_point(text);
    out->append(prefix);
    out->append(text.substr(0, cut));
    out->push_back('\n');
    text.remove_prefix(cut);
  }
  out->append(prefix);
  out->append(text);
  out->push_back('\n');
}

void LogWriter::cut_held_line(std::string_view prefix, PendingLine* pending, std::string* out) const {
  while (pending->text.size() > kMaxLogLineBytes) {
    size_t cut = cut_point(pending->text);
    append_line(prefix, std::string_view(pending->text).substr(0, cut), out);
    pending->text.erase(0, cut);
  }
}

Status LogWriter::write(LogStream stream, std::string_view bytes) {
  if (bytes.empty()) return Status::ok();
  std::lock_guard<std::mutex> lock(mutex_);
  PendingLine& pending = pending_[static_cast<int>(stream)];
  const std::string prefix = line_prefix(now_us(), stream);
  std::string out;
  // A complete line: the held part (if any) followed by `segment`.
  auto end_line = [&](std::string_view segment) {
    if (pending.text.empty()) {
      append_line(prefix, segment, &out);
    } else {
      pending.text.append(segment);
      append_line(prefix, pending.text, &out);
      pending.text.clear();
    }
  };

  size_t i = 0;
  const size_t n = bytes.size();
  if (pending.held_cr) {  // a '\r' ended the previous bytes with nothing before it
    pending.held_cr = false;
    if (bytes[0] == '\n') {
      end_line("");
      i = 1;
    }
  } else if (pending.skip_newline) {
    pending.skip_newline = false;
    if (bytes[0] == '\n') i = 1;
  }
  while (i < n) {
    size_t end = bytes.find_first_of("\r\n", i);
    if (end == std::string_view::npos) {
      pending.text.append(bytes.substr(i));
      cut_held_line(prefix, &pending, &out);
      break;
    }
    std::string_view segment = bytes.substr(i, end - i);
    i = end + 1;
    if (bytes[end] == '\n') {
      end_line(segment);
    } else if (i < n && bytes[i] == '\n') {  // "\r\n"
      end_line(segment);
      ++i;
    } else if (segment.empty() && pending.text.empty()) {  // a lone '\r' ending nothing
      if (i == n) pending.held_cr = true;                  // unless "\n" comes next
    } else {                                               // a lone '\r' ending a line
      end_line(segment);
      if (i == n) pending.skip_newline = true;
    }
  }
  return write_all(out);
}

Status LogWriter::flush_locked() {
  std::string out;
  for (int stream = 0; stream < 3; ++stream) {
    PendingLine& pending = pending_[stream];
    pending.held_cr = false;
    if (pending.text.empty()) continue;
    append_line(line_prefix(now_us(), static_cast<LogStream>(stream)), pending.text, &out);
    pending.text.clear();
  }
  return write_all(out);
}

Status LogWriter::flush() {
  std::lock_guard<std::mutex> lock(mutex_);
  return flush_locked();
}

Status LogWriter::sys(std::string_view message) {
  std::string text = "sdstack: ";
  text += message;
  std::replace(text.begin(), text.end(), '\n', ' ');
  std::replace(text.begin(), text.end(), '\r', ' ');
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  append_line(line_prefix(now_us(), LogStream::kSys), text, &out);
  return write_all(out);
}

Status LogWriter::append_lines(std::string_view lines) {
  std::lock_guard<std::mutex> lock(mutex_);
  return write_all(std::string(lines));
}

Status LogWriter::write_all(const std::string& bytes) {
  // One write(2) for all the lines; O_APPEND makes it land whole at the end of the file.
  return base::write_all(fd_, bytes, path_);
}

// ---------------------------------------------------------------------------------------------
// Reading

Result<std::vector<LogLine>> read_log(const std::string& path) {
  SD_ASSIGN_OR_RETURN(std::string contents, base::read_file(path));
  std::vector<LogLine> lines;
  std::string_view rest = contents;
  int line_number = 0;
  while (!rest.empty()) {
    size_t end = rest.find('\n');
    std::string_view text = rest.substr(0, end);
    ++line_number;
    auto line = parse_numbered(path, line_number, text);
    if (!line.is_ok()) {
      if (end == std::string_view::npos) break;  // a last line still being written
      return line.status();
    }
    lines.push_back(std::move(line).value());
    if (end == std::string_view::npos) break;
    rest.remove_prefix(end + 1);
  }
  return lines;
}

Status follow_log(const std::string& path, const std::function<void(const LogLine&)>& on_line,
                  const std::function<bool()>& finished) {
  int fd = -1;
  std::string held;  // bytes after the last newline read so far
  int line_number = 0;
  Status status;
  char buffer[1 << 16];
  for (;;) {
    // Asked before reading: whatever was written before it said "finished" is read below.
    const bool done = finished();
    if (fd < 0) {
      fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0 && errno != ENOENT) return base::io_error(path + ": cannot open the log: " + std::strerror(errno));
      if (fd < 0 && done) return base::not_found(path + ": no such file");
    }
    while (fd >= 0) {
      ssize_t n = ::read(fd, buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = base::io_error(path + ": cannot read the log: " + std::strerror(errno));
        break;
      }
      if (n == 0) break;
      held.append(buffer, static_cast<size_t>(n));
      size_t start = 0;
      for (size_t end = held.find('\n'); end != std::string::npos; end = held.find('\n', start)) {
        auto line = parse_numbered(path, ++line_number, std::string_view(held).substr(start, end - start));
        if (!line.is_ok()) {
          status = line.status();
          break;
        }
        on_line(*line);
        start = end + 1;
      }
      held.erase(0, start);
      if (!status.is_ok()) break;
    }
    if (status.is_ok() && done && !held.empty()) {
      auto line = parse_numbered(path, ++line_number, held);
      if (line.is_ok()) on_line(*line);
      status = line.status();
    }
    if (!status.is_ok() || done) break;
    std::this_thread::sleep_for(kFollowInterval);
  }
  if (fd >= 0) ::close(fd);
  return status;
}

}  // namespace sdstack::flow
