// A test fixture for the runner's end-to-end tests: a git project with workflow files and its own
// sdstack store (a temporary SDSTACK_HOME), and `sdstack` run in it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "testing/testing.h"

namespace sdstack::testing {

class ProjectTest : public ::testing::Test {
 protected:
  void SetUp() override;

  // Copies examples/stable-diffusion (the seed tutorial) into the project and commits it.
  void copy_seed_example();
  // Writes .sdstack/workflows/test.yaml and commits it.
  void write_workflows(const std::string& yaml);
  void git(std::vector<std::string> args);
  // This process's environment with SDSTACK_HOME set to home_ and `extra` ("K=V") added.
  std::vector<std::string> environment() const;

  // `sdstack ARGS` in the project folder.
  CommandResult sd(std::vector<std::string> args);
  // Starts `sdstack ARGS` without waiting; its output goes to home_/attached.{out,err}.
  pid_t start(std::vector<std::string> args);
  // `sdstack run -d ARGS`: the run's name.
  std::string detached(std::vector<std::string> args);
  // `sdstack logs RUN` (stderr, then stdout).
  std::string logs(const std::string& run);
  // The run's STATUS column in `sdstack ps -a`.
  std::string status_of(const std::string& run);
  bool finished(const std::string& run);

  template <typename Predicate>
  bool wait_for(Predicate predicate, int seconds = 60) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      if (predicate()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  TempDir project_;
  TempDir home_;
  std::vector<std::string> extra_env_;  // added to every sdstack's environment
};

bool contains(const std::string& text, const std::string& part);

}  // namespace sdstack::testing
