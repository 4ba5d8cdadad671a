// Status and Result<T>: expected failures as values, each carrying one message for the user.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace sdstack::base {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad flag, bad prompt, bad shape asked for
  kNotFound,         // missing file, tensor, key
  kDataLoss,         // truncated or corrupt file
  kUnsupported,      // a format or feature sdstack refuses (pickle files, unknown dtypes)
  kIoError,          // the OS said no
  kInternal,
};

// A Status is either OK or an error with a code and a message. The message is
// complete on its own: it names the file/line/key/tensor and, where one exists, a hint.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }
  bool is_ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Returns a copy whose message is "context: message" (for adding the file name, say).
  Status with_context(const std::string& context) const {
    if (is_ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return Status(StatusCode::kInvalidArgument, std::move(m)); }
inline Status not_found(std::string m) { return Status(StatusCode::kNotFound, std::move(m)); }
inline Status data_loss(std::string m) { return Status(StatusCode::kDataLoss, std::move(m)); }
inline Status unsupported(std::string m) { return Status(StatusCode::kUnsupported, std::move(m)); }
inline Status io_error(std::string m) { return Status(StatusCode::kIoError, std::move(m)); }
inline Status internal_error(std::string m) { return Status(StatusCode::kInternal, std::move(m)); }

// Result<T> holds a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) { assert(!status_.is_ok()); }  // NOLINT

  bool is_ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  T& value() & { assert(is_ok()); return *value_; }
  const T& value() const& { assert(is_ok()); return *value_; }
  T&& value() && { assert(is_ok()); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace sdstack::base

// Propagate a non-OK Status from an expression returning Status.
#define SD_RETURN_IF_ERROR(expr)                 \
  do {                                           \
    ::sdstack::base::Status sd_status_ = (expr); \
    if (!sd_status_.is_ok()) return sd_status_;  \
  } while (0)

#define SD_CONCAT_INNER(a, b) a##b
#define SD_CONCAT(a, b) SD_CONCAT_INNER(a, b)

// `SD_ASSIGN_OR_RETURN(auto x, make_x());` declares x from a Result or returns its Status.
#define SD_ASSIGN_OR_RETURN(lhs, expr) SD_ASSIGN_OR_RETURN_IMPL(SD_CONCAT(sd_result_, __LINE__), lhs, expr)
#define SD_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.is_ok()) return tmp.status();         \
  lhs = std::move(tmp).value()
