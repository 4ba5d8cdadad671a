// A progress bar for long operations (denoising steps, downloads): drawn on a terminal, silent
// otherwise (logs, CI), so output stays clean where nobody watches.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace sdstack::base {

// Not thread-safe: update it from one thread.
class ProgressBar {
 public:
  // `total` units of work labelled `label` ("steps", say). Draws to stderr only when it is a
  // terminal, unless `force` is set (tests).
  ProgressBar(std::string label, int64_t total, bool force = false, std::FILE* out = stderr);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

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
  bool enabled_;
  bool finished_ = false;
  std::FILE* out_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace sdstack::base
