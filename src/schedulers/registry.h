// The constructors make_scheduler dispatches to, one per scheduler file.
#pragma once

#include <memory>

#include "base/status.h"
#include "schedulers/common.h"
#include "schedulers/scheduler.h"

namespace sdstack::schedulers {

base::Result<std::unique_ptr<Scheduler>> make_pndm(ConfigResolver& config);
base::Result<std::unique_ptr<Scheduler>> make_ddim(ConfigResolver& config, double eta);
base::Result<std::unique_ptr<Scheduler>> make_euler(ConfigResolver& config);
base::Result<std::unique_ptr<Scheduler>> make_euler_ancestral(ConfigResolver& config);
base::Result<std::unique_ptr<Scheduler>> make_dpm_solver_multistep(ConfigResolver& config);
base::Result<std::unique_ptr<Scheduler>> make_lms(ConfigResolver& config);

}  // namespace sdstack::schedulers
