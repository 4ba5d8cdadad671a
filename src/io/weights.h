// A model component's weights, possibly spread over shards, looked up by checkpoint name.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace sdstack::io {

// How messages name a weight file: its last two path components
// ("/models/sd15/unet/diffusion_pytorch_model.safetensors" -> "unet/diffusion_pytorch_model.safetensors").
std::string display_path(const std::string& path);

// Where a model's weights come from, as the models see it: tensors looked up by checkpoint name.
// WeightSet reads them from safetensors files; models::RandomWeightSource makes them up. A model
// asks for each tensor with the shape its config implies, so a source that is not a file can answer
// every request. Implementations are thread-safe.
class WeightSource {
 public:
  virtual ~WeightSource();

  // Whether the source has the tensor. Models ask it, before asking for any of them, to choose
  // between naming schemes (the VAE's old and new attention names); a source that makes tensors
  // up answers for those it has made so far.
  virtual bool contains(const std::string& name) const = 0;
  // The tensor, which must have `expected` shape; errors name the source and the tensor.
  virtual base::Result<Tensor> get(const std::string& name, const Shape& expected) const = 0;
  // The tensor with whatever shape the source has for it.
  virtual base::Result<Tensor> get(const std::string& name) const = 0;
  // A human description for messages ("unet/diffusion_pytorch_model.safetensors").
  virtual std::string source() const = 0;
  // Says the caller has copied the tensor into its own buffers and will not read it soon: a
  // source backed by a mapped file drops the tensor's pages from memory. Views handed out stay
  // valid (reading them brings the pages back). The default does nothing.
  virtual void release(const std::string& name) const;

 protected:
  // Copied and moved only as part of an implementation (no slicing through the interface).
  WeightSource() = default;
  WeightSource(const WeightSource&) = default;
  WeightSource& operator=(const WeightSource&) = default;
};

// The tensors of one component (unet, vae, text_encoder), from one or more safetensors files.
// Lookups check names and shapes and name the file and the tensor on error. Thread-safe.
class WeightSet : public WeightSource {
 public:
  // Opens every file (shards); a tensor present in two files is an error naming both.
  static base::Result<WeightSet> open(const std::vector<std::string>& paths);

  bool contains(const std::string& name) const override;
  std::vector<std::string> names() const;
  // A human description for messages: the file, or "N shards in DIR".
  std::string source() const override;

  // The tensor, which must exist and have `expected` shape. Errors read like
  //   unet/diffusion_pytorch_model.safetensors: tensor 'conv_in.weight' has shape [32,4,3,3], expected [32,4,1,1]
  //   unet/diffusion_pytorch_model.safetensors: missing tensor 'conv_in.bias' (did you mean ...?)
  base::Result<Tensor> get(const std::string& name, const Shape& expected) const override;
  // The tensor with whatever shape it has. A tensor stored in a dtype sdstack does not read
  // (I64, F64, ...) is an error naming it and its dtype.
  base::Result<Tensor> get(const std::string& name) const override;
  // Drops the tensor's pages of the mapped file from memory (SafetensorsFile::release); an
  // unknown name is ignored.
  void release(const std::string& name) const override;

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>> index_;             // name -> (file, info)
  std::map<std::string, std::pair<size_t, const UnreadableTensor*>> unreadable_;  // name -> (file, info)
};

}  // namespace sdstack::io
