// The CPU backend: oneDNN (convolutions, matmuls, softmax, layer norm) and own kernels
// (group norm fused with SiLU, GEGLU, elementwise ops), all on the one OpenMP thread pool.
#pragma once

#include <memory>

#include "backend/backend.h"

namespace sdstack::backend {

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace sdstack::backend
