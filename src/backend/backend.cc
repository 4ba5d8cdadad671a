// Backend selection and the shared thread pool.
#include "backend/backend.h"

#include <omp.h>

#include "backend/cpu/cpu_backend.h"
#include "backend/reference/reference_backend.h"

namespace sdstack::backend {

base::Result<std::unique_ptr<Backend>> make_backend(const std::string& name, const BackendOptions& options) {
  if (options.threads > 0) set_num_threads(options.threads);
  if (name == "cpu") return make_cpu_backend(options.compute_dtype);
  if (name == "reference") {
    if (options.compute_dtype != DType::kF32) {
      return base::invalid_argument(std::string("the reference backend computes in f32 only, not ") +
                                    tensor::dtype_name(options.compute_dtype) + "; use --backend cpu or --dtype f32");
    }
    return make_reference_backend();
  }
  return base::invalid_argument("unknown backend '" + name + "' (valid: cpu, reference)");
}

void set_num_threads(int threads) {
  omp_set_num_threads(threads > 0 ? threads : omp_get_num_procs());
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace sdstack::backend
