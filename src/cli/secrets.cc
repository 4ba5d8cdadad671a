// `sdstack secrets`: values that reach this project's runs as environment variables, kept out of
// logs (masked) and `ps`.
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/workspace.h"

namespace sdstack::cli {
namespace {

// A secret's value from stdin, without echo on a terminal, so it stays out of shell history.
std::string read_secret_value(const std::string& name) {
  bool terminal = isatty(STDIN_FILENO);
  termios saved{};
  if (terminal) {
    std::fprintf(stderr, "value of %s: ", name.c_str());
    tcgetattr(STDIN_FILENO, &saved);
    termios quiet = saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
  }
  std::string value;
  std::getline(std::cin, value);
  if (terminal) {
    tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    std::fprintf(stderr, "\n");
  }
  return value;
}

}  // namespace

int run_secrets(int argc, char** argv) {
  CLI::App app("Secrets reach this project's runs as environment variables; their values are masked (***) in\n"
               "logs and never shown by sdstack.",
               argv[0]);
  app.require_subcommand(1);
  std::string name, value;
  CLI::App* list = app.add_subcommand("list", "List the secrets' names");
  CLI::App* add = app.add_subcommand("add", "Add or replace a secret (the value is read from stdin when not given)");
  add->add_option("name", name, "The variable's name")->required();
  add->add_option("value", value, "The value (better: leave it out and type it, to keep it out of shell history)");
  CLI::App* remove = app.add_subcommand("delete", "Delete a secret");
  remove->add_option("name", name, "The variable's name")->required();
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  auto workspace = open_workspace();
  if (!workspace.is_ok()) return report(workspace.status());
  const std::string& dir = workspace->project.dir;
  if (list->parsed()) {
    auto secrets = workspace->store->secrets(dir);
    if (!secrets.is_ok()) return report(secrets.status());
    for (const auto& [secret, unused] : *secrets) std::printf("%s\n", secret.c_str());
    return 0;
  }
  if (add->parsed()) {
    if (add->count("value") == 0) value = read_secret_value(name);
    if (base::Status put = workspace->store->put_secret(dir, name, value); !put.is_ok()) return report(put);
    std::printf("secret %s saved\n", name.c_str());
    return 0;
  }
  if (base::Status deleted = workspace->store->delete_secret(dir, name); !deleted.is_ok()) return report(deleted);
  std::printf("secret %s deleted\n", name.c_str());
  return 0;
}

}  // namespace sdstack::cli
