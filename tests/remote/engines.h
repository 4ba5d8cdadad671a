// The engines the remote tests run against, as their fixture scripts left them.
//
// Each script tests/remote/fixtures/<engine>.sh, run by CTest before the remote tests (`up DIR`)
// and after them (`down DIR`), writes DIR/env (KEY=VALUE lines: addresses, key files, endpoints)
// once its engine answers, or DIR/skipped (one line: why it could not start it).
#pragma once

#include <map>
#include <vector>
#include <string>

namespace sdstack::testing {

struct Engine {
  std::string dir;                          // the fixture's folder
  std::string skipped;                      // why it is not there ("" when it is)
  std::map<std::string, std::string> env;   // DIR/env
  const std::string& at(const std::string& key) const;  // env[key], failing the test when absent
};

// The engine "ssh_hosts", "slurm" or "swift", read from the engines folder.
Engine engine(const std::string& name);

// Runs `<name>.sh COMMAND DIR ARGS...` (e.g. "ssh_hosts", "cut", {"host1"}), failing the test on error.
void engine_script(const std::string& name, const std::string& command, const std::vector<std::string>& args = {});

}  // namespace sdstack::testing

// In a test: GTEST_SKIP when the engine is not there, with the fixture's reason.
#define SDSTACK_REQUIRE_ENGINE(var, name)                                              \
  ::sdstack::testing::Engine var = ::sdstack::testing::engine(name);                   \
  if (!var.skipped.empty()) GTEST_SKIP() << name << " is not running: " << var.skipped
