// Logging to stderr.
#include "base/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace sdstack::base {
namespace {

LogLevel level_from_env() {
  const char* env = std::getenv("SDSTACK_LOG");
  if (env == nullptr) return LogLevel::kInfo;
  if (std::strcmp(env, "debug") == 0) return LogLevel::kDebug;
  if (std::strcmp(env, "warning") == 0) return LogLevel::kWarning;
  if (std::strcmp(env, "error") == 0) return LogLevel::kError;
  return LogLevel::kInfo;
}

std::atomic<LogLevel>& current_level() {
  static std::atomic<LogLevel> level{level_from_env()};
  return level;
}

}  // namespace

void set_log_level(LogLevel level) { current_level() = level; }
LogLevel log_level() { return current_level(); }

void log(LogLevel level, const std::string& message) {
  static std::mutex mutex;
  const char* prefix = "";
  switch (level) {
    case LogLevel::kDebug: prefix = "debug: "; break;
    case LogLevel::kInfo: break;
    case LogLevel::kWarning: prefix = "warning: "; break;
    case LogLevel::kError: prefix = "error: "; break;
  }
  std::lock_guard<std::mutex> lock(mutex);
  std::fprintf(stderr, "sdstack: %s%s\n", prefix, message.c_str());
}

bool stderr_is_terminal() { return isatty(STDERR_FILENO) == 1; }

}  // namespace sdstack::base
