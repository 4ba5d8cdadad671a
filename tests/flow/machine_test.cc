// Resource checks: what a run asks for against what the machine has, with messages saying what's missing.
#include "flow/machine.h"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "testing/testing.h"

namespace sdstack::flow {
namespace {

MachineResources small_machine() {
  MachineResources machine;
  machine.cpus = 2;
  machine.memory_bytes = 24LL * 1024 * 1024 * 1024;
  machine.shm_bytes = 1LL << 30;
  return machine;
}

TEST(MachineTest, WhatTheMachineHasIsAccepted) {
  Resources wanted;
  wanted.cpu = 2;
  wanted.memory_bytes = 16'000'000'000;
  EXPECT_TRUE(missing_resources(wanted, small_machine()).empty());
}

TEST(MachineTest, EachShortfallIsNamed) {
  Resources wanted;
  wanted.cpu = 8;
  wanted.memory_bytes = 64'000'000'000;
  wanted.gpu.count = 1;
  auto missing = missing_resources(wanted, small_machine());
  ASSERT_EQ(missing.size(), 3u);
  EXPECT_EQ(missing[0], "8 CPUs (this machine has 2)");
  EXPECT_EQ(missing[1], "memory 64.0 GB (this machine has 25.8 GB)");
  EXPECT_EQ(missing[2], "1 GPU (this machine has none)");
}

TEST(MachineTest, GpuNameAndMemoryMustMatch) {
  MachineResources machine = small_machine();
  machine.gpus = {{"NVIDIA A100-SXM4-80GB", 80LL * 1024 * 1024 * 1024}, {"NVIDIA T4", 16LL * 1024 * 1024 * 1024}};
  Resources wanted;
  wanted.gpu = {1, "a100", 40'000'000'000};
  EXPECT_TRUE(missing_resources(wanted, machine).empty());
  wanted.gpu = {2, "A100", 0};
  auto missing = missing_resources(wanted, machine);
  ASSERT_EQ(missing.size(), 1u);
  EXPECT_EQ(missing[0], "2 A100 GPUs (this machine has 2: NVIDIA A100-SXM4-80GB 85.9 GB, NVIDIA T4 17.2 GB; "
                        "1 of them match)");
}

TEST(MachineTest, OverridesReplaceTheWorkflowsValues) {
  Resources resources;
  resources.memory_bytes = 16'000'000'000;
  resources.gpu.count = 1;
  ResourceOverrides overrides;
  overrides.gpu_count = 0;
  overrides.memory_bytes = 1'000'000'000;
  Resources result = apply_overrides(resources, overrides);
  EXPECT_EQ(result.gpu.count, 0);
  EXPECT_EQ(result.memory_bytes, 1'000'000'000);
  ResourceOverrides name_only;
  name_only.gpu_name = "H100";
  EXPECT_EQ(apply_overrides(Resources{}, name_only).gpu.count, 1);  // a GPU name asks for one
}

TEST(MachineTest, ThisMachineIsDetected) {
  MachineResources machine = detect_local_machine();
  EXPECT_GE(machine.cpus, 1);
  EXPECT_GT(machine.memory_bytes, 100'000'000);
}

constexpr int64_t kGiB = 1024LL * 1024 * 1024;
constexpr const char* kV1Unlimited = "9223372036854771712\n";  // what cgroup v1 shows with no limit

// /proc/self/cgroup of a process in cgroup v1's memory hierarchy at `memory_path`, as on Debian 12
// without systemd (a hybrid mount: v1 controllers plus an empty v2 "unified" hierarchy).
std::string v1_proc_self_cgroup(const std::string& memory_path) {
  return "9:name=systemd:/\n8:pids:/\n4:memory:" + memory_path + "\n3:cpuset:/\n1:cpu:/\n0::/\n";
}

TEST(MachineTest, CgroupV1LimitOfTheProcessesCgroup) {
  testing::TempDir root;
  testing::write_text_file(root.file("memory/memory.limit_in_bytes"), kV1Unlimited);
  testing::write_text_file(root.file("memory/sdstack-h1/memory.limit_in_bytes"), "3221225472\n");
  EXPECT_EQ(cgroup_memory_limit(v1_proc_self_cgroup("/sdstack-h1"), root.path()), 3 * kGiB);
  // A sibling's limit is not this process's.
  EXPECT_EQ(cgroup_memory_limit(v1_proc_self_cgroup("/"), root.path()), 0);
}

TEST(MachineTest, CgroupV1UnlimitedIsNoLimit) {
  testing::TempDir root;
  testing::write_text_file(root.file("memory/memory.limit_in_bytes"), kV1Unlimited);
  testing::write_text_file(root.file("memory/process_api/1f2e/memory.limit_in_bytes"), kV1Unlimited);
  EXPECT_EQ(cgroup_memory_limit(v1_proc_self_cgroup("/process_api/1f2e"), root.path()), 0);
}

TEST(MachineTest, CgroupLimitOfAParentApplies) {
  testing::TempDir root;
  testing::write_text_file(root.file("memory/jobs/memory.limit_in_bytes"), "2147483648\n");
  testing::write_text_file(root.file("memory/jobs/run-7/memory.limit_in_bytes"), kV1Unlimited);
  EXPECT_EQ(cgroup_memory_limit(v1_proc_self_cgroup("/jobs/run-7"), root.path()), 2 * kGiB);
  // The child's own limit wins when it is the smaller one.
  testing::write_text_file(root.file("memory/jobs/run-7/memory.limit_in_bytes"), "1073741824\n");
  EXPECT_EQ(cgroup_memory_limit(v1_proc_self_cgroup("/jobs/run-7"), root.path()), kGiB);
}

TEST(MachineTest, CgroupV2MemoryMax) {
  testing::TempDir root;
  testing::write_text_file(root.file("user.slice/memory.max"), "max\n");
  testing::write_text_file(root.file("user.slice/run.scope/memory.max"), "8589934592\n");
  EXPECT_EQ(cgroup_memory_limit("0::/user.slice/run.scope\n", root.path()), 8 * kGiB);
  testing::write_text_file(root.file("user.slice/run.scope/memory.max"), "max\n");
  EXPECT_EQ(cgroup_memory_limit("0::/user.slice/run.scope\n", root.path()), 0);
}

TEST(MachineTest, CgroupV2UnderUnifiedBesideV1) {
  testing::TempDir root;
  testing::write_text_file(root.file("unified/app/memory.max"), "536870912\n");
  EXPECT_EQ(cgroup_memory_limit("1:cpu:/\n0::/app\n", root.path()), 512 * 1024 * 1024);
}

TEST(MachineTest, CgroupOfAContainerIsFoundAtTheRoot) {
  // Without a cgroup namespace a container sees its host-side path, but its own cgroup is mounted
  // at the root of /sys/fs/cgroup: the path doesn't exist there, the root's limit is the one.
  testing::TempDir root;
  testing::write_text_file(root.file("memory/memory.limit_in_bytes"), "4294967296\n");
  EXPECT_EQ(cgroup_memory_limit(v1_proc_self_cgroup("/docker/0123abcd"), root.path()), 4 * kGiB);
  testing::TempDir v2_root;
  testing::write_text_file(v2_root.file("memory.max"), "1073741824\n");
  EXPECT_EQ(cgroup_memory_limit("0::/\n", v2_root.path()), kGiB);
}

TEST(MachineTest, CgroupWithoutFilesOrTextIsNoLimit) {
  testing::TempDir root;
  EXPECT_EQ(cgroup_memory_limit(v1_proc_self_cgroup("/sdstack-h1"), root.path()), 0);
  EXPECT_EQ(cgroup_memory_limit("0::/user.slice\n", root.path()), 0);
  EXPECT_EQ(cgroup_memory_limit("", root.path()), 0);
  EXPECT_EQ(cgroup_memory_limit("garbage without colons\n", root.path()), 0);
  testing::write_text_file(root.file("memory/x/memory.limit_in_bytes"), "lots\n");
  EXPECT_EQ(cgroup_memory_limit(v1_proc_self_cgroup("/x"), root.path()), 0);
}

TEST(MachineTest, ThisMachinesMemoryIsAtMostItsCgroupLimit) {
  std::ifstream file("/proc/self/cgroup");
  std::stringstream text;
  text << file.rdbuf();
  int64_t limit = cgroup_memory_limit(text.str(), "/sys/fs/cgroup");
  MachineResources machine = detect_local_machine();
  if (limit > 0) {
    EXPECT_LE(machine.memory_bytes, limit);
  }
}

}  // namespace
}  // namespace sdstack::flow
