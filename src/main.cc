// The sdstack program: everything lives in the cli layer.
#include "cli/commands.h"

int main(int argc, char** argv) { return sdstack::cli::main(argc, argv); }
