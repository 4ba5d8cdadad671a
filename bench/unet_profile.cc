// Where one UNet forward's (or VAE decode's) time goes, per op kind and per shape: SD 1.5's UNet or
// VAE decoder (random weights, or a model folder's) on the CPU backend behind a backend that times every op it
// forwards. Each op ends with oneDNN's stream wait or an OpenMP barrier, so the time around a call is that op's. The
// time is the process's CPU time: on a machine shared with other work, with one thread, it counts what the op computes
// and not the time slices others took (wall time would, and with several threads so would the spinning at barriers
// while a thread waits for its turn). Usage: unet_profile [unet|vae] [f32|bf16] [size] [runs] [threads] [model folder];
// prints the last run's table (after a warm-up). The model defaults to unet (`unet_profile bf16 512 1 1` still works);
// size is the image's (the UNet runs batch 2 on size/8 latents, the VAE decodes batch 1 size/8 latents); threads
// defaults to 1 (see above). In bf16, "bf16 src conversion" is the f32 -> bf16 rounding that convolutions and linears
// do on their input, timed beside them on the same sizes; the conv and linear rows still include it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/cpu_internal.h"
#include "io/model_folder.h"
#include "models/presets.h"
#include "models/random_weights.h"
#include "models/unet.h"
#include "models/vae.h"

using namespace sdstack;
using namespace sdstack::backend;

namespace {

double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

struct Stat {
  double seconds = 0;
  double wall_seconds = 0;
  double flops = 0;
  int64_t calls = 0;
};

// Time per (kind, shape), and per kind.
class Profile {
 public:
  template <typename Run>
  void time(const std::string& kind, const std::string& shape, double flops, Run run) {
    const double start = cpu_seconds();
    const auto wall_start = std::chrono::steady_clock::now();
    run();
    const double s = cpu_seconds() - start;
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
    for (Stat* stat : {&by_kind_[kind], &by_shape_[kind + " " + shape]}) {
      stat->seconds += s;
      stat->wall_seconds += wall;
      stat->flops += flops;
      ++stat->calls;
    }
  }
  void clear() {
    by_kind_.clear();
    by_shape_.clear();
  }
  void print(double total_s) const {
    std::printf("%-60s %8s %6s %5s %9s %8s\n", "op kind (CPU time)", "ms", "%", "calls", "GFLOP/s", "wall ms");
    print_sorted(by_kind_, total_s, 100);
    std::printf("\ntop shapes\n");
    print_sorted(by_shape_, total_s, 30);
  }

 private:
  static void print_sorted(const std::map<std::string, Stat>& stats, double total_s, size_t limit) {
    std::vector<std::pair<std::string, Stat>> rows(stats.begin(), stats.end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    for (size_t i = 0; i < rows.size() && i < limit; ++i) {
      const Stat& s = rows[i].second;
      std::printf("%-60s %8.1f %5.1f%% %5lld %9.1f %8.1f\n", rows[i].first.c_str(), s.seconds * 1e3,
                  100.0 * s.seconds / total_s, static_cast<long long>(s.calls),
                  s.flops > 0 ? s.flops / s.seconds / 1e9 : 0.0, s.wall_seconds * 1e3);
    }
  }
  std::map<std::string, Stat> by_kind_, by_shape_;
};

std::string dims(const Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.rank(); ++i) {
    if (i > 0) s += ",";
    s += std::to_string(t.dim(i));
  }
  s += "]";
  return s;
}

// The bf16 rounding a convolution or linear does on an f32 input, timed on its own.
void time_src_conversion(Profile& profile, bool bf16, const Tensor& x) {
  if (!bf16 || x.dtype() != DType::kF32) return;
  static std::vector<uint16_t> copy;
  if (copy.size() < static_cast<size_t>(x.numel())) copy.resize(static_cast<size_t>(x.numel()));
  profile.time("bf16 src conversion", "", 0, [&] { cpu::convert_to_bf16(x.data<float>(), copy.data(), x.numel()); });
}

class TimedConv2d final : public Conv2d {
 public:
  TimedConv2d(std::unique_ptr<Conv2d> inner, Profile& profile, bool bf16)
      : inner_(std::move(inner)), profile_(profile), bf16_(bf16) {}
  void run(const Tensor& x, Tensor& y, const Conv2dExtras& extras) override {
    time_src_conversion(profile_, bf16_, x);
    profile_.time("conv", label("", x, y) + (extras.residual.defined() ? " +res" : ""), flops(y),
                  [&] { inner_->run(x, y, extras); });
  }
  // Counted as the architecture's conv on the upsampled input, as the bench counts it.
  void run_upsampled2x(const Tensor& x, Tensor& y, Tensor& scratch) override {
    profile_.time("conv", label("up2x ", x, y), flops(y), [&] { inner_->run_upsampled2x(x, y, scratch); });
  }
  int64_t in_channels() const override { return inner_->in_channels(); }
  int64_t out_channels() const override { return inner_->out_channels(); }
  int64_t kernel_size() const override { return inner_->kernel_size(); }
  const Conv2dParams& params() const override { return inner_->params(); }

 private:
  double flops(const Tensor& y) const {
    const int64_t k = inner_->kernel_size();
    return 2.0 * static_cast<double>(y.numel()) * static_cast<double>(inner_->in_channels() * k * k);
  }
  std::string label(const char* kind, const Tensor& x, const Tensor& y) const {
    const std::string k = std::to_string(inner_->kernel_size());
    return k + "x" + k + " " + kind + dims(x) + "->" + dims(y);
  }

  std::unique_ptr<Conv2d> inner_;
  Profile& profile_;
  bool bf16_;
};

class TimedLinear final : public Linear {
 public:
  TimedLinear(std::unique_ptr<Linear> inner, Profile& profile, bool bf16)
      : inner_(std::move(inner)), profile_(profile), bf16_(bf16) {}
  void run(const Tensor& x, Tensor& y, const LinearExtras& extras) override {
    const double flops = 2.0 * static_cast<double>(y.numel()) * static_cast<double>(inner_->in_features());
    const std::string shape = dims(x) + "->" + dims(y) + (extras.residual.defined() ? " +res" : "") +
                              (extras.activation != Activation::kNone ? " +act" : "");
    time_src_conversion(profile_, bf16_, x);
    profile_.time("linear", shape, flops, [&] { inner_->run(x, y, extras); });
  }
  int64_t in_features() const override { return inner_->in_features(); }
  int64_t out_features() const override { return inner_->out_features(); }

 private:
  std::unique_ptr<Linear> inner_;
  Profile& profile_;
  bool bf16_;
};

class TimedBackend final : public Backend {
 public:
  TimedBackend(std::unique_ptr<Backend> inner, bool bf16) : inner_(std::move(inner)), bf16_(bf16) {}
  Profile& profile() { return profile_; }

  std::string name() const override { return inner_->name(); }
  DType operand_dtype() const override { return inner_->operand_dtype(); }
  std::unique_ptr<Conv2d> make_conv2d(const Tensor& weight, const Tensor& bias, const Conv2dParams& params) override {
    return std::make_unique<TimedConv2d>(inner_->make_conv2d(weight, bias, params), profile_, bf16_);
  }
  std::unique_ptr<Linear> make_linear(const Tensor& weight, const Tensor& bias) override {
    return std::make_unique<TimedLinear>(inner_->make_linear(weight, bias), profile_, bf16_);
  }
  void matmul(const Tensor& a, const Tensor& b, Tensor& y, bool transpose_b, float alpha) override {
    profile_.time("matmul", dims(a), 2.0 * static_cast<double>(y.numel()) * static_cast<double>(a.dim(-1)),
                  [&] { inner_->matmul(a, b, y, transpose_b, alpha); });
  }
  void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups, float eps,
                  Activation activation, Tensor& y) override {
    profile_.time(activation == Activation::kNone ? "group norm" : "group norm + SiLU", dims(x), 0,
                  [&] { inner_->group_norm(x, gamma, beta, groups, eps, activation, y); });
  }
  void layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, Tensor& y) override {
    profile_.time("layer norm", dims(x), 0, [&] { inner_->layer_norm(x, gamma, beta, eps, y); });
  }
  void softmax(const Tensor& x, Tensor& y) override {
    profile_.time("softmax", dims(x), 0, [&] { inner_->softmax(x, y); });
  }
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, bool causal, Tensor& y) override {
    const double flops = 4.0 * static_cast<double>(q.numel()) * static_cast<double>(k.dim(1));
    profile_.time("attention", dims(q) + "x" + dims(k) + " h" + std::to_string(heads), flops,
                  [&] { inner_->attention(q, k, v, heads, causal, y); });
  }
  void activation(const Tensor& x, Activation activation, Tensor& y) override {
    profile_.time("elementwise", "activation " + dims(x), 0, [&] { inner_->activation(x, activation, y); });
  }
  void geglu(const Tensor& x, Tensor& y) override {
    profile_.time("geglu", dims(x), 0, [&] { inner_->geglu(x, y); });
  }
  void add(const Tensor& a, const Tensor& b, Tensor& y) override {
    profile_.time("elementwise", "add " + dims(a), 0, [&] { inner_->add(a, b, y); });
  }
  void mul(const Tensor& a, const Tensor& b, Tensor& y) override {
    profile_.time("elementwise", "mul " + dims(a), 0, [&] { inner_->mul(a, b, y); });
  }
  void scale(const Tensor& x, float s, Tensor& y) override {
    profile_.time("elementwise", "scale " + dims(x), 0, [&] { inner_->scale(x, s, y); });
  }
  void upsample_nearest2x(const Tensor& x, Tensor& y) override {
    profile_.time("upsample", dims(x), 0, [&] { inner_->upsample_nearest2x(x, y); });
  }
  void concat_last(const Tensor& a, const Tensor& b, Tensor& y) override {
    profile_.time("concat", dims(a) + "+" + dims(b), 0, [&] { inner_->concat_last(a, b, y); });
  }

 private:
  std::unique_ptr<Backend> inner_;
  bool bf16_;
  Profile profile_;
};

// The model to profile, built on `backend`, and one forward of it on fixed inputs.
struct Workload {
  std::string label;
  std::function<base::Status()> forward;
  std::shared_ptr<void> model;  // keeps the model alive
};

base::Result<Workload> unet_workload(Backend& backend, int64_t size, const char* folder_dir) {
  auto preset = models::model_preset("sd15");
  SD_ASSIGN_OR_RETURN(auto config, models::UNet2DConditionConfig::from_json(preset.value().unet, "unet/config.json"));
  models::RandomWeightSource weights;
  std::unique_ptr<models::UNet2DConditionModel> model;
  if (folder_dir != nullptr) {
    SD_ASSIGN_OR_RETURN(io::ModelFolder folder, io::ModelFolder::open(folder_dir));
    SD_ASSIGN_OR_RETURN(model, models::UNet2DConditionModel::load(folder, backend));
  } else {
    SD_ASSIGN_OR_RETURN(model, models::UNet2DConditionModel::create(config, weights, backend));
  }
  const models::UNet2DConditionConfig& loaded = model->config();  // the folder's, or the preset's
  const int64_t latent = size / 8;
  Tensor sample = Tensor::empty({2, latent, latent, loaded.in_channels});
  sample.fill(0.5f);
  const Tensor text =
      Tensor::zeros({2, 77, loaded.cross_attention_dim.empty() ? 768 : loaded.cross_attention_dim.front()});
  std::shared_ptr<models::UNet2DConditionModel> shared(std::move(model));
  return Workload{"UNet, batch 2", [shared, sample, text] { return shared->forward(sample, 999.0f, text).status(); },
                  shared};
}

// The decoder as `sdstack bench` builds and runs it.
base::Result<Workload> vae_workload(Backend& backend, int64_t size, const char* folder_dir) {
  auto preset = models::model_preset("sd15");
  SD_ASSIGN_OR_RETURN(auto config, models::AutoencoderKLConfig::from_json(preset.value().vae, "vae/config.json"));
  models::RandomWeightSource weights;
  std::unique_ptr<models::AutoencoderKL> model;
  if (folder_dir != nullptr) {
    SD_ASSIGN_OR_RETURN(io::ModelFolder folder, io::ModelFolder::open(folder_dir));
    SD_ASSIGN_OR_RETURN(model,
                        models::AutoencoderKL::load(folder, backend, "", models::AutoencoderKL::Parts::kDecoderOnly));
  } else {
    SD_ASSIGN_OR_RETURN(
        model, models::AutoencoderKL::create(config, weights, backend, models::AutoencoderKL::Parts::kDecoderOnly));
  }
  const int64_t latent = size / 8;
  Tensor latents = Tensor::empty({1, latent, latent, model->config().latent_channels});
  latents.fill(0.5f);
  std::shared_ptr<models::AutoencoderKL> shared(std::move(model));
  return Workload{"VAE decode, batch 1", [shared, latents] { return shared->decode(latents).status(); }, shared};
}

}  // namespace

int main(int argc, char** argv) {
  int arg = 1;
  std::string model_name = "unet";
  if (argc > arg && (std::strcmp(argv[arg], "unet") == 0 || std::strcmp(argv[arg], "vae") == 0))
    model_name = argv[arg++];
  const bool bf16 = argc > arg && std::strcmp(argv[arg], "bf16") == 0;
  ++arg;
  const int64_t size = argc > arg ? std::atoll(argv[arg]) : 512;
  ++arg;
  const int runs = argc > arg ? std::atoi(argv[arg]) : 1;
  ++arg;
  const int threads = argc > arg ? std::atoi(argv[arg]) : 1;
  auto made = make_backend("cpu", BackendOptions{threads, bf16 ? DType::kBF16 : DType::kF32});
  if (!made.is_ok()) {
    std::fprintf(stderr, "unet_profile: %s\n", made.status().message().c_str());
    return 1;
  }
  TimedBackend backend(std::move(made).value(), bf16);
  ++arg;
  const char* folder = argc > arg ? argv[arg] : nullptr;  // a diffusers folder, else random weights
  auto workload = model_name == "vae" ? vae_workload(backend, size, folder) : unet_workload(backend, size, folder);
  if (!workload.is_ok()) {
    std::fprintf(stderr, "unet_profile: %s\n", workload.status().message().c_str());
    return 1;
  }
  double total_s = 0;
  for (int run = 0; run <= runs; ++run) {  // run 0 warms up: primitives, weight layouts, scratch
    backend.profile().clear();
    const auto start = std::chrono::steady_clock::now();
    const double cpu_start = cpu_seconds();
    const base::Status status = workload.value().forward();
    total_s = cpu_seconds() - cpu_start;
    const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!status.is_ok()) {
      std::fprintf(stderr, "unet_profile: %s\n", status.message().c_str());
      return 1;
    }
    std::printf("run %d: %.3f s CPU, %.3f s wall\n", run, total_s, wall_s);
  }
  std::printf("%s %s, %lldx%lld, %d threads: %.3f s CPU (last run)\n", workload.value().label.c_str(),
              bf16 ? "bf16" : "f32", static_cast<long long>(size), static_cast<long long>(size), num_threads(),
              total_s);
  backend.profile().print(total_s);
  return 0;
}
