// The reference backend: every op as plain loops over tensor/reference_ops.h. The oracle that
// the fast backends are tested against; slow by design.
#pragma once

#include <memory>

#include "backend/backend.h"

namespace sdstack::backend {

std::unique_ptr<Backend> make_reference_backend();

}  // namespace sdstack::backend
