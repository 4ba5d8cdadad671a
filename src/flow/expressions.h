// `${{ run.args }}` and friends in workflow commands, filled in when a run is submitted.
#pragma once

#include <string>
#include <vector>

#include "base/status.h"

namespace sdstack::flow {

// `text` quoted for bash so that it arrives as one word, byte for byte: spaces, quotes, `$`,
// backslashes, newlines and globs included ("it's" -> 'it'\''s'). Plain words stay unquoted.
std::string shell_quote(const std::string& text);

struct RunContext {
  std::string name;               // ${{ run.name }}
  std::vector<std::string> args;  // ${{ run.args }}: each quoted, joined by spaces
};

// Replaces every `${{ run.args }}` and `${{ run.name }}` (spaces inside the braces optional) in
// `command`. Anything else in `${{ }}` is an error naming it and the known expressions; `where`
// (e.g. ".sdstack/workflows/sd.yaml:8:5") starts the message.
base::Result<std::string> expand_expressions(const std::string& command, const RunContext& context,
                                             const std::string& where);

}  // namespace sdstack::flow
