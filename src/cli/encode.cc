// `sdstack encode`: a prompt's CLIP text embedding (what conditions the UNet), saved as .npy.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "io/model_folder.h"
#include "io/npy.h"
#include "models/clip_text_model.h"
#include "text/clip_tokenizer.h"

namespace sdstack::cli {
namespace {

struct Statistics {
  double mean = 0, std = 0, min = 0, max = 0;
};

Statistics statistics(const tensor::Tensor& t) {
  std::vector<float> values = t.to_vector();
  Statistics s;
  if (values.empty()) return s;
  s.min = s.max = values[0];
  double sum = 0, sum_sq = 0;
  for (float v : values) {
    sum += v;
    sum_sq += static_cast<double>(v) * v;
    s.min = std::min<double>(s.min, v);
    s.max = std::max<double>(s.max, v);
  }
  double n = static_cast<double>(values.size());
  s.mean = sum / n;
  s.std = std::sqrt(std::max(0.0, sum_sq / n - s.mean * s.mean));
  return s;
}

}  // namespace

int run_encode(int argc, char** argv) {
  CLI::App app("Compute the CLIP text embedding of prompts ([prompts, 77, hidden], the text encoder's\n"
               "last hidden state after its final layer norm) and save it as a float32 .npy file.",
               argv[0]);
  std::string model, out_path, backend_name = "cpu", variant, dtype = "f32";
  std::vector<std::string> prompts;
  int clip_skip = 0, threads = 0;
  app.add_option("-m,--model", model, "Model folder (diffusers layout)")->required();
  app.add_option("-P,--prompt", prompts, "Prompt (repeatable: one row of the batch each)")->required();
  app.add_option("-o,--out", out_path, "Write the embedding here (.npy, float32)");
  app.add_option("--clip-skip", clip_skip, "Skip the last N text encoder layers (as diffusers' clip_skip)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--threads", threads, "Threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--dtype", dtype, "Compute type of linears and attention (bf16: AVX512-BF16 or AMX)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  app.add_option("--backend", backend_name, "Compute backend")->check(CLI::IsMember({"cpu", "reference"}));
  app.add_option("--variant", variant, "Weight variant to prefer (fp16)")->check(CLI::IsMember({"", "fp16"}));
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;

  auto folder = io::ModelFolder::open(model);
  if (!folder.is_ok()) return report(folder.status());
  base::Result<std::string> dir = tokenizer_dir(model);
  if (!dir.is_ok()) return report(dir.status());
  auto tokenizer = text::CLIPTokenizer::load(*dir);
  if (!tokenizer.is_ok()) return report(tokenizer.status());
  const tensor::DType compute_dtype = dtype == "bf16" ? tensor::DType::kBF16 : tensor::DType::kF32;
  auto backend = backend::make_backend(backend_name, {.threads = threads, .compute_dtype = compute_dtype});
  if (!backend.is_ok()) return report(backend.status());
  auto encoder = models::CLIPTextModel::load(*folder, **backend, variant);
  if (!encoder.is_ok()) return report(encoder.status());

  std::vector<std::vector<int32_t>> ids;
  const size_t max_length = static_cast<size_t>((*encoder)->config().max_position_embeddings);
  for (const std::string& prompt : prompts) ids.push_back((*tokenizer)->encode_padded(prompt, max_length));
  auto embedding = (*encoder)->encode(ids, clip_skip);
  if (!embedding.is_ok()) return report(embedding.status());

  if (!out_path.empty()) {
    if (base::Status status = io::write_npy(out_path, *embedding); !status.is_ok()) return report(status);
  }
  Statistics s = statistics(*embedding);
  std::printf("%s%s f32  mean %.6f  std %.6f  min %.6f  max %.6f\n",
              out_path.empty() ? "" : ("wrote " + out_path + ": ").c_str(), embedding->shape_string().c_str(), s.mean,
              s.std, s.min, s.max);
  return 0;
}

}  // namespace sdstack::cli
