// `diffuflow evaluate`: the sample_quality node's measurement, standalone.
// Scores a set of images against a real MNIST split with the shipped
// classifier's features: FID, KID, mean confidence, class histogram and its
// entropy (docs/evaluation.md).
//
//   diffuflow evaluate runs/x/samples_000000.safetensors --reference PATH/TO/MNIST
//   diffuflow evaluate runs/x/checkpoints/latest.safetensors --reference PATH/TO/MNIST --count 1000
//   diffuflow evaluate my_pngs/ --reference PATH/TO/MNIST
//   diffuflow evaluate PATH/TO/MNIST --split-of-input train --count 1000 --distort blur:1 --reference PATH/TO/MNIST
//
// INPUT is one of: a folder of PNG/JPEG images (grey, the real images' size);
// a folder of MNIST IDX files (the images of --split-of-input, for
// calibration); a .safetensors of samples (the tensor --tensor, default
// `sample` as tensor_writer writes it, else the only F32 [N,C,H,W] tensor);
// or an optimiser checkpoint (metadata format diffuflow-checkpoint) of a
// U-Net, sampled with fixed noise (--noise-seed) from its EMA weights with the
// noise schedule the checkpoint records; a class-conditional one draws the
// --class classes in turn (all by default), guided by --guidance.
// --distort changes the images before they are scored, to calibrate what a
// score means: blur:SIGMA (Gaussian, in pixels), noise:STD (added in [-1, 1]
// units, then clipped), collapse:K (only the first K images, repeated).
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "graph/safetensors.hpp"
#include "nodes/common/images.hpp"
#include "nodes/data/image_folder_loader.hpp"
#include "nodes/data/mnist_images.hpp"
#include "nodes/diffusion/noise_schedule.hpp"
#include "nodes/diffusion/trained_settings.hpp"
#include "nodes/model/classifier.hpp"
#include "nodes/model/quality_meter.hpp"
#include "nodes/model/unet.hpp"
#include "nodes/output/sample_preview.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

namespace diffuflow {

namespace {

namespace fs = std::filesystem;

OptionTable evaluate_options() {
  return {OptionSpec::positional("input", "DIR|CKPT|SAMPLES.safetensors",
                                 "the images to score: a folder of PNGs, a folder of MNIST IDX files, a .safetensors "
                                 "of samples, or an optimiser checkpoint to sample from"),
          OptionSpec::text("reference", "MNIST_DIR", "folder of the real MNIST IDX files").required(),
          OptionSpec::text("reference-split", "SPLIT", "real images: the test (10000) or train (60000) split")
              .fallback("test"),
          OptionSpec::text("classifier", "W.safetensors", "the classifier's weights (a classifier_train export)")
              .fallback("data/mnist_classifier.safetensors"),
          OptionSpec::integer("count", "N",
                              "images scored: the first N of the input (0: all), or samples drawn from a checkpoint "
                              "(0: 1000)")
              .range(0, 1e7)
              .fallback("0"),
          OptionSpec::text("tensor", "NAME", "samples file: the tensor to read (default sample, else the only image tensor)"),
          OptionSpec::text("split-of-input", "SPLIT", "MNIST input folder: the split scored (train or test)")
              .fallback("train"),
          OptionSpec::text("distort", "KIND:X", "blur:SIGMA, noise:STD or collapse:K before scoring (calibration)"),
          OptionSpec::text("schedule", "KIND",
                           "checkpoint recording no schedule (earlier versions): noise schedule (linear or cosine)")
              .fallback("linear"),
          OptionSpec::integer("timesteps", "T",
                              "checkpoint recording no schedule (earlier versions): diffusion steps T")
              .range(2, 100000)
              .fallback("1000"),
          OptionSpec::text("method", "METHOD", "checkpoint: ddim, ddpm, dpmpp, euler, euler_ancestral or unipc")
              .fallback("ddim"),
          OptionSpec::text("scheduler", "KEY=VALUE",
                           "checkpoint: a scheduler config key for the sampler, diffusers' name and value "
                           "(algorithm_type=sde-dpmsolver++, solver_order=3, use_karras_sigmas=true, ...); not "
                           "one the model was trained with")
              .repeatable(),
          OptionSpec::integer("sample-steps", "K", "checkpoint: model calls per sample").range(1, 100000).fallback("50"),
          OptionSpec::text("prediction", "TARGET", "checkpoint: what the model predicts (epsilon, v or x0)")
              .fallback("epsilon"),
          OptionSpec::flag("raw-weights", "checkpoint: sample from the raw weights, not the EMA"),
          shared::class_choice(),
          shared::guidance(),
          OptionSpec::integer("noise-seed", "S", "seed of the fixed noise (checkpoint sampling, --distort noise)").range(0, 9.0e15).fallback("0"),
          OptionSpec::integer("pass-size", "N", "images per classifier pass and per batch of sampling chains")
              .range(1, 65536)
              .fallback("250"),
          OptionSpec::integer("kid-subsets", "N", "KID: random subset pairs averaged").range(1, 100000).fallback("100"),
          OptionSpec::integer("kid-subset-size", "N", "KID: images per subset (capped at the smaller set)")
              .range(2, 1e7)
              .fallback("1000"),
          OptionSpec::text("cache-dir", "DIR",
                           "folder caching the real features (default $XDG_CACHE_HOME/diffuflow or ~/.cache/diffuflow)"),
          OptionSpec::flag("no-cache", "compute the real features without reading or writing a cache"),
          OptionSpec::text("save-samples", "FILE.safetensors", "checkpoint: also write the drawn samples here"),
          shared::json_file()};
}

// The first `count` images of `images` (all when count is 0 or larger).
Tensor first_images(const Tensor& images, int64_t count) {
  if (count <= 0 || count >= images.dim(0)) return images;
  const int64_t per_image = images.numel() / images.dim(0);
  Tensor out({count, images.dim(1), images.dim(2), images.dim(3)}, DType::f32, Device::host()->engine());
  const HostMap<float> all(images.memory());
  auto dst = out.map<float>();
  std::copy_n(all.data(), count * per_image, dst.data());
  return out;
}

Tensor read_png_folder(const fs::path& folder, int64_t count, const Shape& image_shape) {
  std::vector<fs::path> files = list_image_files(folder, false);
  if (files.empty()) throw DataError(folder.string(), "holds no PNG or JPEG images (and no MNIST IDX files)");
  if (count > 0 && count < static_cast<int64_t>(files.size())) files.resize(static_cast<size_t>(count));
  const int64_t n = static_cast<int64_t>(files.size());
  const int channels = static_cast<int>(image_shape[0]);
  Tensor out({n, image_shape[0], image_shape[1], image_shape[2]}, DType::f32, Device::host()->engine());
  auto dst = out.map<float>();
  const int64_t per_image = shape_numel(image_shape);
  for (int64_t i = 0; i < n; ++i) {
    const fs::path& file = files[static_cast<size_t>(i)];
    const cv::Mat image = cv::imread(file.string(), channels == 1 ? cv::IMREAD_GRAYSCALE : cv::IMREAD_COLOR);
    if (image.empty()) throw DataError(file.string(), "cannot be decoded as an image");
    if (image.rows != image_shape[1] || image.cols != image_shape[2]) {
      throw DataError(file.string(), "is " + std::to_string(image.cols) + "x" + std::to_string(image.rows) +
                                         "; the real images are " + std::to_string(image_shape[2]) + "x" +
                                         std::to_string(image_shape[1]));
    }
    image_to_planar(image, dst.data() + i * per_image);
  }
  return out;
}

Tensor read_samples_file(const SafetensorsFile& file, const std::string& wanted) {
  std::string name = wanted;
  if (name.empty()) {
    if (file.has("sample")) {
      name = "sample";
    } else {
      std::vector<std::string> images;
      for (const auto& n : file.names()) {
        const auto& e = file.entry(n);
        if (e.dtype == "F32" && e.shape.size() == 4) images.push_back(n);
      }
      if (images.size() != 1) {
        throw DataError(file.path().string(), "holds " + std::to_string(images.size()) +
                                                  " F32 [N,C,H,W] tensors and none named 'sample': name one with --tensor");
      }
      name = images.front();
    }
  }
  if (!file.has(name)) throw DataError(file.path().string(), "has no tensor '" + name + "'");
  const auto& e = file.entry(name);
  if (e.dtype != "F32" || e.shape.size() != 4) {
    throw DataError(file.path().string(), "tensor '" + name + "' must be F32 [N,C,H,W], got " + e.dtype + " " +
                                              shape_str(e.shape));
  }
  return Tensor::from_vector(e.shape, file.floats(name, e.shape));
}

// Samples `count` images from a U-Net checkpoint with fixed noise (seed).
Tensor sample_checkpoint(const SafetensorsFile& file, const ParsedOptions& options, int64_t count,
                         const Shape& image_shape) {
  const auto& meta = file.metadata();
  const std::string path = file.path().string();
  const auto kind = meta.find("model_kind");
  if (kind == meta.end() || kind->second != "unet") {
    throw DataError(path, "is a checkpoint of a '" + (kind == meta.end() ? std::string("?") : kind->second) +
                              "' model; evaluate samples U-Net checkpoints only");
  }
  const UNetConfig config = UNetConfig::from_json(meta.at("model_config"), path);
  auto device = Device::host();
  auto model = make_unet(config, *device);
  model->load(model_weights_from(file, model->param_slots(), !options.flag("raw-weights")));

  // The schedule the checkpoint records (training adopted it); the options for one that records none.
  NoiseSchedule::Params schedule_params;
  schedule_params.kind = enum_option<ScheduleKind>(options, "schedule");
  schedule_params.timesteps = static_cast<int>(options.integer("timesteps"));
  const std::optional<SchedulerConfig> trained = trained_settings_from(meta, path);
  // --scheduler sets the sampler's keys on top; what training fixed stays.
  const SchedulerConfig base = trained ? *trained : NoiseSchedule(schedule_params).config();
  const SchedulerConfig used = with_scheduler_keys(base, options.texts("scheduler"), "--scheduler");
  if (const std::string changed = trained_settings_difference(base, used); !changed.empty()) {
    throw bad_option("scheduler", "--scheduler may set the sampler's keys only, not what the model was trained "
                                  "with: " + changed);
  }
  const NoiseSchedule schedule(used);
  const ClassChoice classes = class_choice_from(options, config.num_classes(), path);
  DiffusionSteps steps(schedule, *device);
  ReverseChainOptions chain;
  chain.method = enum_option<SamplerMethod>(options, "method");
  chain.steps = options.integer("sample-steps");
  chain.prediction = enum_option<PredictionTarget>(options, "prediction");
  chain.clip = !classes.guidance.doubled();  // as diffuflow sample: guided estimates are not clipped
  plan_reverse_chain(schedule.timesteps(), chain.method, chain.steps, 0, "--sample-steps");

  const int64_t batch = options.integer("pass-size");
  const int64_t per_image = shape_numel(image_shape);
  Tensor samples({count, image_shape[0], image_shape[1], image_shape[2]}, DType::f32, device->engine());
  std::mt19937_64 rng(static_cast<uint64_t>(options.integer("noise-seed")));
  const auto start = std::chrono::steady_clock::now();
  for (int64_t first = 0, chunk = 0; first < count; first += batch, ++chunk) {
    const int64_t n = std::min(batch, count - first);
    const Tensor x_T = standard_normal({n, image_shape[0], image_shape[1], image_shape[2]}, rng, *device);
    const ReverseChainDraw draw{chain, 0,
                                RunContext::mix(static_cast<uint64_t>(options.integer("noise-seed")),
                                                static_cast<uint64_t>(chunk) + 1),
                                classes.guidance, first};
    const std::vector<float> x0 = sample_reverse_chain(*model, steps, x_T, draw).to_vector();
    auto dst = samples.map<float>();
    std::copy(x0.begin(), x0.end(), dst.data() + first * per_image);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "sampled %lld/%lld (%.1f s)\n", static_cast<long long>(first + n),
                 static_cast<long long>(count), seconds);
  }
  if (options.has("save-samples")) {
    SafetensorsFile out;
    out.add_f32("sample", samples);
    out.set_metadata("checkpoint", path);
    out.write(options.text("save-samples"));
  }
  return samples;
}

// blur:SIGMA, noise:STD or collapse:K applied to images [N,C,H,W] in [-1, 1].
Tensor distort(const Tensor& images, const std::string& spec, uint64_t seed) {
  const auto colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  double amount = 0;
  try {
    if (colon == std::string::npos) throw std::invalid_argument("no amount");
    size_t used = 0;
    amount = std::stod(spec.substr(colon + 1), &used);
    if (used != spec.size() - colon - 1 || !(amount > 0)) throw std::invalid_argument("bad amount");
  } catch (const std::exception&) {
    throw bad_option("--distort", "--distort takes blur:SIGMA, noise:STD or collapse:K with a positive number, got '" +
                                      spec + "'");
  }
  const int64_t n = images.dim(0), c = images.dim(1), h = images.dim(2), w = images.dim(3);
  std::vector<float> values = images.to_vector();
  if (kind == "blur") {
    for (int64_t i = 0; i < n * c; ++i) {
      cv::Mat plane(static_cast<int>(h), static_cast<int>(w), CV_32F, values.data() + i * h * w);
      cv::GaussianBlur(plane, plane, cv::Size(0, 0), amount, amount, cv::BORDER_CONSTANT);
    }
  } else if (kind == "noise") {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, static_cast<float>(amount));
    for (auto& v : values) v = std::clamp(v + normal(rng), -1.0f, 1.0f);
  } else if (kind == "collapse") {
    const int64_t k = static_cast<int64_t>(amount);
    const int64_t per_image = c * h * w;
    for (int64_t i = k; i < n; ++i) std::copy_n(values.begin() + (i % k) * per_image, per_image, values.begin() + i * per_image);
  } else {
    throw bad_option("--distort", "unknown distortion '" + kind + "' (blur, noise or collapse)");
  }
  return Tensor::from_vector(images.shape(), values);
}

int run_evaluate(const ParsedOptions& options) {
  // The real set and the classifier.
  const std::string reference = options.text("reference");
  const auto reference_split = enum_option<MnistLoader::Split>(options, "reference-split");
  IdxDataset real_data = read_mnist_split(reference, enum_name(reference_split));
  Tensor real, real_labels;
  mnist_tensors(real_data, real, real_labels);
  real_data = IdxDataset{};
  const Shape image_shape{real.dim(1), real.dim(2), real.dim(3)};

  const std::string weights = options.text("classifier");
  if (!fs::is_regular_file(weights)) throw bad_option("--classifier", "classifier weights '" + weights + "' not found");
  const SafetensorsFile weights_file = SafetensorsFile::read(weights);
  const auto config_text = weights_file.metadata().find("model_config");
  if (config_text == weights_file.metadata().end()) {
    throw DataError(weights, "has no model_config metadata (not a classifier_train export)");
  }
  Classifier classifier(ClassifierConfig::from_json(config_text->second, weights), Device::host()->engine());
  load_classifier_weights(classifier, weights, true);

  QualityOptions quality;
  quality.batch = options.integer("pass-size");
  quality.kid = KidOptions{options.integer("kid-subsets"), options.integer("kid-subset-size"), 0};
  if (!options.flag("no-cache")) {
    quality.cache_dir = options.has("cache-dir") ? fs::path(options.text("cache-dir")) : default_quality_cache_dir();
  }
  const auto start = std::chrono::steady_clock::now();
  QualityMeter meter(classifier, real, quality);
  const double real_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // The images to score.
  const fs::path input = options.text("input");
  const int64_t count = options.integer("count");
  std::string what;
  Tensor images;
  std::error_code ec;
  if (fs::is_directory(input, ec)) {
    const bool mnist = fs::exists(input / "train-images-idx3-ubyte.gz") || fs::exists(input / "train-images-idx3-ubyte") ||
                       fs::exists(input / "t10k-images-idx3-ubyte.gz") || fs::exists(input / "t10k-images-idx3-ubyte");
    if (mnist) {
      const std::string split = enum_name(enum_option<MnistLoader::Split>(options, "split-of-input"));
      IdxDataset data = read_mnist_split(input, split);
      Tensor labels;
      mnist_tensors(data, images, labels);
      images = first_images(images, count);
      what = "MNIST " + split + " split of " + input.string();
    } else {
      images = read_png_folder(input, count, image_shape);
      what = "images in " + input.string();
    }
  } else if (fs::is_regular_file(input, ec)) {
    const SafetensorsFile file = SafetensorsFile::read(input);
    const auto format = file.metadata().find("format");
    if (format != file.metadata().end() && format->second == "diffuflow-checkpoint") {
      images = sample_checkpoint(file, options, count > 0 ? count : 1000, image_shape);
      what = "samples of " + input.string() + " (" + options.text("method") + "-" +
             std::to_string(options.integer("sample-steps")) + ", seed " + std::to_string(options.integer("noise-seed")) + ")";
    } else {
      images = first_images(read_samples_file(file, options.has("tensor") ? options.text("tensor") : ""), count);
      what = "tensor of " + input.string();
    }
  } else {
    throw DataError(input.string(), "does not exist");
  }
  if (options.has("distort")) {
    images = distort(images, options.text("distort"), static_cast<uint64_t>(options.integer("noise-seed")));
    what += ", " + options.text("distort");
  }

  const QualityReport report = meter.measure(images);
  std::cout << "diffuflow evaluate on " << describe_cpu_model() << " (ISA " << describe_cpu_isa() << "), " << omp_get_max_threads()
            << " OpenMP threads\n"
            << "images:     " << report.count << " " << what << "\n"
            << "reference:  " << meter.real_count() << " MNIST " << enum_name(reference_split) << " images of "
            << reference << " ("
            << (meter.cache_file().empty() ? std::string("not cached")
                                            : std::string(meter.from_cache() ? "cached: " : "computed, cached in ") +
                                                  meter.cache_file().string())
            << ", " << std::fixed;
  std::cout.precision(1);
  std::cout << real_seconds << " s)\n";
  char lines[512];
  std::snprintf(lines, sizeof lines,
                "FID:        %.3f\nKID:        %.5f +- %.5f (%lld subsets of %lld)\nconfidence: %.4f\n"
                "classes:    entropy %.4f (even: %.4f), histogram",
                report.fid, report.kid.mean, report.kid.std, static_cast<long long>(report.kid.subsets),
                static_cast<long long>(report.kid.subset_size), report.classes.confidence, report.classes.entropy,
                std::log(static_cast<double>(report.classes.histogram.size())));
  std::cout << lines;
  for (double h : report.classes.histogram) {
    std::snprintf(lines, sizeof lines, " %.3f", h);
    std::cout << lines;
  }
  std::cout << "\n";
  if (options.has("json")) {
    std::ofstream out(options.text("json"));
    out << report.to_json() << "\n";
    out.flush();
    if (!out) throw std::runtime_error(options.text("json") + ": cannot be written");
  }
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(evaluate,
                           "score images (PNGs, samples, a checkpoint) by FID, KID and classifier statistics",
                           evaluate_options(), run_evaluate);

}  // namespace diffuflow
