// Helpers shared by the tests: golden data, random tensors, comparisons, temp dirs, running sdstack.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tensor/tensor.h"

namespace sdstack::testing {

// ../shared/golden (set at configure time; SDSTACK_GOLDEN_DIR in the environment overrides).
std::string golden_dir();
// True when the golden data is present; tests that need it GTEST_SKIP() otherwise.
bool have_golden();

// Ends a test that needs bf16 compute where the backend refused it (`why`): skipped on a CPU with
// neither AVX512-BF16 nor AMX, failed on one with AVX512-BF16 (whose backend must not refuse).
#define SD_SKIP_WITHOUT_NATIVE_BF16(why)                                                             \
  do {                                                                                               \
    ASSERT_FALSE(__builtin_cpu_supports("avx512bf16")) << "this CPU has AVX512-BF16, yet " << (why); \
    GTEST_SKIP() << "no bf16 compute on this CPU: " << (why);                                        \
  } while (0)

// The parsed JSON file at `path` (a failed test assertion, and null, when it cannot be read).
nlohmann::json read_json(const std::string& path);
// The .npy file at `path` as an f32 tensor (a failed test assertion, and an undefined tensor, when
// it cannot be read).
tensor::Tensor read_npy_checked(const std::string& path);

// A tensor of f32 values uniform in [lo, hi), reproducible from `seed`.
tensor::Tensor random_tensor(const tensor::Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f);

// max |a - b| over all elements; the shapes must match (checked by the caller).
float max_abs_diff(const tensor::Tensor& a, const tensor::Tensor& b);
// max |a - b| / (|b| + 1): a relative error that stays finite near zero.
float max_rel_diff(const tensor::Tensor& a, const tensor::Tensor& b);

// A fresh empty directory under $TMPDIR, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs the built sdstack binary with `args` (each passed as one argument, no shell).
CommandResult run_sdstack(const std::vector<std::string>& args);

// Runs `git ARGS` in `dir` with a fixed identity and branch name, failing the test on an error.
void git(const std::string& dir, std::vector<std::string> args);

// Writes `contents` to `path`, creating its parent folders.
void write_text_file(const std::string& path, const std::string& contents);

}  // namespace sdstack::testing
