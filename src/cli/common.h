// Helpers shared by the command handlers: argument parsing, error reporting, model lookup.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "base/status.h"

namespace sdstack::cli {

// Exit statuses: 0 success, 1 the command failed, 2 bad usage.
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Parses argv with `app`. Returns -1 when the command should go on, else the exit status to
// return (0 after --help, kExitUsage after a bad argument, with the message printed).
int parse_arguments(CLI::App& app, int argc, char** argv);

// Prints "sdstack: error: <message>" to stderr and returns kExitFailure.
int report(const base::Status& status);

// The tokenizer folder of a model: DIR/tokenizer when DIR is a diffusers folder, DIR itself when
// it holds vocab.json and merges.txt.
base::Result<std::string> tokenizer_dir(const std::string& model);

}  // namespace sdstack::cli
