// ${{ run.args }} substitution: every argument arrives in bash byte for byte.
#include "flow/expressions.h"

#include <gtest/gtest.h>

#include "base/subprocess.h"

namespace sdstack::flow {
namespace {

// What bash makes of `printf '%s\0' <expanded>`: the words it passes, split on NUL.
std::vector<std::string> words_bash_sees(const std::string& expanded) {
  auto output = base::run_process({"bash", "-c", "printf '%s\\0' " + expanded});
  EXPECT_TRUE(output.is_ok()) << output.status().message();
  std::vector<std::string> words;
  std::string word;
  for (char c : output->out) {
    if (c == '\0') {
      words.push_back(word);
      word.clear();
    } else {
      word += c;
    }
  }
  return words;
}

TEST(ExpressionsTest, RunArgsArriveIntactThroughBash) {
  std::vector<std::string> args = {"-P", "cats in hats", "it's \"quoted\"", "$HOME and ${PATH} and $(whoami)",
                                   "back\\slash", "*", "new\nline", "tab\there", "", "`uname`", "a;b|c&d", "~"};
  auto expanded = expand_expressions("${{ run.args }}", {"run-1", args}, "sd.yaml:3:5");
  ASSERT_TRUE(expanded.is_ok()) << expanded.status().message();
  EXPECT_EQ(words_bash_sees(*expanded), args);
}

TEST(ExpressionsTest, PlainWordsStayUnquoted) {
  EXPECT_EQ(shell_quote("--steps=20"), "--steps=20");
  EXPECT_EQ(shell_quote("models/sd"), "models/sd");
  EXPECT_EQ(shell_quote("two words"), "'two words'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(shell_quote(""), "''");
}

TEST(ExpressionsTest, ExpandsEveryOccurrenceAndRunName) {
  auto expanded = expand_expressions("echo ${{run.name}}: ${{ run.args }} / ${{  run.args }}", {"wet-fox-1", {"a b"}},
                                     "x");
  ASSERT_TRUE(expanded.is_ok());
  EXPECT_EQ(*expanded, "echo wet-fox-1: 'a b' / 'a b'");
  auto none = expand_expressions("generate ${{ run.args }}", {"r", {}}, "x");
  ASSERT_TRUE(none.is_ok());
  EXPECT_EQ(*none, "generate ");
}

TEST(ExpressionsTest, UnknownExpressionIsAnErrorWithAHint) {
  auto expanded = expand_expressions("echo ${{ run.arg }}", {"r", {}}, ".sdstack/workflows/sd.yaml:4:5");
  ASSERT_FALSE(expanded.is_ok());
  EXPECT_EQ(expanded.status().message(),
            ".sdstack/workflows/sd.yaml:4:5: unknown expression '${{ run.arg }}' (did you mean 'run.args'?) "
            "(known: run.args, run.name)");
  auto unterminated = expand_expressions("echo ${{ run.args", {"r", {}}, "sd.yaml:1:1");
  ASSERT_FALSE(unterminated.is_ok());
  EXPECT_NE(unterminated.status().message().find("unterminated '${{'"), std::string::npos);
}

}  // namespace
}  // namespace sdstack::flow
