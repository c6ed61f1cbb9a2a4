// `diffuflow sample`: images from a trained model in one line.
//
//   diffuflow sample MODEL [-n 64] [--steps 50] [--sampler ddim|ddpm|dpmpp|euler|euler_ancestral|unipc] [--eta 0]
//                    [--class all|C|C1,C2] [--guidance W] [--clip auto|on|off] [--seed 0] [--batch 256]
//                    [-o samples.png | -o DIR] [--precision f32|bf16] [--threads N] [--teams R]
//                    [--set NODE.PARAM=VALUE]
//                    [--print-pipeline]
//
// MODEL is a training checkpoint, a run folder (its checkpoints/latest.safetensors)
// or a diffusers folder. The command builds the sampling graph a pipeline file
// would hold (noise_source -> limiter -> sampler <-> model_forward -> tensor_writer;
// --print-pipeline prints it as YAML for `diffuflow run`) and runs it like
// `diffuflow run`. The model's config and noise schedule come from the
// checkpoint's metadata or the folder's config files; --set changes any
// parameter of that graph as `diffuflow run --set` does (the solver's keys:
// --set schedule.solver_order=3 --set schedule.algorithm_type=sde-dpmsolver++). Every random draw is keyed
// by (seed, image index), so a seed gives the same images whatever --batch and
// --threads. Output: one grid PNG (-o FILE.png) or one PNG per image (-o DIR),
// each with a tEXt chunk `parameters`, and the exact values as .safetensors.
//
// A class-conditional model draws the classes --class names (all of them by
// default), image i taking the (i mod count)-th class; the grid shows one row
// per class. --guidance W applies classifier-free guidance (one U-Net call on
// 2N images per step; 1: the conditional prediction alone). Guided DDIM and
// DDPM run without clipping the x_0 estimates unless --clip on: clipping the
// amplified estimates at every step ruins the digits (docs/conditioning.md).
#include "graph/errors.hpp"
#include "graph/safetensors.hpp"
#include "graph/spec_builder.hpp"
#include "nodes/common/images.hpp"
#include "nodes/common/output_files.hpp"
#include "nodes/diffusion/noise_source.hpp"
#include "nodes/diffusion/reverse_chain.hpp"
#include "nodes/diffusion/trained_settings.hpp"
#include "nodes/model/unet_model.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"
#include "runners/options.hpp"
#include "runners/run.hpp"

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>

namespace diffuflow {

namespace fs = std::filesystem;

namespace {

// What the user asked for. New sampling options go here and into sampling_pipeline().
struct SampleRequest {
  std::string model;
  int64_t count = 64;
  std::string classes;        // GuidanceOptions::classes; empty for an unconditional model
  std::vector<int32_t> class_list;  // the classes it names, in order
  double guidance = 1.0;
  bool clip = true;           // the sampler's `clip` (DDIM/DDPM: x_0 estimates clipped at every step)
  int64_t steps = 50;
  SamplerMethod sampler = SamplerMethod::ddim;
  double eta = 0;
  int64_t seed = 0;
  int64_t batch = 256;
  std::string out = "samples.png";
  Precision precision = Precision::f32;
  std::vector<std::string> sets;  // --set overrides, as given
};

// The model MODEL names: what unet_model loads and the schedule it was trained with.
struct SampleModel {
  std::string weights;            // a checkpoint file or a diffusers folder
  UNetConfig config;              // its network (for the image size)
  std::string schedule_config;    // noise_schedule's `config`: inline JSON, a folder, or empty (defaults)
  std::vector<int64_t> image_shape;  // [C, H, W]
};

ConfigError model_error(const std::string& what) { return ConfigError(SourceLocation{"MODEL", 0, 0, ""}, what); }

SampleModel resolve_model(const std::string& model) {
  std::error_code ec;
  if (!fs::exists(model, ec)) throw model_error("'" + model + "' does not exist");
  SampleModel out;
  if (fs::is_directory(model)) {
    const fs::path latest = fs::path(model) / "checkpoints" / "latest.safetensors";
    if (fs::is_regular_file(latest)) {
      out.weights = latest.string();
    } else if (fs::is_regular_file(fs::path(model) / "model_index.json") ||
               fs::is_regular_file(fs::path(model) / "config.json")) {
      out.weights = model;
      try {
        out.schedule_config = SchedulerConfig::config_file(model).parent_path().string();
      } catch (const ConfigError&) {
        std::cerr << "diffuflow sample: '" << model
                  << "' holds no scheduler config; sampling with diffusers' default DDPMScheduler settings\n";
      }
    } else {
      throw model_error("'" + model +
                        "' is neither a run folder (checkpoints/latest.safetensors) nor a diffusers folder "
                        "(model_index.json or config.json)");
    }
  } else {
    out.weights = model;
  }
  if (out.schedule_config.empty() && fs::is_regular_file(out.weights)) {
    const SafetensorsFile file = SafetensorsFile::read(out.weights);
    auto kind = file.metadata().find("model_kind");
    if (kind != file.metadata().end() && kind->second != "unet") {
      throw model_error("'" + out.weights + "' holds a '" + kind->second +
                        "' model; diffuflow sample draws images from U-Nets (use a sampling pipeline for others)");
    }
    if (auto trained = trained_settings_from(file.metadata(), out.weights)) {
      out.schedule_config = nlohmann::json::parse(trained->to_json()).dump();  // one line in the pipeline
    } else {
      std::cerr << "diffuflow sample: '" << out.weights
                << "' records no noise schedule (written by an earlier version); sampling with the default "
                   "linear schedule of 1000 steps and epsilon prediction\n";
    }
  }
  UNetModelResource::Params params;
  params.weights = out.weights;
  out.config = UNetModelResource::resolve(params).config;
  if (out.config.sample_size <= 0) {
    throw model_error("the model config of '" + model + "' has no sample_size, so the image size is unknown");
  }
  const int64_t width = out.config.sample_width > 0 ? out.config.sample_width : out.config.sample_size;
  out.image_shape = {out.config.in_channels, out.config.sample_size, width};
  return out;
}

// The sampling graph, as a pipeline file would hold it.
PipelineSpecBuilder sampling_pipeline(const SampleRequest& request, const SampleModel& model,
                                      std::optional<int> threads, std::optional<int> teams) {
  PipelineSpecBuilder builder("sample");
  builder.setting("seed", request.seed);
  if (threads) builder.setting("threads", *threads);
  if (teams) builder.setting("teams", *teams);
  PipelineSpecBuilder::Values schedule;
  if (!model.schedule_config.empty()) schedule.emplace_back("config", model.schedule_config);
  builder.resource("schedule", "noise_schedule", schedule);
  UNetModelResource::Params unet;
  unet.weights = model.weights;
  unet.precision = request.precision == Precision::bf16 ? PrecisionChoice::bf16 : PrecisionChoice::f32;
  builder.resource<UNetModelResource>("model", unet);

  NoiseSource::Params noise;
  noise.shape = model.image_shape;
  noise.batch_size = std::min(request.batch, request.count);
  noise.count = request.count;
  noise.seed_by = NoiseSource::SeedBy::image;
  builder.node<NoiseSource>("noise", noise);
  builder.node("gate", "limiter", {{"max_in_flight", 2}});
  PipelineSpecBuilder::Values sampler{
      {"schedule", "schedule"}, {"method", request.sampler}, {"steps", request.steps}, {"eta", request.eta},
      {"clip", request.clip}};
  if (!request.classes.empty()) {
    sampler.emplace_back("model", "model");
    sampler.emplace_back("classes", request.classes);
    sampler.emplace_back("class_order", ClassOrder::cycle);
    sampler.emplace_back("guidance_scale", request.guidance);
  }
  builder.node("sampler", "sampler", sampler, 2);
  builder.node("forward", "model_forward", {{"model", "model"}});
  const std::vector<std::string> fields =
      request.classes.empty() ? std::vector<std::string>{"sample"} : std::vector<std::string>{"sample", "labels"};
  builder.node("save", "tensor_writer", {{"fields", fields}, {"prefix", "samples"}});
  for (const char* edge : {"noise -> gate", "gate -> sampler.start", "sampler.model -> forward",
                           "forward -> sampler.back", "sampler.done -> save", "sampler.done -> gate.decrement"}) {
    builder.edge(edge);
  }
  return builder;
}

std::string parameters_text(const SampleRequest& request) {
  std::ostringstream out;
  out << "model: " << request.model << ", sampler: " << enum_name(request.sampler) << ", steps: " << request.steps
      << ", eta: " << request.eta << ", seed: " << request.seed;
  if (!request.classes.empty()) out << ", classes: " << request.classes << ", guidance: " << request.guidance;
  if (!request.clip) out << ", clip: off";
  for (const std::string& set : request.sets) out << ", set: " << set;
  return out.str();
}

bool is_png_path(const std::string& out) {
  const std::string ext = fs::path(out).extension().string();
  return ext == ".png" || ext == ".PNG";
}

ConfigError option_error(const std::string& option, const std::string& what) {
  return ConfigError(SourceLocation{option, 0, 0, ""}, what);
}

// --class, --guidance and -n against the model's class embedding: every
// mistake is one error before anything runs.
void choose_classes(const ParsedOptions& options, const SampleModel& model, SampleRequest& request) {
  const ClassChoice choice = class_choice_from(options, model.config.num_classes(), request.model);
  request.classes = choice.options.classes;
  request.class_list = choice.classes;
  const std::string clip = options.text("clip");
  if (clip != "auto" && clip != "on" && clip != "off") {
    throw option_error("--clip", "--clip takes auto, on or off, got '" + clip + "'");
  }
  request.clip = clip == "on" || (clip == "auto" && !choice.guidance.doubled());
  const int64_t rows = static_cast<int64_t>(std::max<size_t>(request.class_list.size(), 1));
  request.count = options.has("images") ? options.integer("images") : (rows > 1 ? 8 * rows : 64);
  if (rows > 1 && is_png_path(request.out) && request.count % rows != 0) {
    throw option_error("--images", "-n " + std::to_string(request.count) + " does not split into " +
                                       std::to_string(rows) + " classes of equal rows: give a multiple of " +
                                       std::to_string(rows));
  }
}

// The labels the run wrote beside the samples, in image order.
std::vector<int64_t> read_labels(const fs::path& scratch, int64_t packets) {
  std::vector<int64_t> labels;
  for (int64_t k = 0; k < packets; ++k) {
    const fs::path part = scratch / "samples" / ("samples_" + step_str(k) + ".safetensors");
    const std::vector<int64_t> part_labels = SafetensorsFile::read(part).ints("labels");
    labels.insert(labels.end(), part_labels.begin(), part_labels.end());
  }
  return labels;
}

// The images reordered class by class, in --class order, each class's images
// in image order (one grid row per class); `labels` reordered alike.
std::vector<float> rows_by_class(const std::vector<float>& values, std::vector<int64_t>& labels,
                                 const SampleRequest& request, int64_t per_image) {
  std::vector<float> out;
  std::vector<int64_t> out_labels;
  out.reserve(values.size());
  std::vector<bool> placed(labels.size(), false);
  for (int32_t cls : request.class_list) {
    for (size_t i = 0; i < labels.size(); ++i) {
      if (placed[i] || labels[i] != cls) continue;
      placed[i] = true;
      out_labels.push_back(labels[i]);
      out.insert(out.end(), values.begin() + static_cast<std::ptrdiff_t>(i * per_image),
                 values.begin() + static_cast<std::ptrdiff_t>((i + 1) * per_image));
    }
  }
  if (out.size() != values.size()) throw std::runtime_error("diffuflow sample: the run wrote labels outside --class");
  labels = std::move(out_labels);
  return out;
}

OptionTable sample_options() {
  std::string samplers;
  for (const auto& name : enum_choices<SamplerMethod>()) samplers += (samplers.empty() ? "" : "|") + name;
  return {OptionSpec::positional("model", "MODEL",
                                 "a training checkpoint, a run folder (its latest checkpoint) or a diffusers folder"),
          OptionSpec::integer("images", "N",
                              "images to draw (default 64; with several classes 8 per class, a grid row each)")
              .short_name('n')
              .range(1, 1000000),
          shared::steps().range(1, 100000).fallback("50"),
          OptionSpec::text("sampler", samplers, "the reverse process").fallback("ddim"),
          OptionSpec::number("eta", "ETA", "DDIM noise scale: 0 deterministic, 1 DDPM-like").range(0, 1).fallback("0"),
          shared::class_choice(),
          shared::guidance(),
          OptionSpec::text("clip", "auto|on|off",
                           "DDIM/DDPM: clip each step's x_0 estimate to the schedule's range; auto: on, but off "
                           "with guidance, whose amplified estimates clipping ruins")
              .fallback("auto"),
          shared::seed().range(0, 9.0e15).fallback("0"),
          // Chains of 256 sample as fast as 64 on 2 cores and give many cores more work per layer.
          shared::batch().fallback("256"),
          shared::output().short_name('o').fallback("samples.png"),
          shared::precision(),
          shared::threads(),
          shared::teams(),
          shared::set_overrides(),
          OptionSpec::flag("print-pipeline", "print the sampling pipeline as YAML (for diffuflow run) and stop"),
          OptionSpec::flag("quiet", "no profile table at the end").short_name('q')};
}

int run_sample(const ParsedOptions& options) {
  SampleRequest request;
  request.model = options.text("model");
  request.guidance = options.number("guidance");
  request.steps = options.integer("steps");
  request.sampler = enum_option<SamplerMethod>(options, "sampler");
  request.eta = options.number("eta");
  request.seed = options.integer("seed");
  request.batch = options.integer("batch");
  request.out = options.text("out");
  request.precision = enum_option<Precision>(options, "precision");
  std::optional<int> threads, teams;
  if (options.has("threads")) threads = static_cast<int>(options.integer("threads"));
  if (options.has("teams")) teams = static_cast<int>(options.integer("teams"));
  if (request.eta != 0 && request.sampler != SamplerMethod::ddim) {
    throw ConfigError(SourceLocation{"--eta", 0, 0, ""}, "eta is a DDIM setting; --sampler " +
                                                             enum_name(request.sampler) + " takes none");
  }

  const SampleModel model = resolve_model(request.model);
  choose_classes(options, model, request);
  PipelineSpecBuilder builder = sampling_pipeline(request, model, threads, teams);
  request.sets = options.texts("set");
  for (const Override& o : parse_overrides(request.sets)) builder.set(o);
  PipelineSpec spec = builder.build();
  if (options.flag("print-pipeline")) {
    std::cout << builder.yaml();
    return kExitOk;
  }

  // The graph runs in a scratch folder beside the output; the images are assembled from its tensors.
  const bool grid = is_png_path(request.out);
  const fs::path out = request.out;
  const fs::path folder = grid ? (out.has_parent_path() ? out.parent_path() : fs::path(".")) : out;
  fs::create_directories(folder);
  const fs::path scratch = folder / (".diffuflow-sample-" + std::to_string(::getpid()));
  RunSettings settings;
  settings.out = scratch.string();
  settings.threads = threads;
  settings.progress_s = 10;
  settings.quiet = options.flag("quiet");
  struct RemoveScratch {
    fs::path path;
    ~RemoveScratch() {
      std::error_code ignored;
      fs::remove_all(path, ignored);
    }
  } remove_scratch{scratch};
  const int code = run_spec(std::move(spec), settings);
  if (code != kExitOk) return code;

  // [count, C, H, W] in image order: packet k holds images k * batch ...
  const int64_t batch = std::min(request.batch, request.count);
  const int64_t packets = (request.count + batch - 1) / batch;
  const int64_t per_image = model.image_shape[0] * model.image_shape[1] * model.image_shape[2];
  std::vector<float> values;
  values.reserve(static_cast<size_t>(request.count * per_image));
  for (int64_t k = 0; k < packets; ++k) {
    const fs::path part = scratch / "samples" / ("samples_" + step_str(k) + ".safetensors");
    const std::vector<float> chunk = SafetensorsFile::read(part).floats("sample");
    values.insert(values.end(), chunk.begin(), chunk.end());
  }
  if (static_cast<int64_t>(values.size()) != request.count * per_image) {
    throw std::runtime_error("diffuflow sample: the run produced " + std::to_string(values.size() / per_image) +
                             " images, expected " + std::to_string(request.count));
  }
  const int64_t c = model.image_shape[0], h = model.image_shape[1], w = model.image_shape[2];
  std::ostringstream size;
  size << w << "x" << h;
  const std::string text = parameters_text(request) + ", size: " + size.str() +
                           ", precision: " + enum_name(request.precision);

  std::vector<int64_t> labels;
  if (!request.classes.empty()) {
    labels = read_labels(scratch, packets);
    values = rows_by_class(values, labels, request, per_image);
  }

  SafetensorsFile tensors;
  tensors.add_f32("sample", Shape{request.count, c, h, w}, values.data());
  if (!labels.empty()) tensors.add_i64("labels", Shape{request.count}, labels);
  tensors.set_metadata("parameters", text);
  const fs::path tensors_path = grid ? fs::path(out).replace_extension(".safetensors") : out / "samples.safetensors";
  tensors.write(tensors_path);
  const int scale = std::max<int64_t>(h, w) < 64 ? 2 : 1;
  if (grid) {
    const int nrow = request.class_list.size() > 1
                         ? static_cast<int>(request.count / static_cast<int64_t>(request.class_list.size()))
                         : static_cast<int>(std::ceil(std::sqrt(static_cast<double>(request.count))));
    write_png_atomic(tile_images(values.data(), request.count, c, h, w, nrow, scale, kImageGap), out,
                     {{"parameters", text}});
    std::cout << "wrote " << out.string() << " (" << request.count << " images) and " << tensors_path.string()
              << "\n";
  } else {
    for (int64_t i = 0; i < request.count; ++i) {
      const fs::path file = out / (step_str(i) + ".png");
      write_png_atomic(tile_images(&values[static_cast<size_t>(i * per_image)], 1, c, h, w, 1, scale, 0), file,
                       {{"parameters", text + ", image: " + std::to_string(i)}});
    }
    std::cout << "wrote " << request.count << " PNGs and " << tensors_path.filename().string() << " to "
              << out.string() << "\n";
  }
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(sample, "draw images from a checkpoint, run folder or diffusers folder", sample_options(),
                           run_sample);

}  // namespace diffuflow
