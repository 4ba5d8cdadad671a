// CLIP tokenizer against transformers' ids for hard prompts; special tokens, truncation, threads,
// and the errors for broken tokenizer folders.
#include "text/clip_tokenizer.h"

#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "testing/testing.h"

namespace sdstack::text {
namespace {

using sdstack::testing::golden_dir;
using sdstack::testing::have_golden;
using sdstack::testing::TempDir;
using sdstack::testing::write_text_file;

std::string tokenizer_dir() { return golden_dir() + "/tiny-sd/tokenizer"; }

class CLIPTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_golden()) GTEST_SKIP() << "no golden data at " << golden_dir();
    auto tokenizer = CLIPTokenizer::load(tokenizer_dir());
    ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
    tokenizer_ = *tokenizer;
  }

  std::shared_ptr<CLIPTokenizer> tokenizer_;
};

TEST_F(CLIPTokenizerTest, SpecialIdsAndVocabSize) {
  EXPECT_EQ(tokenizer_->bos_id(), 49406);
  EXPECT_EQ(tokenizer_->eos_id(), 49407);
  EXPECT_EQ(tokenizer_->pad_id(), 49407);
  EXPECT_EQ(tokenizer_->vocab_size(), 49408u);
}

// Every case of tokenizer_cases.json: what StableDiffusionPipeline feeds the text encoder.
TEST_F(CLIPTokenizerTest, MatchesTransformersOnGoldenCases) {
  std::ifstream in(golden_dir() + "/tokenizer_cases.json");
  nlohmann::json cases = nlohmann::json::parse(in)["cases"];
  ASSERT_EQ(cases.size(), 21u);
  for (const nlohmann::json& c : cases) {
    std::string prompt = c["prompt"].get<std::string>();
    SCOPED_TRACE("case " + std::to_string(c["index"].get<int>()) + ": \"" + prompt + "\"");
    auto untruncated = c["pipeline_ids_untruncated"].get<std::vector<int32_t>>();
    auto tokens = c["pipeline_tokens"].get<std::vector<std::string>>();
    // The golden lists include bos and eos; encode() and tokenize() do not.
    EXPECT_EQ(tokenizer_->encode_padded(prompt), c["pipeline_ids_77"].get<std::vector<int32_t>>());
    EXPECT_EQ(tokenizer_->encode(prompt), std::vector<int32_t>(untruncated.begin() + 1, untruncated.end() - 1));
    EXPECT_EQ(tokenizer_->tokenize(prompt), std::vector<std::string>(tokens.begin() + 1, tokens.end() - 1));
  }
}

TEST_F(CLIPTokenizerTest, SimplePrompt) {
  EXPECT_EQ(tokenizer_->encode("a photograph of an astronaut riding a horse"),
            (std::vector<int32_t>{320, 8853, 539, 550, 18376, 6765, 320, 4558}));
  EXPECT_EQ(tokenizer_->tokenize("Cats in HATS"), (std::vector<std::string>{"cats</w>", "in</w>", "hats</w>"}));
}

TEST_F(CLIPTokenizerTest, EmptyPromptIsBosEosAndPadding) {
  std::vector<int32_t> ids = tokenizer_->encode_padded("");
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids[0], 49406);
  for (size_t i = 1; i < ids.size(); ++i) EXPECT_EQ(ids[i], 49407);
  EXPECT_TRUE(tokenizer_->encode(" \t\n").empty());
}

TEST_F(CLIPTokenizerTest, LongPromptsAreTruncatedTo75TokensPlusBosEos) {
  std::string prompt;
  for (int i = 0; i < 100; ++i) prompt += "cat ";
  EXPECT_EQ(tokenizer_->encode(prompt).size(), 100u);
  std::vector<int32_t> ids = tokenizer_->encode_padded(prompt);
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids.front(), 49406);
  EXPECT_EQ(ids.back(), 49407);
  EXPECT_EQ(ids[75], tokenizer_->encode("cat")[0]);
  EXPECT_EQ(tokenizer_->encode_padded(prompt, 10).size(), 10u);
}

TEST_F(CLIPTokenizerTest, SpecialTokensInTheText) {
  int32_t cat = tokenizer_->encode("cat")[0];
  EXPECT_EQ(tokenizer_->encode("cat<|endoftext|>cat"), (std::vector<int32_t>{cat, 49407, cat}));
  EXPECT_EQ(tokenizer_->encode("<|startoftext|> cat"), (std::vector<int32_t>{49406, cat}));
  // Not split off before lowercasing, but the CLIP pattern still matches it afterwards.
  EXPECT_EQ(tokenizer_->encode("cat <|ENDOFTEXT|>"), (std::vector<int32_t>{cat, 49407}));
  // Written exactly, it is split off before anything else, even when glued to punctuation...
  EXPECT_EQ(tokenizer_->encode("!<|endoftext|>"), (std::vector<int32_t>{tokenizer_->encode("!")[0], 49407}));
  // ...but in other case only the pattern sees it, and its punctuation run swallows "<|".
  EXPECT_EQ(tokenizer_->tokenize("!<|ENDOFTEXT|>"),
            (std::vector<std::string>{"!", "<", "|</w>", "endof", "text</w>", "|", "></w>"}));
}

TEST_F(CLIPTokenizerTest, PreTokenisation) {
  // Contractions, single digits, punctuation runs.
  EXPECT_EQ(tokenizer_->tokenize("it's 42!!"),
            (std::vector<std::string>{"it</w>", "'s</w>", "4</w>", "2</w>", "!!</w>"}));
  // Text is cleaned by ftfy first: a full-width word becomes ASCII.
  EXPECT_EQ(tokenizer_->encode("ＣＡＴ"), tokenizer_->encode("cat"));
  // Each special-token-free stretch is fixed on its own: here "&amp;" is decoded because the '<'
  // belongs to the special token, not to the stretch.
  EXPECT_EQ(tokenizer_->encode("a &amp; b<|endoftext|>"), tokenizer_->encode("a & b<|endoftext|>"));
  EXPECT_NE(tokenizer_->encode("a &amp; b <x>"), tokenizer_->encode("a & b <x>"));
}

TEST_F(CLIPTokenizerTest, InvalidUtf8BecomesReplacementCharacter) {
  EXPECT_EQ(tokenizer_->encode("cat\xff"), tokenizer_->encode("cat\xEF\xBF\xBD"));
}

TEST_F(CLIPTokenizerTest, SafeToUseFromSeveralThreads) {
  std::vector<std::string> prompts = {"a photograph of an astronaut riding a horse", "cafÃ© crème brûlée",
                                      "emoji 🐱🚀 and flags 🇫🇷", "supercalifragilisticexpialidocious"};
  std::vector<std::vector<int32_t>> expected;
  {
    auto fresh = CLIPTokenizer::load(tokenizer_dir());
    ASSERT_TRUE(fresh.is_ok());
    for (const std::string& prompt : prompts) expected.push_back((*fresh)->encode_padded(prompt));
  }
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        size_t i = (round + t) % prompts.size();
        if (tokenizer_->encode_padded(prompts[i]) != expected[i]) ++failures[t];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
}

// ---- Broken tokenizer folders ----

std::string load_error(const std::string& dir) {
  auto tokenizer = CLIPTokenizer::load(dir);
  if (tokenizer.is_ok()) return "(loaded)";
  return tokenizer.status().message();
}

TEST(CLIPTokenizerErrors, MissingFolderNamesVocabJson) {
  TempDir dir;
  EXPECT_EQ(load_error(dir.file("nowhere")),
            dir.file("nowhere") + "/vocab.json: no such file (is this a CLIP tokenizer folder?)");
}

TEST(CLIPTokenizerErrors, VocabThatIsNotJson) {
  TempDir dir;
  write_text_file(dir.file("vocab.json"), "{\"a\": 1,, }");
  write_text_file(dir.file("merges.txt"), "#version: 0.2\na b\n");
  std::string message = load_error(dir.path());
  EXPECT_EQ(message.rfind(dir.file("vocab.json") + ": not valid JSON at byte 9: ", 0), 0u) << message;
  EXPECT_NE(message.find("(is this a CLIP tokenizer folder?)"), std::string::npos) << message;
}

TEST(CLIPTokenizerErrors, VocabOfTheWrongShape) {
  TempDir dir;
  write_text_file(dir.file("merges.txt"), "#version: 0.2\na b\n");
  write_text_file(dir.file("vocab.json"), "[1, 2]");
  EXPECT_EQ(load_error(dir.path()), dir.file("vocab.json") +
                                        ": is a JSON array, expected an object of token -> id (is this a CLIP "
                                        "tokenizer folder?)");
  write_text_file(dir.file("vocab.json"), R"({"a": "one"})");
  EXPECT_EQ(load_error(dir.path()),
            dir.file("vocab.json") + ": token \"a\" has id \"one\", expected a non-negative integer");
  write_text_file(dir.file("vocab.json"), R"({"a</w>": 0, "<|endoftext|>": 1})");
  EXPECT_EQ(load_error(dir.path()),
            dir.file("vocab.json") + ": has no \"<|startoftext|>\" token (is this a CLIP tokenizer folder?)");
}

TEST(CLIPTokenizerErrors, MergesMissingOrCorrupt) {
  TempDir dir;
  write_text_file(dir.file("vocab.json"),
                  R"({"a": 0, "b</w>": 1, "ab</w>": 2, "<|startoftext|>": 3, "<|endoftext|>": 4})");
  EXPECT_EQ(load_error(dir.path()), dir.file("merges.txt") + ": no such file (is this a CLIP tokenizer folder?)");
  write_text_file(dir.file("merges.txt"), "#version: 0.2\na b</w>\nthree symbols here\n");
  EXPECT_EQ(load_error(dir.path()),
            dir.file("merges.txt") + ":3: expected two symbols separated by a space, got \"three symbols here\"");
  write_text_file(dir.file("merges.txt"), "#version: 0.2\n");
  EXPECT_EQ(load_error(dir.path()), dir.file("merges.txt") + ": has no merges (is this a CLIP tokenizer folder?)");
}

TEST(CLIPTokenizerErrors, TinyValidFolderTokenizes) {
  TempDir dir;
  write_text_file(dir.file("vocab.json"),
                  R"({"a": 0, "b</w>": 1, "ab</w>": 2, "<|startoftext|>": 3, "<|endoftext|>": 4})");
  write_text_file(dir.file("merges.txt"), "#version: 0.2\r\na b</w>\r\n");
  auto tokenizer = CLIPTokenizer::load(dir.path());
  ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  EXPECT_EQ((*tokenizer)->encode("AB"), (std::vector<int32_t>{2}));
  // Byte symbols the vocabulary lacks map to the unknown token, as in transformers.
  EXPECT_EQ((*tokenizer)->encode("c"), (std::vector<int32_t>{4}));
  EXPECT_EQ((*tokenizer)->tokenize("c"), (std::vector<std::string>{"c</w>"}));
  EXPECT_EQ((*tokenizer)->encode_padded("ab", 5), (std::vector<int32_t>{3, 2, 4, 4, 4}));
}

}  // namespace
}  // namespace sdstack::text
