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
  int64_t memory_bytes = 0;     // MemTotal, or this process's cgroup memory limit when lower
  std::vector<GpuInfo> gpus;    // from nvidia-smi, empty without it
  int64_t shm_bytes = 0;        // the size of /dev/shm
};

// Reads /proc/meminfo, the cgroup memory limit, the affinity mask, `nvidia-smi --query-gpu` when
// installed, statvfs(/dev/shm).
MachineResources detect_local_machine();

// The memory limit, in bytes, of the cgroup that `proc_self_cgroup` (the text of /proc/self/cgroup)
// names, read under `cgroup_root` (normally "/sys/fs/cgroup"), or 0 when nothing limits it. A limit
// on a parent cgroup applies too, so the smallest one from the process's cgroup up to the root wins.
// Reads cgroup v2's memory.max (mounted at the root, or at "unified" beside v1) and cgroup v1's
// memory/<path>/memory.limit_in_bytes; "max" and v1's huge "unlimited" value (2^63 - 4096) mean
// none. A path that isn't under `cgroup_root` as named (inside a container, where the container's
// own cgroup is mounted at the root) is found by walking up to the root. Missing files are no limit.
int64_t cgroup_memory_limit(const std::string& proc_self_cgroup, const std::string& cgroup_root);

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
