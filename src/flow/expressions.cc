// Expression substitution for workflow commands.
#include "flow/expressions.h"

#include "base/strings.h"

namespace sdstack::flow {

std::string shell_quote(const std::string& text) {
  bool plain = !text.empty();
  for (char c : text) {
    bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                c == '_' || c == '.' || c == '/' || c == ',' || c == ':' || c == '=' || c == '+' || c == '@';
    if (!safe) plain = false;
  }
  if (plain) return text;
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

base::Result<std::string> expand_expressions(const std::string& command, const RunContext& context,
                                             const std::string& where) {
  std::string result;
  size_t position = 0;
  while (true) {
    size_t open = command.find("${{", position);
    if (open == std::string::npos) break;
    size_t close = command.find("}}", open + 3);
    if (close == std::string::npos) {
      return base::invalid_argument(where + ": unterminated '${{' in command '" + command + "' (close it with '}}')");
    }
    std::string expression = command.substr(open + 3, close - open - 3);
    size_t first = expression.find_first_not_of(" \t");
    size_t last = expression.find_last_not_of(" \t");
    expression = first == std::string::npos ? "" : expression.substr(first, last - first + 1);
    result += command.substr(position, open - position);
    if (expression == "run.args") {
      for (size_t i = 0; i < context.args.size(); ++i) {
        if (i > 0) result += ' ';
        result += shell_quote(context.args[i]);
      }
    } else if (expression == "run.name") {
      result += shell_quote(context.name);
    } else {
      return base::invalid_argument(where + ": unknown expression '${{ " + expression + " }}'" +
                                    base::did_you_mean(expression, {"run.args", "run.name"}) +
                                    " (known: run.args, run.name)");
    }
    position = close + 2;
  }
  result += command.substr(position);
  return result;
}

}  // namespace sdstack::flow
