// Building blocks shared by the models: prepared layers looked up by checkpoint name.
#include "models/weight_loader.h"

namespace sdstack::models {

base::Result<std::unique_ptr<backend::Linear>> WeightLoader::linear(const std::string& prefix, int64_t in,
                                                                    int64_t out, bool bias) {
  SD_ASSIGN_OR_RETURN(Tensor weight, weights_.get(prefix + ".weight", {out, in}));
  Tensor bias_tensor;
  if (bias) {
    SD_ASSIGN_OR_RETURN(bias_tensor, weights_.get(prefix + ".bias", {out}));
  }
  return prepared_linear(prefix, weight, bias_tensor);
}

std::unique_ptr<backend::Linear> WeightLoader::prepared_linear(const std::string& prefix, const Tensor& weight,
                                                               const Tensor& bias) {
  std::unique_ptr<backend::Linear> layer = backend_.make_linear(weight, bias);
  weights_.release(prefix + ".weight");
  if (bias.defined()) weights_.release(prefix + ".bias");
  return layer;
}

base::Result<std::unique_ptr<backend::Conv2d>> WeightLoader::conv2d(const std::string& prefix, int64_t in,
                                                                    int64_t out, int64_t kernel,
                                                                    const backend::Conv2dParams& params) {
  SD_ASSIGN_OR_RETURN(Tensor weight, weights_.get(prefix + ".weight", {out, in, kernel, kernel}));
  SD_ASSIGN_OR_RETURN(Tensor bias, weights_.get(prefix + ".bias", {out}));
  std::unique_ptr<backend::Conv2d> layer = backend_.make_conv2d(weight, bias, params);
  weights_.release(prefix + ".weight");
  weights_.release(prefix + ".bias");
  return layer;
}

base::Result<NormWeights> WeightLoader::norm(const std::string& prefix, int64_t channels) {
  NormWeights norm;
  SD_ASSIGN_OR_RETURN(norm.gamma, f32(prefix + ".weight", {channels}));
  SD_ASSIGN_OR_RETURN(norm.beta, f32(prefix + ".bias", {channels}));
  return norm;
}

base::Result<Tensor> WeightLoader::f32(const std::string& name, const Shape& shape) {
  SD_ASSIGN_OR_RETURN(Tensor stored, weights_.get(name, shape));
  Tensor copy = stored.to(tensor::DType::kF32);  // always a copy, so the stored pages can go
  weights_.release(name);
  return copy;
}

base::Result<Tensor> WeightLoader::raw(const std::string& name, const Shape& shape) {
  return weights_.get(name, shape);
}

}  // namespace sdstack::models
