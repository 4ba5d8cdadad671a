// Local resource detection and the check that refuses runs this machine can't give.
#include "flow/machine.h"

#include <sched.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
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

// The limit in a memory.max or memory.limit_in_bytes file; 0 for "max", "unlimited" or no file.
int64_t read_memory_limit(const std::string& path) {
  std::ifstream file(path);
  std::string text;
  if (!(file >> text)) return 0;
  errno = 0;
  char* end = nullptr;
  long long value = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || value <= 0) return 0;  // "max", garbage
  // cgroup v1 writes "no limit" as the largest page-aligned count (2^63 - 4096 with 4 KiB pages).
  constexpr int64_t kUnlimited = int64_t{1} << 62;
  return value >= kUnlimited ? 0 : value;
}

// The tighter of two limits, where 0 is none.
int64_t tighter_limit(int64_t a, int64_t b) { return a == 0 ? b : b == 0 ? a : std::min(a, b); }

// The smallest limit in `file_name` from `hierarchy` + `path` up to `hierarchy` itself; 0 for none.
int64_t smallest_limit_up_to_root(const std::string& hierarchy, std::string path, const std::string& file_name) {
  int64_t smallest = 0;
  while (true) {
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    smallest = tighter_limit(smallest, read_memory_limit(hierarchy + (path == "/" ? "" : path) + "/" + file_name));
    if (path.empty() || path == "/") return smallest;
    size_t slash = path.rfind('/');
    path = slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
  }
}

}  // namespace

int64_t cgroup_memory_limit(const std::string& proc_self_cgroup, const std::string& cgroup_root) {
  int64_t smallest = 0;
  std::istringstream lines(proc_self_cgroup);
  std::string line;
  while (std::getline(lines, line)) {
    // "4:memory:/user.slice" (v1: hierarchy, controllers, path) or "0::/user.slice" (v2).
    size_t first = line.find(':');
    size_t second = first == std::string::npos ? std::string::npos : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    std::string controllers = line.substr(first + 1, second - first - 1);
    std::string path = line.substr(second + 1);
    if (path.empty() || path[0] != '/') continue;
    if (controllers.empty()) {
      smallest = tighter_limit(smallest, smallest_limit_up_to_root(cgroup_root, path, "memory.max"));
      smallest = tighter_limit(smallest, smallest_limit_up_to_root(cgroup_root + "/unified", path, "memory.max"));
      continue;
    }
    std::istringstream names(controllers);
    std::string name;
    while (std::getline(names, name, ',')) {
      if (name != "memory") continue;
      smallest = tighter_limit(smallest,
                               smallest_limit_up_to_root(cgroup_root + "/memory", path, "memory.limit_in_bytes"));
    }
  }
  return smallest;
}

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
  // A container's or a systemd unit's limit is what a run really gets, not the machine's RAM.
  std::ifstream self_cgroup("/proc/self/cgroup");
  std::stringstream cgroup_text;
  cgroup_text << self_cgroup.rdbuf();
  machine.memory_bytes = tighter_limit(machine.memory_bytes, cgroup_memory_limit(cgroup_text.str(), "/sys/fs/cgroup"));
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
