// The command table: every `sdstack` subcommand, its one-line help and its handler.
#pragma once

#include <string>
#include <vector>

namespace sdstack::cli {

// A handler gets the arguments after the command name (argv[0] is "sdstack <command>") and
// returns the process exit status.
using Handler = int (*)(int argc, char** argv);

struct Command {
  const char* name;
  const char* summary;
  Handler run;
};

const std::vector<Command>& commands();

// The whole program: dispatches argv[1] through the table.
int main(int argc, char** argv);

// Handlers, one file each.
int run_tokenize(int argc, char** argv);
int run_encode(int argc, char** argv);
int run_generate(int argc, char** argv);
int run_pull(int argc, char** argv);
int run_make_model(int argc, char** argv);
int run_bench(int argc, char** argv);
int run_init(int argc, char** argv);
int run_run(int argc, char** argv);
int run_supervise(int argc, char** argv);  // hidden: the body of a run's supervisor process
int run_ps(int argc, char** argv);
int run_logs(int argc, char** argv);
int run_stop(int argc, char** argv);
int run_rm(int argc, char** argv);
int run_tags(int argc, char** argv);
int run_artifacts(int argc, char** argv);
int run_secrets(int argc, char** argv);
int run_config(int argc, char** argv);
int run_offers(int argc, char** argv);
int run_agent(int argc, char** argv);  // hidden: sdstack's side of a remote run, on the remote

}  // namespace sdstack::cli
