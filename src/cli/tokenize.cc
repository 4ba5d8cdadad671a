// `sdstack tokenize`: a prompt's CLIP token ids, as the pipeline feeds them to the text encoder.
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "text/clip_tokenizer.h"

namespace sdstack::cli {

int run_tokenize(int argc, char** argv) {
  CLI::App app("Print the CLIP token ids of a prompt: [bos] + up to 75 tokens + [eos], padded to 77,\n"
               "exactly as the Stable Diffusion pipeline feeds them to the text encoder.",
               argv[0]);
  std::string model;
  std::vector<std::string> prompts;
  bool json = false, show_tokens = false, no_pad = false;
  app.add_option("-m,--model", model, "Model folder (diffusers layout) or tokenizer folder")->required();
  app.add_option("-P,--prompt", prompts, "Prompt (repeatable)")->required();
  app.add_flag("--json", json, R"(Print {"input_ids": [...]} (a list of lists for several prompts))");
  app.add_flag("--tokens", show_tokens, "Also print the token strings");
  app.add_flag("--no-pad", no_pad, "Print the untruncated ids without bos/eos/padding");
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;

  base::Result<std::string> dir = tokenizer_dir(model);
  if (!dir.is_ok()) return report(dir.status());
  auto tokenizer = text::CLIPTokenizer::load(*dir);
  if (!tokenizer.is_ok()) return report(tokenizer.status());

  nlohmann::json all_ids = nlohmann::json::array();
  nlohmann::json all_tokens = nlohmann::json::array();
  for (const std::string& prompt : prompts) {
    std::vector<int32_t> ids = no_pad ? (*tokenizer)->encode(prompt) : (*tokenizer)->encode_padded(prompt);
    all_ids.push_back(ids);
    all_tokens.push_back((*tokenizer)->tokenize(prompt));
  }
  if (json) {
    nlohmann::json out;
    out["input_ids"] = prompts.size() == 1 ? all_ids[0] : all_ids;
    if (show_tokens) out["tokens"] = prompts.size() == 1 ? all_tokens[0] : all_tokens;
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::string line;
    for (const auto& id : all_ids[i]) line += (line.empty() ? "" : " ") + std::to_string(id.get<int32_t>());
    std::printf("%s\n", line.c_str());
    if (show_tokens) {
      std::string tokens;
      for (const auto& token : all_tokens[i]) tokens += (tokens.empty() ? "" : " ") + token.get<std::string>();
      std::printf("%s\n", tokens.c_str());
    }
  }
  return 0;
}

}  // namespace sdstack::cli
