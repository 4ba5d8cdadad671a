// Random weights: PyTorch-like initialisation from a counter-based generator keyed by tensor name.
#include "models/random_weights.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numbers>

#include "base/strings.h"

namespace sdstack::models {
namespace {

// splitmix64's finaliser: a bijective mix with good avalanche, enough for weights (not crypto).
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t fnv1a64(const std::string& text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (char c : text) {
    hash ^= static_cast<uint8_t>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

// The i-th draw of stream `key`. Counter-based (draw i needs no draw before it), so a tensor's
// values depend on nothing but its key, and filling can run in parallel.
uint64_t draw(uint64_t key, uint64_t i) { return mix64(key + (i + 1) * 0x9e3779b97f4a7c15ull); }

// Uniform in [0, 1) with 24 random bits (every value exactly representable as a float).
float uniform01(uint64_t key, uint64_t i) { return static_cast<float>(draw(key, i) >> 40) * 0x1p-24f; }

// Standard normal by Box-Muller from draws 2i and 2i+1; u1 in (0, 1] keeps the log finite.
float standard_normal(uint64_t key, uint64_t i) {
  const double u1 = (static_cast<double>(draw(key, 2 * i) >> 11) + 1.0) * 0x1p-53;
  const double u2 = static_cast<double>(draw(key, 2 * i + 1) >> 11) * 0x1p-53;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
}

// "a.b.norm1.weight" -> "norm1"; "" for a name without a module.
std::string module_name(const std::string& name) {
  const size_t last = name.find_last_of('.');
  if (last == std::string::npos || last == 0) return "";
  const size_t before = name.find_last_of('.', last - 1);
  return before == std::string::npos ? name.substr(0, last) : name.substr(before + 1, last - before - 1);
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// How one tensor is initialised, from its name and shape (see the class comment).
struct Init {
  enum class Kind { kConstant, kUniform, kNormal } kind;
  float value;  // the constant, the uniform bound or the normal's standard deviation
};

Init init_for(const std::string& name, const Shape& shape) {
  const std::string module = module_name(name);
  const bool is_weight = ends_with(name, ".weight"), is_bias = ends_with(name, ".bias");
  if (shape.size() == 1 && module.find("norm") != std::string::npos && (is_weight || is_bias)) {
    return {Init::Kind::kConstant, is_weight ? 1.0f : 0.0f};
  }
  if (ends_with(module, "embedding") && shape.size() == 2) return {Init::Kind::kNormal, 0.02f};
  if (is_weight && (shape.size() == 2 || shape.size() == 4)) {
    int64_t fan_in = 1;
    for (size_t d = 1; d < shape.size(); ++d) fan_in *= shape[d];
    return {Init::Kind::kUniform, 1.0f / std::sqrt(static_cast<float>(fan_in))};
  }
  if (is_bias && shape.size() == 1) return {Init::Kind::kUniform, 1.0f / std::sqrt(static_cast<float>(shape[0]))};
  return {Init::Kind::kUniform, 0.1f};  // nothing SD asks for; small and harmless
}

}  // namespace

RandomWeightSource::RandomWeightSource(const RandomWeightOptions& options) : options_(options) {}
RandomWeightSource::~RandomWeightSource() = default;

bool RandomWeightSource::contains(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return recorded_.count(name) != 0;
}

std::string RandomWeightSource::source() const { return "random weights (seed " + std::to_string(options_.seed) + ")"; }

base::Result<Tensor> RandomWeightSource::get(const std::string& name, const Shape& expected) const {
  for (int64_t dim : expected) {
    if (dim <= 0) {
      return base::invalid_argument(source() + ": tensor '" + name + "' asked for with shape " +
                                    base::shape_to_string(expected) + "; every dimension must be positive");
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = recorded_.find(name);
  if (it != recorded_.end()) {
    if (it->second.shape() != expected) {
      return base::invalid_argument(source() + ": tensor '" + name + "' was made with shape " +
                                    it->second.shape_string() + ", now asked for as " +
                                    base::shape_to_string(expected));
    }
    return it->second;
  }
  Tensor made = make(name, expected);
  recorded_.emplace(name, made);
  return made;
}

base::Result<Tensor> RandomWeightSource::get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = recorded_.find(name);
  if (it != recorded_.end()) return it->second;
  return base::not_found(source() + ": tensor '" + name +
                         "' has not been made yet and has no shape to make it with (ask with a shape)");
}

// Called with mutex_ held.
Tensor RandomWeightSource::make(const std::string& name, const Shape& shape) const {
  const int64_t count = tensor::shape_numel(shape);
  if (options_.shapes_only) {
    const size_t bytes = static_cast<size_t>(count) * tensor::dtype_size(options_.dtype);
    if (bytes > zeros_bytes_) {
      // calloc'd memory is mapped lazily: the pages nobody reads cost nothing. Views keep the
      // buffer they were made from alive when a larger one replaces it.
      zeros_ = std::shared_ptr<void>(std::calloc(bytes, 1), std::free);
      if (zeros_ == nullptr) {
        std::fprintf(stderr, "sdstack: out of memory for a %zu-byte zero buffer\n", bytes);
        std::abort();
      }
      zeros_bytes_ = bytes;
    }
    return Tensor::borrow(zeros_, zeros_.get(), shape, options_.dtype);
  }

  const Init init = init_for(name, shape);
  Tensor values = Tensor::empty(shape, DType::kF32);
  float* out = values.data<float>();
  if (init.kind == Init::Kind::kConstant) {
    values.fill(init.value);
  } else {
    // The stream key: the seed and the name, each mixed so that neighbouring seeds and similar
    // names give unrelated streams.
    const uint64_t key = mix64(options_.seed ^ 0x5d5eed5d5eed5d5eull) ^ mix64(fnv1a64(name));
    const bool uniform = init.kind == Init::Kind::kUniform;
    const float scale = init.value;
#pragma omp parallel for schedule(static) if (count > (1 << 16))
    for (int64_t i = 0; i < count; ++i) {
      const uint64_t index = static_cast<uint64_t>(i);
      out[i] = uniform ? (2.0f * uniform01(key, index) - 1.0f) * scale : standard_normal(key, index) * scale;
    }
  }
  return options_.dtype == DType::kF32 ? values : values.to(options_.dtype);
}

std::vector<std::pair<std::string, Tensor>> RandomWeightSource::recorded() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {recorded_.begin(), recorded_.end()};
}

std::vector<std::pair<std::string, Shape>> RandomWeightSource::recorded_shapes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::pair<std::string, Shape>> shapes;
  shapes.reserve(recorded_.size());
  for (const auto& [name, tensor] : recorded_) shapes.emplace_back(name, tensor.shape());
  return shapes;
}

int64_t RandomWeightSource::parameter_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int64_t total = 0;
  for (const auto& [name, tensor] : recorded_) total += tensor.numel();
  return total;
}

void RandomWeightSource::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  recorded_.clear();
  zeros_.reset();
  zeros_bytes_ = 0;
}

// ---- the load-only backend ----------------------------------------------------------------------

namespace {

[[noreturn]] void cannot_run(const char* what) {
  std::fprintf(stderr,
               "sdstack: internal error: the load-only backend cannot run %s (it builds models only to record "
               "their weights)\n",
               what);
  std::abort();
}

class LoadOnlyConv2d : public backend::Conv2d {
 public:
  LoadOnlyConv2d(const Shape& weight, const backend::Conv2dParams& params)
      : in_(weight[1]), out_(weight[0]), kernel_(weight[2]), params_(params) {}
  void run(const Tensor&, Tensor&, const backend::Conv2dExtras&) override { cannot_run("a convolution"); }
  void run_upsampled2x(const Tensor&, Tensor&, Tensor&) override { cannot_run("a convolution"); }
  int64_t in_channels() const override { return in_; }
  int64_t out_channels() const override { return out_; }
  int64_t kernel_size() const override { return kernel_; }
  const backend::Conv2dParams& params() const override { return params_; }

 private:
  int64_t in_, out_, kernel_;
  backend::Conv2dParams params_;
};

class LoadOnlyLinear : public backend::Linear {
 public:
  explicit LoadOnlyLinear(const Shape& weight) : in_(weight[1]), out_(weight[0]) {}
  void run(const Tensor&, Tensor&, const backend::LinearExtras&) override { cannot_run("a linear layer"); }
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }

 private:
  int64_t in_, out_;
};

class LoadOnlyBackend : public backend::Backend {
 public:
  std::string name() const override { return "load-only"; }
  std::unique_ptr<backend::Conv2d> make_conv2d(const Tensor& weight, const Tensor&,
                                               const backend::Conv2dParams& params) override {
    return std::make_unique<LoadOnlyConv2d>(weight.shape(), params);
  }
  std::unique_ptr<backend::Linear> make_linear(const Tensor& weight, const Tensor&) override {
    return std::make_unique<LoadOnlyLinear>(weight.shape());
  }
  void matmul(const Tensor&, const Tensor&, Tensor&, bool, float) override { cannot_run("matmul"); }
  void group_norm(const Tensor&, const Tensor&, const Tensor&, int64_t, float, backend::Activation, Tensor&) override {
    cannot_run("group_norm");
  }
  void layer_norm(const Tensor&, const Tensor&, const Tensor&, float, Tensor&) override { cannot_run("layer_norm"); }
  void softmax(const Tensor&, Tensor&) override { cannot_run("softmax"); }
  void attention(const Tensor&, const Tensor&, const Tensor&, int64_t, bool, Tensor&) override {
    cannot_run("attention");
  }
  void activation(const Tensor&, backend::Activation, Tensor&) override { cannot_run("an activation"); }
  void geglu(const Tensor&, Tensor&) override { cannot_run("geglu"); }
  void add(const Tensor&, const Tensor&, Tensor&) override { cannot_run("add"); }
  void mul(const Tensor&, const Tensor&, Tensor&) override { cannot_run("mul"); }
  void scale(const Tensor&, float, Tensor&) override { cannot_run("scale"); }
  void upsample_nearest2x(const Tensor&, Tensor&) override { cannot_run("upsample_nearest2x"); }
  void concat_last(const Tensor&, const Tensor&, Tensor&) override { cannot_run("concat_last"); }
};

}  // namespace

std::unique_ptr<backend::Backend> make_load_only_backend() { return std::make_unique<LoadOnlyBackend>(); }

}  // namespace sdstack::models
