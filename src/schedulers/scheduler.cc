// make_scheduler: scheduler names, the model's default, and from_config-style configuration.
#include "schedulers/scheduler.h"

#include <algorithm>

#include "base/strings.h"
#include "schedulers/registry.h"

namespace sdstack::schedulers {
namespace {

struct SchedulerEntry {
  const char* name;                  // what users type
  std::vector<std::string> aliases;  // other spellings accepted
  const char* class_name;            // diffusers' class, as model configs name it
  bool has_karras;                   // has use_karras_sigmas
};

const std::vector<SchedulerEntry>& registry() {
  static const std::vector<SchedulerEntry> entries = {
      {"pndm", {"plms"}, "PNDMScheduler", false},
      {"ddim", {}, "DDIMScheduler", false},
      {"euler", {}, "EulerDiscreteScheduler", true},
      {"euler_a", {"euler-a", "euler-ancestral", "euler_ancestral"}, "EulerAncestralDiscreteScheduler", false},
      {"dpmpp_2m", {"dpm++2m", "dpm++_2m", "dpmpp-2m", "dpm-solver++"}, "DPMSolverMultistepScheduler", true},
      {"lms", {"k_lms"}, "LMSDiscreteScheduler", true},
  };
  return entries;
}

}  // namespace

std::vector<std::string> scheduler_names() {
  std::vector<std::string> names;
  for (const SchedulerEntry& entry : registry()) names.push_back(entry.name);
  return names;
}

tensor::Tensor Scheduler::scale_model_input(const tensor::Tensor& sample, size_t) const { return sample.contiguous(); }

base::Result<std::unique_ptr<Scheduler>> make_scheduler(const std::string& name, const nlohmann::json& model_config,
                                                        const SchedulerOptions& options, const std::string& source) {
  // 1. Which scheduler: the named one, or the class the model's config names.
  const SchedulerEntry* entry = nullptr;
  const bool use_default = name.empty() || name == "default";
  if (use_default) {
    models::ConfigReader reader(model_config, source);
    SD_ASSIGN_OR_RETURN(std::string class_name, reader.string("_class_name"));
    for (const SchedulerEntry& e : registry()) {
      if (class_name == e.class_name) entry = &e;
    }
    if (entry == nullptr) {
      return base::unsupported(source + ": the model's scheduler " + class_name +
                               " is not one sdstack has; choose one with --scheduler (" +
                               base::join(scheduler_names(), ", ") + ")");
    }
  } else {
    std::vector<std::string> spellings;
    for (const SchedulerEntry& e : registry()) {
      spellings.push_back(e.name);
      if (name == e.name || std::find(e.aliases.begin(), e.aliases.end(), name) != e.aliases.end()) entry = &e;
    }
    if (entry == nullptr) {
      return base::invalid_argument("unknown scheduler '" + name + "'" + base::did_you_mean(name, spellings) +
                                    "; choose one of " + base::join(spellings, ", "));
    }
  }
  // 2. Options the scheduler must have.
  if (options.karras && !entry->has_karras) {
    std::vector<std::string> with_karras;
    for (const SchedulerEntry& e : registry()) {
      if (e.has_karras) with_karras.push_back(e.name);
    }
    return base::invalid_argument(std::string("scheduler '") + entry->name + "' has no Karras sigmas; use one of " +
                                  base::join(with_karras, ", ") + ", or drop --karras");
  }
  if (options.eta != 0.0 && std::string(entry->name) != "ddim") {
    return base::invalid_argument(std::string("eta applies to the ddim scheduler only, not '") + entry->name + "'");
  }
  // 3. The config: the model's keys over the scheduler's defaults, as from_config; the options
  //    (and a named DPM++ 2M's algorithm and order) as from_config's keyword overrides.
  nlohmann::json config = model_config.is_object() ? model_config : nlohmann::json::object();
  if (options.karras) config["use_karras_sigmas"] = true;
  if (!use_default && std::string(entry->name) == "dpmpp_2m") {
    config["algorithm_type"] = "dpmsolver++";
    config["solver_order"] = 2;
  }
  ConfigResolver resolver(std::move(config), source);
  const std::string which = entry->name;
  if (which == "pndm") return make_pndm(resolver);
  if (which == "ddim") return make_ddim(resolver, options.eta);
  if (which == "euler") return make_euler(resolver);
  if (which == "euler_a") return make_euler_ancestral(resolver);
  if (which == "dpmpp_2m") return make_dpm_solver_multistep(resolver);
  return make_lms(resolver);
}

}  // namespace sdstack::schedulers
