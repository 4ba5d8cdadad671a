#include "testing/project.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "base/subprocess.h"

extern char** environ;

namespace sdstack::testing {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

void ProjectTest::SetUp() {
  git({"init", "-q"});
  std::filesystem::create_directories(project_.file(".sdstack/workflows"));
}

void ProjectTest::copy_seed_example() {
  std::filesystem::copy(std::string(SDSTACK_SOURCE_DIR) + "/examples/stable-diffusion", project_.path(),
                        std::filesystem::copy_options::recursive | std::filesystem::copy_options::overwrite_existing);
  git({"add", "-A"});
  git({"commit", "-q", "-m", "example"});
}

void ProjectTest::write_workflows(const std::string& yaml) {
  write_text_file(project_.file(".sdstack/workflows/test.yaml"), yaml);
  git({"add", "-A"});
  git({"commit", "-q", "-m", "workflows"});
}

void ProjectTest::git(std::vector<std::string> args) { testing::git(project_.path(), std::move(args)); }

std::vector<std::string> ProjectTest::environment() const {
  std::vector<std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (std::string(*entry).rfind("SDSTACK_HOME=", 0) != 0) env.push_back(*entry);
  }
  env.push_back("SDSTACK_HOME=" + home_.path());
  env.insert(env.end(), extra_env_.begin(), extra_env_.end());
  return env;
}

CommandResult ProjectTest::sd(std::vector<std::string> args) {
  args.insert(args.begin(), SDSTACK_BINARY);
  std::vector<std::string> env = environment();
  auto output = base::run_process(args, project_.path(), &env);
  EXPECT_TRUE(output.is_ok()) << output.status().message();
  if (!output.is_ok()) return {};
  return {output->exit_code, output->out, output->err};
}

pid_t ProjectTest::start(std::vector<std::string> args) {
  args.insert(args.begin(), SDSTACK_BINARY);
  std::vector<std::string> env = environment();
  std::string out = home_.file("attached.out"), err = home_.file("attached.err");
  pid_t pid = fork();
  if (pid == 0) {
    if (chdir(project_.path().c_str()) != 0) _exit(127);
    if (!freopen(out.c_str(), "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(127);
    std::vector<char*> argv, envp;
    for (std::string& arg : args) argv.push_back(arg.data());
    for (std::string& entry : env) envp.push_back(entry.data());
    argv.push_back(nullptr);
    envp.push_back(nullptr);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

std::string ProjectTest::detached(std::vector<std::string> args) {
  args.insert(args.begin(), {"run", "-d"});
  CommandResult result = sd(args);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  std::string name = result.out;
  while (!name.empty() && name.back() == '\n') name.pop_back();
  return name;
}

std::string ProjectTest::logs(const std::string& run) {
  CommandResult result = sd({"logs", run});
  return result.err + result.out;
}

std::string ProjectTest::status_of(const std::string& run) {
  CommandResult ps = sd({"ps", "-a"});
  std::istringstream lines(ps.out);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string name, workflow, provider, status;
    words >> name >> workflow >> provider >> status;
    if (name == run) return status;
  }
  return "";
}

bool ProjectTest::finished(const std::string& run) {
  std::string status = status_of(run);
  return status == "done" || status == "failed" || status == "stopped" || status == "aborted";
}

}  // namespace sdstack::testing
