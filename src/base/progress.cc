// A progress bar for long operations.
#include "base/progress.h"

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
  int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kWidth - filled), '.');
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  double remaining = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
  std::fprintf(out_, "\r%s [%s] %lld/%lld  %.1fs elapsed, %.1fs left  ", label_.c_str(), bar.c_str(),
               static_cast<long long>(done_), static_cast<long long>(total_), elapsed, remaining);
  std::fflush(out_);
}

}  // namespace sdstack::base
