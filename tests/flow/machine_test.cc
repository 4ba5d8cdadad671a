// Resource checks: what a run asks for against what the machine has, with messages saying what's missing.
#include "flow/machine.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace sdstack::flow
