// `sdstack pull`: a diffusers pipeline from the Hugging Face Hub into the shared cache (or a folder).
#include "hub/pull.h"

#include <cstdio>
#include <string>
#include <vector>

#include "base/progress.h"
#include "cli/common.h"

namespace sdstack::cli {

int run_pull(int argc, char** argv) {
  CLI::App app(
      "Download what a diffusers pipeline needs from the Hugging Face Hub: model_index.json, the\n"
      "components' configs and tokenizer files, and their .safetensors weights (no safety checker,\n"
      "no pickles, no EMA extras). Files go to the Hugging Face cache, shared with diffusers\n"
      "($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub); the folder is printed.\n"
      "Downloads resume where they stopped and are verified (sha256) before they are used.\n"
      "Environment: HF_TOKEN (token for gated or private repos), HF_ENDPOINT (a mirror),\n"
      "HF_HUB_OFFLINE=1 (cache only).",
      argv[0]);
  hub::PullRequest request;
  hub::HubSettings settings = hub::HubSettings::from_environment();
  std::string token, cache_dir;
  bool offline = false;
  app.add_option("repo_id", request.repo_id, "Hub repository id, like runwayml/stable-diffusion-v1-5")
      ->required()
      ->type_name("ORG/NAME");
  app.add_option("-r,--revision", request.revision, "Branch, tag or commit hash")
      ->type_name("REV")
      ->capture_default_str();
  app.add_option("--variant", request.select.variant, "Weight variant to prefer where a component has it (fp16)")
      ->type_name("NAME");
  app.add_option("--to", request.to_dir, "Also copy the files into DIR as plain files (no symlinks)")->type_name("DIR");
  app.add_option("--include", request.select.include,
                 "Also pull files matching GLOB ('*' crosses '/'), e.g. 'safety_checker/*' (repeatable)")
      ->type_name("GLOB");
  app.add_option("--exclude", request.select.exclude, "Skip files matching GLOB, applied last (repeatable)")
      ->type_name("GLOB");
  app.add_option("--token", token, "Hub token for gated or private repos (prefer HF_TOKEN: arguments show in ps)")
      ->type_name("TOKEN");
  app.add_flag("--offline", offline, "Use only the cache, never the network (as HF_HUB_OFFLINE=1)");
  app.add_option("--cache-dir", cache_dir, "Hugging Face cache folder (default: " + settings.cache_dir + ")")
      ->type_name("DIR");
  app.add_option("-j,--jobs", request.jobs, "Files downloaded at once (1 to 32)")
      ->type_name("N")
      ->capture_default_str()
      ->check(CLI::Range(1, 32));
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  if (!token.empty()) settings.token = token;
  if (!cache_dir.empty()) settings.cache_dir = cache_dir;
  if (offline) settings.offline = true;

  auto result = hub::pull(settings, request);
  if (!result.is_ok()) return report(result.status());
  const std::string where = request.repo_id + " (" + request.revision +
                            (request.revision == result->commit ? "" : ", commit " + result->commit.substr(0, 7)) + ")";
  if (result->offline) {
    std::fprintf(stderr, "sdstack: %s from the cache (offline): %zu files\n", where.c_str(), result->files.size());
  } else {
    std::fprintf(stderr, "sdstack: pulled %s: %zu files, %d downloaded (%s), %d already in the cache\n", where.c_str(),
                 result->files.size(), result->downloaded_files, base::format_bytes(result->downloaded_bytes).c_str(),
                 result->cached_files);
  }
  std::printf("%s\n", result->folder.c_str());
  return 0;
}

}  // namespace sdstack::cli
