// Layout changes between torch's NCHW (files, schedulers, golden data) and the engine's NHWC.
#pragma once

#include "tensor/tensor.h"

namespace sdstack::tensor {

// [N, C, H, W] -> [N, H, W, C], a new contiguous tensor of the same dtype.
Tensor nchw_to_nhwc(const Tensor& x);
// [N, H, W, C] -> [N, C, H, W], a new contiguous tensor of the same dtype.
Tensor nhwc_to_nchw(const Tensor& x);

}  // namespace sdstack::tensor
