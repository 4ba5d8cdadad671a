// Shared by the CPU backend tests: the cpu and reference backends, made once per test binary.
#pragma once

#include <memory>

#include <gtest/gtest.h>

#include "backend/backend.h"

namespace sdstack::backend::testing {

inline Backend& cpu_backend() {
  static std::unique_ptr<Backend> backend = std::move(make_backend("cpu").value());
  return *backend;
}

inline Backend& reference_backend() {
  static std::unique_ptr<Backend> backend = std::move(make_backend("reference").value());
  return *backend;
}

}  // namespace sdstack::backend::testing
