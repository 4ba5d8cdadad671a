// A progress bar for long operations.
#include "base/progress.h"

#include <algorithm>
#include <cmath>

#include "base/log.h"

namespace sdstack::base {

ProgressBar::ProgressBar(std::string label, int64_t total, bool force, std::FILE* out)
    : label_(std::move(label)),
      total_(total),
      enabled_(force || stderr_is_terminal()),
      out_(out),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_ - std::chrono::seconds(1)) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(int64_t done) {
  done_ = done;
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (done_ < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  draw();
}

void ProgressBar::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  draw();
  std::fputc('\n', out_);
  std::fflush(out_);
}

void ProgressBar::draw() {
  constexpr int kWidth = 30;
  double fraction = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  fraction = std::min(1.0, std::max(0.0, fraction));
  int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kWidth - filled), '.');
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done_ - baseline_) / elapsed : 0.0;
  double remaining = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
  const std::string tail = detail_.empty() ? "" : "  " + detail_;
  if (unit_ == ProgressUnit::kBytes) {
    // "\x1b[K" clears what a longer previous line left behind.
    std::fprintf(out_, "\r%s [%s] %s/%s  %s/s  ETA %s%s\x1b[K", label_.c_str(), bar.c_str(),
                 format_bytes(done_).c_str(), format_bytes(total_).c_str(),
                 format_bytes(static_cast<int64_t>(rate)).c_str(), rate > 0 ? format_duration(remaining).c_str() : "-",
                 tail.c_str());
  } else {
    std::fprintf(out_, "\r%s [%s] %lld/%lld  %.1fs elapsed, %.1fs left%s  ", label_.c_str(), bar.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), elapsed, remaining, tail.c_str());
  }
  std::fflush(out_);
}

std::string format_bytes(int64_t bytes) {
  static const char* const kUnits[] = {"B", "kB", "MB", "GB", "TB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (std::fabs(value) >= 1000.0 && unit < 4) {
    value /= 1000.0;
    ++unit;
  }
  char text[32];
  if (unit == 0) {
    std::snprintf(text, sizeof text, "%lld B", static_cast<long long>(bytes));
  } else {
    std::snprintf(text, sizeof text, "%.1f %s", value, kUnits[unit]);
  }
  return text;
}

std::string format_duration(double seconds) {
  long long total = std::llround(std::max(0.0, seconds));
  long long hours = total / 3600, minutes = total / 60 % 60, secs = total % 60;
  char text[32];
  if (hours > 0) {
    std::snprintf(text, sizeof text, "%lld:%02lld:%02lld", hours, minutes, secs);
  } else {
    std::snprintf(text, sizeof text, "%lld:%02lld", minutes, secs);
  }
  return text;
}

}  // namespace sdstack::base
