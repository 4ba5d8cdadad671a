// Random weights for any model config: a WeightSource that makes up every tensor a model asks for.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "io/weights.h"

namespace sdstack::models {

using tensor::DType;
using tensor::Shape;
using tensor::Tensor;

struct RandomWeightOptions {
  uint64_t seed = 0;
  DType dtype = DType::kF16;  // what the tensors are stored as (real checkpoints: f16)
  // Record names and shapes only: every tensor is a read-only view of one shared zero buffer, so
  // building SD 1.5 this way costs no weight memory. Pair it with make_load_only_backend() (any
  // other backend copies the weights it is given).
  bool shapes_only = false;
};

// Answers every request of a model being built (Model::create(config, source, backend)) with a
// tensor of the requested shape, and records what it handed out so that it can be written as the
// model's checkpoint. The values depend only on the seed, the tensor's name and its shape, never
// on the order of requests, and are drawn like PyTorch's default initialisation so that
// activations stay in the range a trained model has:
//   - linear and conv weights (rank 2 or 4): uniform(-b, b), b = 1/sqrt(fan_in) (kaiming-uniform
//     with a = sqrt(5), what nn.Linear and nn.Conv2d do);
//   - biases: uniform(-b, b), b = 1/sqrt(out features). torch uses the weight's fan_in, but a bias
//     alone does not say it, and deriving it from the weight would make values depend on order;
//   - norm scales 1, norm shifts 0 (a module whose name contains "norm");
//   - embedding tables (a module named "*embedding", CLIP's token and position embeddings):
//     normal(0, 0.02), what transformers initialises CLIP with.
// Asking for one name with two shapes is an error. Thread-safe.
class RandomWeightSource : public io::WeightSource {
 public:
  explicit RandomWeightSource(const RandomWeightOptions& options = {});
  ~RandomWeightSource() override;

  // True for the tensors handed out so far. Models ask it only to choose between naming schemes
  // (the VAE's legacy query/key/value/proj_attn names), so a new source picks the names current
  // diffusers files use, and a source is consistent with the checkpoint it records.
  bool contains(const std::string& name) const override;
  // A new tensor (recorded), or the recorded one when the name was asked for before.
  base::Result<Tensor> get(const std::string& name, const Shape& expected) const override;
  // The recorded tensor; a name not asked for with a shape is an error (its shape is unknown).
  base::Result<Tensor> get(const std::string& name) const override;
  // "random weights (seed N)".
  std::string source() const override;

  // Every tensor handed out, sorted by name: ready for io::write_safetensors. (In shapes_only
  // mode the tensors are zero views.)
  std::vector<std::pair<std::string, Tensor>> recorded() const;
  std::vector<std::pair<std::string, Shape>> recorded_shapes() const;
  // Elements in all recorded tensors (the model's parameter count once it is built).
  int64_t parameter_count() const;
  // Forgets what was recorded (the memory goes once callers drop their views).
  void clear();

 private:
  Tensor make(const std::string& name, const Shape& shape) const;

  RandomWeightOptions options_;
  mutable std::mutex mutex_;
  mutable std::map<std::string, Tensor> recorded_;
  mutable std::shared_ptr<void> zeros_;  // shapes_only: the shared zero buffer, grown on demand
  mutable size_t zeros_bytes_ = 0;
};

// A backend for building a model only to see which weights it asks for: make_conv2d and
// make_linear keep the layer's dimensions and no weights, and every compute op (and running a
// layer) aborts with a message. It lets RandomWeightSource record a model's checkpoint without a
// second, f32 copy of every weight. Not thread-safe (like every backend).
std::unique_ptr<backend::Backend> make_load_only_backend();

}  // namespace sdstack::models
