// The CPU backend: oneDNN (convolutions, matmuls, softmax, layer norm) and own kernels
// (group norm fused with SiLU, GEGLU, elementwise ops), all on the one OpenMP thread pool.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "base/status.h"

namespace sdstack::backend {

// A CPU backend whose convolutions, linears, matmuls and attention compute in `compute_dtype`:
// f32, or bf16 (bf16 operands, f32 accumulation and outputs; everything else stays f32). bf16 is
// an error on a CPU without native bf16 (AVX512-BF16 or AMX, as oneDNN sees it), where oneDNN
// would emulate it slower than f32.
base::Result<std::unique_ptr<Backend>> make_cpu_backend(DType compute_dtype = DType::kF32);

}  // namespace sdstack::backend
