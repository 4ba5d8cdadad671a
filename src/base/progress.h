// A progress bar for long operations (denoising steps, downloads): drawn on a terminal, silent
// otherwise (logs, CI), so output stays clean where nobody watches.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace sdstack::base {

// What the bar counts: plain units ("3/20") or bytes ("1.2/4.3 GB  56.7 MB/s  ETA 0:54").
enum class ProgressUnit { kCount, kBytes };

// Not thread-safe: update it from one thread.
class ProgressBar {
 public:
  // `total` units of work labelled `label` ("steps", say). Draws to stderr only when it is a
  // terminal, unless `force` is set (tests).
  ProgressBar(std::string label, int64_t total, bool force = false, std::FILE* out = stderr);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void set_unit(ProgressUnit unit) { unit_ = unit; }
  // Work that was already done before this run (a resumed download): it counts towards the bar
  // but not towards the speed and the ETA.
  void set_baseline(int64_t done) { baseline_ = done; }
  // Text shown after the numbers ("3/12 files").
  void set_detail(std::string detail) { detail_ = std::move(detail); }

  // Sets the work done so far and redraws (at most every 100 ms, and always at the end).
  void update(int64_t done);
  // Ends the bar's line (also done by the destructor).
  void finish();
  bool enabled() const { return enabled_; }

 private:
  void draw();

  std::string label_;
  int64_t total_;
  int64_t done_ = 0;
  int64_t baseline_ = 0;
  ProgressUnit unit_ = ProgressUnit::kCount;
  std::string detail_;
  bool enabled_;
  bool finished_ = false;
  std::FILE* out_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

// 1536 -> "1.5 kB", 4.3e9 -> "4.3 GB" (decimal units, as the Hub's pages show sizes).
std::string format_bytes(int64_t bytes);
// 75 -> "1:15", 3725 -> "1:02:05".
std::string format_duration(double seconds);

}  // namespace sdstack::base
