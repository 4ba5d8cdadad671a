// Helpers shared by the tests.
#include "testing/testing.h"

#include "base/subprocess.h"
#include "io/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

namespace sdstack::testing {

std::string golden_dir() {
  const char* env = std::getenv("SDSTACK_GOLDEN_DIR");
  return env != nullptr ? env : SDSTACK_GOLDEN_DIR;
}

bool have_golden() { return std::filesystem::exists(golden_dir() + "/manifest.json"); }

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path << ": cannot open";
  nlohmann::json json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(json.is_discarded()) << path << ": not valid JSON";
  return json.is_discarded() ? nlohmann::json() : json;
}

tensor::Tensor read_npy_checked(const std::string& path) {
  auto t = io::read_npy(path);
  EXPECT_TRUE(t.is_ok()) << t.status().message();
  return t.is_ok() ? *t : tensor::Tensor();
}

tensor::Tensor random_tensor(const tensor::Shape& shape, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(lo, hi);
  tensor::Tensor t = tensor::Tensor::empty(shape);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = uniform(rng);
  return t;
}

float max_abs_diff(const tensor::Tensor& a, const tensor::Tensor& b) {
  std::vector<float> va = a.to_vector(), vb = b.to_vector();
  float worst = 0.0f;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
    float d = std::fabs(va[i] - vb[i]);
    if (std::isnan(d)) return INFINITY;
    worst = std::max(worst, d);
  }
  return worst;
}

float max_rel_diff(const tensor::Tensor& a, const tensor::Tensor& b) {
  std::vector<float> va = a.to_vector(), vb = b.to_vector();
  float worst = 0.0f;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
    float d = std::fabs(va[i] - vb[i]) / (std::fabs(vb[i]) + 1.0f);
    if (std::isnan(d)) return INFINITY;
    worst = std::max(worst, d);
  }
  return worst;
}

TempDir::TempDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp != nullptr ? tmp : "/tmp") + "/sdstack-test-XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (mkdtemp(buffer.data()) == nullptr) std::abort();
  path_ = buffer.data();
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

CommandResult run_sdstack(const std::vector<std::string>& args) {
  TempDir capture;
  std::string out_path = capture.file("stdout"), err_path = capture.file("stderr");
  pid_t pid = fork();
  if (pid == 0) {
    int out_fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int null_fd = open("/dev/null", O_RDONLY);
    dup2(null_fd, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    std::vector<char*> argv;
    std::string binary = SDSTACK_BINARY;
    argv.push_back(binary.data());
    std::vector<std::string> copies = args;
    for (std::string& a : copies) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  CommandResult result;
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.out = slurp(out_path);
  result.err = slurp(err_path);
  return result;
}

void git(const std::string& dir, std::vector<std::string> args) {
  args.insert(args.begin(), {"git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"});
  auto output = base::run_process(args, dir);
  ASSERT_TRUE(output.is_ok()) << output.status().message();
  ASSERT_EQ(output->exit_code, 0) << output->err;
}

void write_text_file(const std::string& path, const std::string& contents) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  std::ofstream out(path, std::ios::binary);
  out << contents;
}

}  // namespace sdstack::testing
