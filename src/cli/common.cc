// Helpers shared by the command handlers.
#include "cli/common.h"

#include <cstdio>

#include "base/file.h"

namespace sdstack::cli {

int parse_arguments(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: error: %s\nRun '%s --help' for its options.\n", app.get_name().c_str(), e.what(),
                 app.get_name().c_str());
    return kExitUsage;
  }
  return -1;
}

int report(const base::Status& status) {
  std::fprintf(stderr, "sdstack: error: %s\n", status.message().c_str());
  return kExitFailure;
}

base::Result<std::string> tokenizer_dir(const std::string& model) {
  if (!base::is_directory(model)) {
    return base::not_found(model + ": no such model folder (pass a diffusers model folder with --model)");
  }
  if (base::file_exists(base::join_path(model, "vocab.json"))) return model;
  std::string dir = base::join_path(model, "tokenizer");
  if (base::is_directory(dir)) return dir;
  return base::not_found(model + ": no tokenizer/ folder (a diffusers model folder has tokenizer/vocab.json and "
                                 "tokenizer/merges.txt)");
}

}  // namespace sdstack::cli
