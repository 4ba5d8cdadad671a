#include "engines.h"

#include <fstream>
#include <vector>

#include <gtest/gtest.h>

#include "base/subprocess.h"

namespace sdstack::testing {

const std::string& Engine::at(const std::string& key) const {
  static const std::string empty;
  auto found = env.find(key);
  if (found == env.end()) {
    ADD_FAILURE() << dir << "/env has no " << key;
    return empty;
  }
  return found->second;
}

Engine engine(const std::string& name) {
  Engine result;
  result.dir = std::string(SDSTACK_ENGINES_DIR) + "/" + name;
  std::ifstream skipped(result.dir + "/skipped");
  if (skipped) {
    std::getline(skipped, result.skipped);
    if (result.skipped.empty()) result.skipped = "its fixture skipped it";
    return result;
  }
  std::ifstream env(result.dir + "/env");
  if (!env) {
    result.skipped = "its fixture left no " + result.dir + "/env (run the tests with ctest, which starts it)";
    return result;
  }
  std::string line;
  while (std::getline(env, line)) {
    size_t equals = line.find('=');
    if (equals != std::string::npos) result.env[line.substr(0, equals)] = line.substr(equals + 1);
  }
  return result;
}

void engine_script(const std::string& name, const std::string& command, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"bash", std::string(SDSTACK_FIXTURES_DIR) + "/" + name + ".sh", command,
                                   std::string(SDSTACK_ENGINES_DIR) + "/" + name};
  argv.insert(argv.end(), args.begin(), args.end());
  auto result = base::run_process(argv);
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  ASSERT_EQ(result->exit_code, 0) << name << ".sh failed: " << result->out << result->err;
}

}  // namespace sdstack::testing
