// NumPy .npy files: float32 (and float16) arrays in C order, little-endian.
#pragma once

#include <string>

#include "base/status.h"
#include "tensor/tensor.h"

namespace sdstack::io {

// Writes `t` (any dtype, converted to f32) as a '<f4' C-order .npy file, atomically.
base::Status write_npy(const std::string& path, const tensor::Tensor& t);

// Reads a '<f4' or '<f2' C-order .npy file into a contiguous f32 tensor. Fortran order, other
// dtypes and truncated files are errors naming the file.
base::Result<tensor::Tensor> read_npy(const std::string& path);

}  // namespace sdstack::io
