// `sdstack bench`: FLOPs counted on a counting backend, the machine's peak, each component timed.
#include "pipeline/bench.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "backend/backend.h"
#include "io/model_folder.h"
#include "models/config_reader.h"
#include "models/presets.h"
#include "models/random_weights.h"

namespace sdstack::pipeline {

using base::Result;
using tensor::Shape;
using tensor::Tensor;

namespace {

// ---- the counting backend -----------------------------------------------------------------------

// Layers and ops that compute nothing and add their multiply-adds (x2) to one shared counter.
class CountingConv2d : public backend::Conv2d {
 public:
  CountingConv2d(const Shape& weight, const backend::Conv2dParams& params, double& flops)
      : in_(weight[1]), out_(weight[0]), kernel_(weight[2]), params_(params), flops_(flops) {}
  // x: [N, H, W, Cin]; y: [N, Ho, Wo, Cout].
  void run(const Tensor&, Tensor& y, const backend::Conv2dExtras&) override {
    flops_ += 2.0 * static_cast<double>(y.numel()) * static_cast<double>(in_ * kernel_ * kernel_);
  }
  // The architecture's work, the convolution on the upsampled input, whatever a backend saves.
  void run_upsampled2x(const Tensor& x, Tensor& y, Tensor&) override { run(x, y, {}); }
  int64_t in_channels() const override { return in_; }
  int64_t out_channels() const override { return out_; }
  int64_t kernel_size() const override { return kernel_; }
  const backend::Conv2dParams& params() const override { return params_; }

 private:
  int64_t in_, out_, kernel_;
  backend::Conv2dParams params_;
  double& flops_;
};

class CountingLinear : public backend::Linear {
 public:
  CountingLinear(const Shape& weight, double& flops) : in_(weight[1]), out_(weight[0]), flops_(flops) {}
  // x: [..., in]; y: [..., out].
  void run(const Tensor&, Tensor& y, const backend::LinearExtras&) override {
    flops_ += 2.0 * static_cast<double>(y.numel()) * static_cast<double>(in_);
  }
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }

 private:
  int64_t in_, out_;
  double& flops_;
};

class CountingBackend : public backend::Backend {
 public:
  std::string name() const override { return "flop-counter"; }
  std::unique_ptr<backend::Conv2d> make_conv2d(const Tensor& weight, const Tensor&,
                                               const backend::Conv2dParams& params) override {
    return std::make_unique<CountingConv2d>(weight.shape(), params, flops_);
  }
  std::unique_ptr<backend::Linear> make_linear(const Tensor& weight, const Tensor&) override {
    return std::make_unique<CountingLinear>(weight.shape(), flops_);
  }
  // a: [B, M, K]; y: [B, M, N].
  void matmul(const Tensor& a, const Tensor&, Tensor& y, bool, float) override {
    flops_ += 2.0 * static_cast<double>(y.numel()) * static_cast<double>(a.dim(-1));
  }
  // q: [B, Lq, H*D], k: [B, Lk, H*D]: q k^T and p v, each B * H * Lq * Lk * D multiply-adds.
  void attention(const Tensor& q, const Tensor& k, const Tensor&, int64_t, bool, Tensor&) override {
    flops_ += 2.0 * 2.0 * static_cast<double>(q.numel()) * static_cast<double>(k.dim(1));
  }
  void group_norm(const Tensor&, const Tensor&, const Tensor&, int64_t, float, backend::Activation, Tensor&) override {}
  void layer_norm(const Tensor&, const Tensor&, const Tensor&, float, Tensor&) override {}
  void softmax(const Tensor&, Tensor&) override {}
  void activation(const Tensor&, backend::Activation, Tensor&) override {}
  void geglu(const Tensor&, Tensor&) override {}
  void add(const Tensor&, const Tensor&, Tensor&) override {}
  void mul(const Tensor&, const Tensor&, Tensor&) override {}
  void scale(const Tensor&, float, Tensor&) override {}
  void upsample_nearest2x(const Tensor&, Tensor&) override {}
  void concat_last(const Tensor&, const Tensor&, Tensor&) override {}

  double flops() const { return flops_; }

 private:
  double flops_ = 0;
};

models::RandomWeightSource shapes_only_weights() {
  models::RandomWeightOptions options;
  options.shapes_only = true;
  return models::RandomWeightSource(options);
}

// ---- the inputs each component runs on ----------------------------------------------------------

// One prompt of the full length (what the pipeline encodes per prompt).
std::vector<std::vector<int32_t>> clip_ids(int64_t batch, int64_t length) {
  return std::vector<std::vector<int32_t>>(static_cast<size_t>(batch),
                                           std::vector<int32_t>(static_cast<size_t>(length), 0));
}

Tensor unet_text_embeddings(const models::UNet2DConditionConfig& config, int64_t batch, int64_t text_length) {
  const int64_t width = config.cross_attention_dim.empty() ? 768 : config.cross_attention_dim.front();
  return Tensor::zeros({batch, text_length, width});
}

}  // namespace

// ---- FLOP counts ----------------------------------------------------------------------------------

Result<double> clip_text_flops(const models::CLIPTextConfig& config, int64_t batch, int64_t length) {
  CountingBackend counter;
  models::RandomWeightSource weights = shapes_only_weights();
  SD_ASSIGN_OR_RETURN(auto model, models::CLIPTextModel::create(config, weights, counter));
  SD_ASSIGN_OR_RETURN(Tensor hidden, model->encode(clip_ids(batch, length)));
  return counter.flops();
}

Result<double> unet_flops(const models::UNet2DConditionConfig& config, int64_t batch, int64_t latent_height,
                          int64_t latent_width, int64_t text_length) {
  CountingBackend counter;
  models::RandomWeightSource weights = shapes_only_weights();
  SD_ASSIGN_OR_RETURN(auto model, models::UNet2DConditionModel::create(config, weights, counter));
  Tensor sample = Tensor::zeros({batch, latent_height, latent_width, config.in_channels});
  SD_ASSIGN_OR_RETURN(Tensor noise_pred,
                      model->forward(sample, 999.0f, unet_text_embeddings(config, batch, text_length)));
  return counter.flops();
}

Result<double> vae_decode_flops(const models::AutoencoderKLConfig& config, int64_t batch, int64_t latent_height,
                                int64_t latent_width) {
  CountingBackend counter;
  models::RandomWeightSource weights = shapes_only_weights();
  SD_ASSIGN_OR_RETURN(auto model, models::AutoencoderKL::create(config, weights, counter));
  SD_ASSIGN_OR_RETURN(Tensor image,
                      model->decode(Tensor::zeros({batch, latent_height, latent_width, config.latent_channels})));
  return counter.flops();
}

// ---- the benchmark --------------------------------------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  if (n == 0) return 0;
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

double peak_rss_mb() {
  struct rusage usage = {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux reports KiB
}

// The best GFLOP/s of `flop` worth of work over a warm-up and timed runs of `once`: at least four,
// and at least a quarter second of them (a run takes a few ms at peak), so that a moment of other
// load on the machine cannot spoil them all.
double best_gflops(double flop, const std::function<void()>& once) {
  once();
  double best = 1e30;
  const Clock::time_point begin = Clock::now();
  for (int i = 0; i < 4 || (i < 1000 && seconds_since(begin) < 0.25); ++i) {
    Clock::time_point start = Clock::now();
    once();
    best = std::min(best, seconds_since(start));
  }
  return flop / best / 1e9;
}

// The peak of one compute dtype: the better of a 2048^3 matmul (17.2 GFLOP; both operands are
// activations, converted per call in bf16) and the UNet's commonest layer, a 320->320 3x3 conv on
// [2, 64, 64, 320] (15.1 GFLOP, weights prepared once). nullopt where the backend refuses the dtype.
std::optional<double> measure_peak(tensor::DType dtype, int threads) {
  auto made = backend::make_backend("cpu", backend::BackendOptions{threads, dtype});
  if (!made.is_ok()) return std::nullopt;
  backend::Backend& backend = **made;

  constexpr int64_t kSize = 2048;
  Tensor a = Tensor::empty({1, kSize, kSize}), b = Tensor::empty({1, kSize, kSize});
  a.fill(0.5f);
  b.fill(0.25f);
  Tensor product = Tensor::empty({1, kSize, kSize});
  const double matmul_flop = 2.0 * static_cast<double>(kSize * kSize * kSize);
  const double matmul_gflops = best_gflops(matmul_flop, [&] { backend.matmul(a, b, product); });

  constexpr int64_t kBatch = 2, kSide = 64, kChannels = 320;
  Tensor weight = Tensor::empty({kChannels, kChannels, 3, 3});
  weight.fill(0.01f);
  backend::Conv2dParams params;
  params.padding = 1;
  std::unique_ptr<backend::Conv2d> conv = backend.make_conv2d(weight, Tensor(), params);
  Tensor x = Tensor::empty({kBatch, kSide, kSide, kChannels}), y = Tensor::empty({kBatch, kSide, kSide, kChannels});
  x.fill(0.5f);
  const double conv_flop = 2.0 * static_cast<double>(kBatch * kSide * kSide * kChannels * kChannels * 9);
  const double conv_gflops = best_gflops(conv_flop, [&] { conv->run(x, y); });
  return std::max(matmul_gflops, conv_gflops);
}

// Every config the benchmark needs, from a preset or a folder.
struct ModelConfigs {
  std::optional<io::ModelFolder> folder;
  nlohmann::json text_encoder, unet, vae;
};

Result<ModelConfigs> model_configs(const BenchOptions& options) {
  ModelConfigs configs;
  if (!options.model_dir.empty()) {
    SD_ASSIGN_OR_RETURN(io::ModelFolder folder, io::ModelFolder::open(options.model_dir));
    SD_ASSIGN_OR_RETURN(configs.text_encoder, folder.config("text_encoder"));
    SD_ASSIGN_OR_RETURN(configs.unet, folder.config("unet"));
    SD_ASSIGN_OR_RETURN(configs.vae, folder.config("vae"));
    configs.folder = std::move(folder);
    return configs;
  }
  SD_ASSIGN_OR_RETURN(models::ModelPreset preset, models::model_preset(options.preset));
  configs.text_encoder = preset.text_encoder;
  configs.unet = preset.unet;
  configs.vae = preset.vae;
  return configs;
}

// Runs `once` one warm-up time and `repeat` timed times into `bench`.
base::Status time_runs(int repeat, const std::function<base::Status()>& once, ComponentBench& bench) {
  SD_RETURN_IF_ERROR(once());
  for (int i = 0; i < repeat; ++i) {
    Clock::time_point start = Clock::now();
    SD_RETURN_IF_ERROR(once());
    bench.seconds.push_back(seconds_since(start));
  }
  bench.median_s = median(bench.seconds);
  return base::Status::ok();
}

// One cold generate() as `sdstack generate` runs it, and what the timed components predict for it.
Result<GenerateBench> time_generate(const BenchOptions& options, int64_t width, int64_t height,
                                    backend::Backend& backend, const std::vector<ComponentBench>& components) {
  auto median_of = [&](const std::string& name) {
    for (const ComponentBench& bench : components) {
      if (bench.name == name) return bench.median_s;
    }
    return 0.0;
  };
  Clock::time_point start = Clock::now();
  SD_ASSIGN_OR_RETURN(auto pipeline,
                      StableDiffusionPipeline::load(options.model_dir, backend, {.residency = Residency::kOneAtATime}));
  GenerateRequest request;
  request.prompts = {"cats in hats"};
  request.steps = options.generate_steps;
  request.width = width;
  request.height = height;
  request.seed = 0;
  GenerateBench bench;
  SD_ASSIGN_OR_RETURN(GenerateResult generated, pipeline->generate(request, {}, &bench.stages));
  bench.seconds = seconds_since(start);
  bench.steps = options.generate_steps;
  bench.unet_calls = static_cast<int>(bench.stages.step_s.size());
  bench.predicted_s = bench.unet_calls * median_of("unet") + 2 * median_of("clip") + median_of("vae");
  bench.overhead_ratio = bench.predicted_s > 0 ? bench.seconds / bench.predicted_s : 0;
  return bench;
}

}  // namespace

Result<BenchResult> run_bench(const BenchOptions& options, const BenchProgress& progress) {
  auto say = [&](const std::string& what) {
    if (progress) progress(what);
  };
  for (const std::string& name : options.components) {
    if (std::find(bench_component_names().begin(), bench_component_names().end(), name) ==
        bench_component_names().end()) {
      return base::invalid_argument("unknown component '" + name + "' (known: clip, unet, vae)");
    }
  }
  if (options.repeat < 1) return base::invalid_argument("repeat must be at least 1");
  if (options.generate_steps > 0) {
    if (options.model_dir.empty()) {
      return base::invalid_argument(
          "timing generate needs a model folder (--model DIR; sdstack make-model --preset sd15 writes one)");
    }
    for (const std::string& name : bench_component_names()) {
      if (std::find(options.components.begin(), options.components.end(), name) == options.components.end()) {
        return base::invalid_argument("timing generate needs the clip, unet and vae components to compare with (" +
                                      name + " is not among them)");
      }
    }
  }
  if (options.compute_dtype != tensor::DType::kF32 && options.compute_dtype != tensor::DType::kBF16) {
    return base::invalid_argument(std::string("compute dtype ") + tensor::dtype_name(options.compute_dtype) +
                                  " is not benchmarked (f32 or bf16)");
  }

  SD_ASSIGN_OR_RETURN(ModelConfigs configs, model_configs(options));
  SD_ASSIGN_OR_RETURN(auto text_config,
                      models::CLIPTextConfig::from_json(configs.text_encoder, "text_encoder/config.json"));
  SD_ASSIGN_OR_RETURN(auto unet_config, models::UNet2DConditionConfig::from_json(configs.unet, "unet/config.json"));
  SD_ASSIGN_OR_RETURN(auto vae_config, models::AutoencoderKLConfig::from_json(configs.vae, "vae/config.json"));

  // Sizes: the image is the VAE's scale factor times the latents; the default is the UNet's sample_size.
  const int64_t scale = int64_t{1} << (vae_config.block_out_channels.size() - 1);
  models::ConfigReader unet_reader(configs.unet, "unet/config.json");
  SD_ASSIGN_OR_RETURN(int64_t sample_size, unet_reader.integer("sample_size", 64));
  BenchResult result;
  result.compute_dtype = options.compute_dtype;
  result.width = options.width > 0 ? options.width : sample_size * scale;
  result.height = options.height > 0 ? options.height : sample_size * scale;
  if (result.width % scale != 0 || result.height % scale != 0) {
    return base::invalid_argument("width and height must be multiples of " + std::to_string(scale) + " (got " +
                                  std::to_string(result.width) + "x" + std::to_string(result.height) + ")");
  }
  const int64_t latent_h = result.height / scale, latent_w = result.width / scale;
  const int64_t text_length = text_config.max_position_embeddings;
  result.model = options.model_dir.empty() ? "random " + options.preset : options.model_dir;

  say("measuring peak GFLOP/s (f32, bf16)");
  std::optional<double> f32_peak = measure_peak(tensor::DType::kF32, options.threads);
  if (!f32_peak) return base::internal_error("the cpu backend did not start");
  result.peak.f32 = *f32_peak;
  result.peak.bf16 = measure_peak(tensor::DType::kBF16, options.threads);
  if (options.compute_dtype == tensor::DType::kBF16 && !result.peak.bf16) {
    return base::invalid_argument("bf16 compute needs a CPU with AVX512-BF16 or AMX; this one has neither");
  }

  SD_ASSIGN_OR_RETURN(auto backend,
                      backend::make_backend("cpu", backend::BackendOptions{options.threads, options.compute_dtype}));
  result.threads = backend::num_threads();
  auto wanted = [&](const char* name) {
    return std::find(options.components.begin(), options.components.end(), name) != options.components.end();
  };
  models::RandomWeightSource random_weights;

  if (wanted("clip")) {
    say("clip: counting and building");
    ComponentBench bench{.name = "clip", .workload = "1 x " + std::to_string(text_length) + " tokens"};
    SD_ASSIGN_OR_RETURN(double flops, clip_text_flops(text_config, 1, text_length));
    bench.gflop = flops / 1e9;
    std::unique_ptr<models::CLIPTextModel> model;
    if (configs.folder) {
      SD_ASSIGN_OR_RETURN(model, models::CLIPTextModel::load(*configs.folder, *backend));
    } else {
      SD_ASSIGN_OR_RETURN(model, models::CLIPTextModel::create(text_config, random_weights, *backend));
      random_weights.clear();
    }
    say("clip: running");
    auto ids = clip_ids(1, text_length);
    SD_RETURN_IF_ERROR(time_runs(
        options.repeat, [&] { return model->encode(ids).status(); }, bench));
    result.components.push_back(bench);
  }
  if (wanted("unet")) {
    say("unet: counting and building");
    ComponentBench bench{
        .name = "unet",
        .workload = "batch 2, " + std::to_string(latent_w) + "x" + std::to_string(latent_h) + " latents"};
    SD_ASSIGN_OR_RETURN(double flops, unet_flops(unet_config, 2, latent_h, latent_w, text_length));
    bench.gflop = flops / 1e9;
    std::unique_ptr<models::UNet2DConditionModel> model;
    if (configs.folder) {
      SD_ASSIGN_OR_RETURN(model, models::UNet2DConditionModel::load(*configs.folder, *backend));
    } else {
      SD_ASSIGN_OR_RETURN(model, models::UNet2DConditionModel::create(unet_config, random_weights, *backend));
      random_weights.clear();
    }
    say("unet: running");
    Tensor sample = Tensor::zeros({2, latent_h, latent_w, unet_config.in_channels});
    sample.fill(0.5f);
    Tensor text = unet_text_embeddings(unet_config, 2, text_length);
    SD_RETURN_IF_ERROR(time_runs(
        options.repeat, [&] { return model->forward(sample, 999.0f, text).status(); }, bench));
    result.components.push_back(bench);
  }
  if (wanted("vae")) {
    say("vae: counting and building");
    ComponentBench bench{
        .name = "vae", .workload = "decode, " + std::to_string(latent_w) + "x" + std::to_string(latent_h) + " latents"};
    SD_ASSIGN_OR_RETURN(double flops, vae_decode_flops(vae_config, 1, latent_h, latent_w));
    bench.gflop = flops / 1e9;
    std::unique_ptr<models::AutoencoderKL> model;
    if (configs.folder) {
      SD_ASSIGN_OR_RETURN(model, models::AutoencoderKL::load(*configs.folder, *backend, "",
                                                             models::AutoencoderKL::Parts::kDecoderOnly));
    } else {
      SD_ASSIGN_OR_RETURN(model, models::AutoencoderKL::create(vae_config, random_weights, *backend));
      random_weights.clear();
    }
    say("vae: running");
    Tensor latents = Tensor::zeros({1, latent_h, latent_w, vae_config.latent_channels});
    latents.fill(0.5f);
    SD_RETURN_IF_ERROR(time_runs(
        options.repeat, [&] { return model->decode(latents).status(); }, bench));
    result.components.push_back(bench);
  }

  // The peaks once more, after the components, keeping the better measurement of each: a peak
  // measured low while something else ran (once seen at half of AMX's) would inflate every ratio.
  say("measuring peak GFLOP/s again");
  result.peak.f32 = std::max(result.peak.f32, measure_peak(tensor::DType::kF32, options.threads).value_or(0.0));
  if (result.peak.bf16) {
    result.peak.bf16 = std::max(*result.peak.bf16, measure_peak(tensor::DType::kBF16, options.threads).value_or(0.0));
  }
  const double peak = options.compute_dtype == tensor::DType::kBF16 ? *result.peak.bf16 : result.peak.f32;
  for (ComponentBench& bench : result.components) {
    bench.gflops = bench.median_s > 0 ? bench.gflop / bench.median_s : 0;
    bench.pct_of_peak = peak > 0 ? 100.0 * bench.gflops / peak : 0;
  }
  if (options.generate_steps > 0) {
    say("generate: " + std::to_string(options.generate_steps) + " steps");
    SD_ASSIGN_OR_RETURN(result.generate,
                        time_generate(options, result.width, result.height, *backend, result.components));
  }
  result.peak_rss_mb = peak_rss_mb();
  return result;
}

nlohmann::ordered_json bench_json(const BenchResult& result) {
  nlohmann::ordered_json json;
  json["dtype"] = tensor::dtype_name(result.compute_dtype);
  json["width"] = result.width;
  json["height"] = result.height;
  json["peak_gflops"] = {
      {"f32", result.peak.f32},
      {"bf16", result.peak.bf16 ? nlohmann::ordered_json(*result.peak.bf16) : nlohmann::ordered_json(nullptr)}};
  nlohmann::ordered_json components = nlohmann::ordered_json::object();
  for (const ComponentBench& bench : result.components) {
    components[bench.name] = {{"median_s", bench.median_s},
                              {"gflop", bench.gflop},
                              {"gflops", bench.gflops},
                              {"pct_of_peak", bench.pct_of_peak}};
  }
  json["components"] = components;
  if (result.generate) {
    const GenerateBench& generate = *result.generate;
    json["generate"] = {{"steps", generate.steps},
                        {"unet_calls", generate.unet_calls},
                        {"seconds", generate.seconds},
                        {"predicted_s", generate.predicted_s},
                        {"overhead_ratio", generate.overhead_ratio},
                        {"load_s", generate.stages.load_s},
                        {"encode_s", generate.stages.encode_s},
                        {"denoise_s", generate.stages.denoise_s},
                        {"decode_s", generate.stages.decode_s}};
  }
  json["peak_rss_mb"] = result.peak_rss_mb;
  return json;
}

}  // namespace sdstack::pipeline
