// Local resource detection and the check that refuses runs this machine can't give.
#include "flow/machine.h"

#include <sched.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "base/subprocess.h"

namespace sdstack::flow {
namespace {

std::string lowercase(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

std::vector<GpuInfo> detect_gpus() {
  std::vector<GpuInfo> gpus;
  if (!base::find_program("nvidia-smi").is_ok()) return gpus;
  auto output = base::run_process({"nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"});
  if (!output.is_ok() || output->exit_code != 0) return gpus;
  std::istringstream lines(output->out);
  std::string line;
  while (std::getline(lines, line)) {
    size_t comma = line.rfind(',');
    if (comma == std::string::npos) continue;
    GpuInfo gpu;
    gpu.name = line.substr(0, comma);
    gpu.memory_bytes = std::atoll(line.c_str() + comma + 1) * 1024 * 1024;  // MiB
    gpus.push_back(gpu);
  }
  return gpus;
}

}  // namespace

MachineResources detect_local_machine() {
  MachineResources machine;
  cpu_set_t set;
  CPU_ZERO(&set);
  machine.cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemTotal:") machine.memory_bytes = kib * 1024;
  }
  machine.gpus = detect_gpus();
  struct statvfs shm;
  if (statvfs("/dev/shm", &shm) == 0) machine.shm_bytes = static_cast<int64_t>(shm.f_blocks) * shm.f_frsize;
  return machine;
}

Resources apply_overrides(Resources resources, const ResourceOverrides& overrides) {
  if (overrides.cpu) resources.cpu = *overrides.cpu;
  if (overrides.memory_bytes) resources.memory_bytes = *overrides.memory_bytes;
  if (overrides.gpu_count) resources.gpu.count = *overrides.gpu_count;
  if (overrides.gpu_name) resources.gpu.name = *overrides.gpu_name;
  if (overrides.gpu_memory_bytes) resources.gpu.memory_bytes = *overrides.gpu_memory_bytes;
  if (overrides.shm_size_bytes) resources.shm_size_bytes = *overrides.shm_size_bytes;
  // A GPU name or memory asks for at least one GPU, as in dstack.
  if (resources.gpu.count == 0 && (!resources.gpu.name.empty() || resources.gpu.memory_bytes > 0)) {
    resources.gpu.count = 1;
  }
  return resources;
}

std::string format_bytes(int64_t bytes) {
  char text[32];
  if (bytes >= 1000LL * 1000 * 1000) {
    std::snprintf(text, sizeof(text), "%.1f GB", bytes / 1e9);
  } else if (bytes >= 1000LL * 1000) {
    std::snprintf(text, sizeof(text), "%.1f MB", bytes / 1e6);
  } else if (bytes >= 1000) {
    std::snprintf(text, sizeof(text), "%.1f kB", bytes / 1e3);
  } else {
    std::snprintf(text, sizeof(text), "%lld B", static_cast<long long>(bytes));
  }
  return text;
}

std::vector<std::string> missing_resources(const Resources& wanted, const MachineResources& machine) {
  std::vector<std::string> missing;
  if (wanted.cpu > machine.cpus) {
    missing.push_back(std::to_string(wanted.cpu) + " CPUs (this machine has " + std::to_string(machine.cpus) + ")");
  }
  if (wanted.memory_bytes > machine.memory_bytes) {
    missing.push_back("memory " + format_bytes(wanted.memory_bytes) + " (this machine has " +
                      format_bytes(machine.memory_bytes) + ")");
  }
  if (wanted.shm_size_bytes > machine.memory_bytes) {
    missing.push_back("shared memory " + format_bytes(wanted.shm_size_bytes) + " (this machine has " +
                      format_bytes(machine.memory_bytes) + " of memory)");
  }
  const GpuSpec& gpu = wanted.gpu;
  if (gpu.count > 0) {
    int matching = 0;
    for (const GpuInfo& info : machine.gpus) {
      bool name_ok = gpu.name.empty() || lowercase(info.name).find(lowercase(gpu.name)) != std::string::npos;
      bool memory_ok = gpu.memory_bytes <= info.memory_bytes;
      if (name_ok && memory_ok) matching += 1;
    }
    if (matching < gpu.count) {
      std::string what = std::to_string(gpu.count) + (gpu.name.empty() ? "" : " " + gpu.name) +
                         (gpu.count == 1 ? " GPU" : " GPUs");
      if (gpu.memory_bytes > 0) what += " with " + format_bytes(gpu.memory_bytes);
      std::string has;
      if (machine.gpus.empty()) {
        has = "this machine has none";
      } else {
        has = "this machine has " + std::to_string(machine.gpus.size()) + ": ";
        for (size_t i = 0; i < machine.gpus.size(); ++i) {
          has += (i ? ", " : "") + machine.gpus[i].name + " " + format_bytes(machine.gpus[i].memory_bytes);
        }
        if (matching > 0) has += "; " + std::to_string(matching) + " of them match";
      }
      missing.push_back(what + " (" + has + ")");
    }
  }
  return missing;
}

}  // namespace sdstack::flow
