// Run logs: a job's output and sdstack's own messages, one timestamped line each, appended to the
// run's log file as they happen and read back or followed live by `sdstack logs [-f]`.
//
// The format, one line per output line (UTC, microseconds):
//   2026-11-25T10:00:00.123456Z out text the job wrote to stdout
//   2026-11-25T10:00:00.123501Z err text the job wrote to stderr
//   2026-11-25T10:00:01.000000Z sys sdstack: artifacts saved
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace sdstack::flow {

enum class LogStream { kOut, kErr, kSys };

// "out", "err", "sys".
std::string_view log_stream_name(LogStream stream);

struct LogLine {
  int64_t time_us = 0;  // microseconds since the Unix epoch, UTC
  LogStream stream = LogStream::kOut;
  std::string text;  // never holds '\n' or '\r'
};

// The longest line text written; a longer line is cut into pieces of this size (at a UTF-8
// character boundary), each a line of its own.
constexpr size_t kMaxLogLineBytes = 64 * 1024;

// Appends lines to one log file. Each complete line is in the file when write() returns: lines are
// written with write(2) on an O_APPEND descriptor, never buffered across calls, so a crash or kill
// of the writing process loses nothing it was given except a held partial line, and several
// writers (processes or LogWriters) on one file interleave whole lines only.
// Thread-safe: calls are serialized. Not async-signal-safe.
class LogWriter {
 public:
  // Opens `path` for appending (O_APPEND|O_CREAT|O_CLOEXEC, mode 0644), creating it if needed.
  // The caller owns the writer.
  static base::Result<std::unique_ptr<LogWriter>> open(const std::string& path);
  // Writes any held partial lines (errors ignored) and closes the file.
  ~LogWriter();
  LogWriter(const LogWriter&) = delete;
  LogWriter& operator=(const LogWriter&) = delete;

  // From now on every occurrence of each value (empty ones are ignored) in a line's text is written
  // as "***"; longer values are masked first. Call it before any write: a secret is only caught
  // inside one line (not across a line break or a 64 KiB cut).
  void set_secrets(std::vector<std::string> values);

  // Appends `bytes` read from `stream` (kOut or kErr; kSys works alike). Every line completed by
  // them is written at once, timestamped now; an unfinished line is held per stream until its end
  // arrives, until it grows past kMaxLogLineBytes (the first kMaxLogLineBytes go out as a line) or
  // until flush().
  // "\n" and "\r\n" end a line; a lone "\r" (progress bars redrawing) also ends one, except that an
  // empty line ended by a lone "\r" is dropped. An error names the file and the OS reason.
  base::Status write(LogStream stream, std::string_view bytes);

  // Writes the held partial lines as lines.
  base::Status flush();

  // Writes one sys line "sdstack: <message>" at once (the prefix is added here; line breaks in
  // `message` become spaces). Secrets are masked here too.
  base::Status sys(std::string_view message);

  // Appends complete lines already in the log's format (a remote run's log, read back from its
  // host) as they are, in one write.
  base::Status append_lines(std::string_view lines);

  const std::string& path() const { return path_; }

 private:
  // One stream's unfinished line.
  struct PendingLine {
    std::string text;
    bool skip_newline = false;  // a '\r' just ended a line: a '\n' right after it belongs to it
    bool held_cr = false;       // a '\r' ended the bytes with nothing before it: '\n' next is an empty line
  };

  LogWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  // Appends `text` as lines to `out`: masked, then cut at kMaxLogLineBytes; `prefix` is the
  // formatted timestamp and stream name with its trailing space.
  void append_line(std::string_view prefix, std::string_view text, std::string* out) const;
  // Moves the first kMaxLogLineBytes of a held line that has grown past them into `out`.
  void cut_held_line(std::string_view prefix, PendingLine* pending, std::string* out) const;
  base::Status write_all(const std::string& bytes);
  base::Status flush_locked();

  std::string path_;
  int fd_;
  std::mutex mutex_;
  std::vector<std::string> secrets_;  // longest first
  PendingLine pending_[3];            // by LogStream
};

// Now, in microseconds since the Unix epoch.
int64_t now_us();

// "2026-11-25T10:00:00.123456Z out text" (no newline).
std::string format_log_line(const LogLine& line);

// The inverse of format_log_line. A line with empty text may lack the space after its stream name
// (an editor stripped it). The error quotes the line and shows the expected form.
base::Result<LogLine> parse_log_line(std::string_view text);

// All the lines of a log file. NotFound naming the file when it doesn't exist; DataLoss naming
// "file:line" for a line that doesn't parse. A last line without its newline (being written right
// now) is included when it parses and left out when it doesn't.
base::Result<std::vector<LogLine>> read_log(const std::string& path);

// Calls on_line for each line of the file from the start, then keeps reading lines as they are
// appended (checking every 50 ms) until `finished()` returns true, after which it reads what is
// left and returns; so every line written before `finished()` first returned true is delivered.
// `finished` is called only between checks, on the calling thread, as is on_line. A partial last
// line is delivered once its newline arrives, or at the end. A file that doesn't exist yet is
// waited for (its writer may not have created it); NotFound if it still doesn't when finished.
// A line that doesn't parse ends the follow with DataLoss naming "file:line".
base::Status follow_log(const std::string& path, const std::function<void(const LogLine&)>& on_line,
                        const std::function<bool()>& finished);

}  // namespace sdstack::flow
