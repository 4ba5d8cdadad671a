// `sdstack`: the command table and the dispatch to one handler per command.
#include <cstdio>
#include <cstring>
#include <string>

#include "base/strings.h"
#include "cli/commands.h"
#include "cli/version.h"

namespace sdstack::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"pull", "Download a diffusers model from the Hugging Face Hub into the shared cache", run_pull},
      {"generate", "Generate images from prompts (output/0.png, ...)", run_generate},
      {"tokenize", "Print the CLIP token ids of a prompt", run_tokenize},
      {"encode", "Compute a prompt's CLIP text embedding and save it as .npy", run_encode},
      {"make-model", "Make a random-weight model folder (tiny, sd15) for offline runs and benchmarks", run_make_model},
      {"bench", "Time CLIP, UNet and VAE on this machine: GFLOP/s and % of its measured peak", run_bench},
      {"init", "Record this project (its git repository) so that its workflows can run", run_init},
      {"run", "Run a workflow (.sdstack/workflows/*.yaml) on this machine", run_run},
      {"ps", "List this project's runs", run_ps},
      {"logs", "Print a run's output (-f: follow it)", run_logs},
      {"stop", "Stop runs gracefully (artifacts saved) or abort them (-x)", run_stop},
      {"rm", "Delete finished runs and their artifacts", run_rm},
      {"tags", "Name runs' artifacts: tags list|add|delete", run_tags},
      {"artifacts", "A run's artifacts: artifacts list|download|push", run_artifacts},
      {"secrets", "Environment variables for runs, kept out of logs: secrets list|add|delete", run_secrets},
      {"config", "Remote engines (SSH hosts, Slurm) and the S3 artifact store: config show|ssh|slurm|s3|...", run_config},
      {"offers", "Where a remote run could go, cheapest first (--gpu, --memory, ...)", run_offers},
  };
  return table;
}

namespace {

void print_usage(std::FILE* out) {
  std::fprintf(out,
               "sdstack %s: Stable Diffusion, run locally and on clusters.\n\n"
               "Usage: sdstack <command> [options]\n\nCommands:\n",
               kVersion);
  for (const Command& command : commands()) std::fprintf(out, "  %-10s %s\n", command.name, command.summary);
  std::fprintf(out, "\nRun 'sdstack <command> --help' for a command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_usage(stderr);
    return 2;
  }
  std::string name = argv[1];
  if (name == "-h" || name == "--help" || name == "help") {
    print_usage(stdout);
    return 0;
  }
  if (name == "-V" || name == "--version" || name == "version") {
    std::printf("sdstack %s\n", kVersion);
    return 0;
  }
  if (name == "__supervise") {  // not in the table: users never type it
    std::vector<char*> args(argv + 1, argv + argc);
    return run_supervise(static_cast<int>(args.size()), args.data());
  }
  if (name == "__agent") {
    std::vector<char*> args(argv + 1, argv + argc);
    return run_agent(static_cast<int>(args.size()), args.data());
  }
  std::vector<std::string> names;
  for (const Command& command : commands()) {
    if (name == command.name) {
      std::string program = std::string("sdstack ") + command.name;
      std::vector<char*> args(argv + 1, argv + argc);
      args[0] = program.data();
      return command.run(static_cast<int>(args.size()), args.data());
    }
    names.push_back(command.name);
  }
  std::fprintf(stderr, "sdstack: unknown command '%s'%s\nRun 'sdstack --help' for the list of commands.\n",
               name.c_str(), base::did_you_mean(name, names).c_str());
  return 2;
}

}  // namespace sdstack::cli
