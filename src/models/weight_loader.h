// Building blocks shared by the models: prepared layers looked up by checkpoint name.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "io/weights.h"

namespace sdstack::models {

using backend::Backend;
using tensor::Shape;
using tensor::Tensor;

// Scale and shift of a group or layer norm, as f32.
struct NormWeights {
  Tensor gamma;  // [C]
  Tensor beta;   // [C]
};

// Looks weights up in one component's WeightSource (its files, or random weights), checks their
// shapes and prepares them for one backend. Errors name the tensor (and file) that is missing or
// misshapen. The backend must outlive the layers it makes.
//
// Every method but raw() hands a tensor to the backend (or copies it) and then releases it from
// the source (WeightSource::release), so that loading a component from a mapped fp16 file never
// holds the file's pages and their converted copies at once: the peak is the prepared weights.
class WeightLoader {
 public:
  WeightLoader(const io::WeightSource& weights, Backend& backend) : weights_(weights), backend_(backend) {}

  // `prefix.weight` [out, in] and, when `bias`, `prefix.bias` [out].
  base::Result<std::unique_ptr<backend::Linear>> linear(const std::string& prefix, int64_t in, int64_t out,
                                                        bool bias = true);
  // `prefix.weight` [out, in, k, k] and `prefix.bias` [out].
  base::Result<std::unique_ptr<backend::Conv2d>> conv2d(const std::string& prefix, int64_t in, int64_t out,
                                                        int64_t kernel, const backend::Conv2dParams& params);
  // `prefix.weight` and `prefix.bias`, both [channels].
  base::Result<NormWeights> norm(const std::string& prefix, int64_t channels);
  // Any tensor, converted to a contiguous f32 copy.
  base::Result<Tensor> f32(const std::string& name, const Shape& shape);
  // Any tensor as stored (for a WeightSet, a view into the mapped file); not released.
  base::Result<Tensor> raw(const std::string& name, const Shape& shape);
  // A linear layer from tensors the caller looked up (`prefix.weight`, `prefix.bias` or an
  // undefined bias) in a shape the checkpoint stores differently (a 1x1 conv's [out, in, 1, 1]
  // reshaped to [out, in]); both are released once the backend has prepared them.
  std::unique_ptr<backend::Linear> prepared_linear(const std::string& prefix, const Tensor& weight, const Tensor& bias);

  Backend& backend() { return backend_; }

 private:
  const io::WeightSource& weights_;
  Backend& backend_;
};

}  // namespace sdstack::models
