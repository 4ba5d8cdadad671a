// What this machine can give a run (CPUs, memory, GPUs, shared memory), and checking a request.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flow/spec.h"

namespace sdstack::flow {

struct GpuInfo {
  std::string name;          // "NVIDIA H100 80GB HBM3"
  int64_t memory_bytes = 0;
};

struct MachineResources {
  int cpus = 0;                 // CPUs this process may use (its affinity mask)
  int64_t memory_bytes = 0;     // MemTotal
  std::vector<GpuInfo> gpus;    // from nvidia-smi, empty without it
  int64_t shm_bytes = 0;        // the size of /dev/shm
};

// Reads /proc/meminfo, the affinity mask, `nvidia-smi --query-gpu` when installed, statvfs(/dev/shm).
MachineResources detect_local_machine();

// The overrides `sdstack run` takes (--cpu --memory --gpu --gpu-name --gpu-memory --shm-size):
// each one set replaces the workflow's value.
struct ResourceOverrides {
  std::optional<int> cpu;
  std::optional<int64_t> memory_bytes;
  std::optional<int> gpu_count;
  std::optional<std::string> gpu_name;
  std::optional<int64_t> gpu_memory_bytes;
  std::optional<int64_t> shm_size_bytes;
};
Resources apply_overrides(Resources resources, const ResourceOverrides& overrides);

// "" when `machine` can give everything `wanted` asks for; else one line per thing missing, e.g.
// "1 GPU (this machine has none)", "memory 64.0 GB (this machine has 24.0 GB)". A GPU name matches
// when it is a case-insensitive substring of the GPU's name ("A100" matches "NVIDIA A100-SXM4-80GB").
std::vector<std::string> missing_resources(const Resources& wanted, const MachineResources& machine);

// "24.0 GB", "1.5 MB", "10.0 kB", "512 B" (decimal units, as workflow files usually write them).
std::string format_bytes(int64_t bytes);

}  // namespace sdstack::flow
