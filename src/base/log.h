// Logging to stderr: levels, and a quiet mode for CI and logs.
#pragma once

#include <sstream>
#include <string>

namespace sdstack::base {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Messages below this level are dropped. Default kInfo; SDSTACK_LOG=debug|info|warning|error overrides.
void set_log_level(LogLevel level);
LogLevel log_level();

// Writes "sdstack: <level>: message" (level omitted for info) to stderr. Thread-safe.
void log(LogLevel level, const std::string& message);

// True when stderr is a terminal (progress bars are drawn only then).
bool stderr_is_terminal();

}  // namespace sdstack::base

#define SD_LOG(level, expr)                                                   \
  do {                                                                        \
    if (::sdstack::base::LogLevel::level >= ::sdstack::base::log_level()) {   \
      std::ostringstream sd_log_stream_;                                      \
      sd_log_stream_ << expr;                                                 \
      ::sdstack::base::log(::sdstack::base::LogLevel::level, sd_log_stream_.str()); \
    }                                                                         \
  } while (0)
