#include "nodes/output/sample_quality.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/common/images.hpp"
#include "nodes/common/output_files.hpp"
#include "nodes/common/plots.hpp"
#include "nodes/model/classifier.hpp"
#include "nodes/output/sample_preview.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

namespace diffuflow {

namespace fs = std::filesystem;

NodeContract SampleQuality::contract() {
  NodeContract c;
  c.doc = "During training, every `every` optimiser steps and at the end, draws `count` samples from the EMA "
          "weights and fixed noise and reports FID and KID against a real set's classifier features (cached), the "
          "classifier's mean confidence and its class histogram's entropy. Passes its input packet through.";
  c.example = "{name: quality, type: sample_quality, params: {model: model, schedule: schedule, classifier: "
              "classifier, reference: real, count: 1000, every: 1000}}";
  c.inputs = {{"in", {fields::kStep}, "step (int64): optimiser steps taken so far"}};
  c.outputs = {{"out", {}, "the input packet, unchanged"}};
  c.host_only = false;
  c.max_concurrency = 1;
  return c;
}

SampleQuality::SampleQuality(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  if (!params_.curve.empty()) {
    const fs::path curve(params_.curve);
    bool escapes = curve.is_absolute() || !curve.has_filename();
    for (const auto& part : curve) escapes = escapes || part == "..";
    if (escapes) {
      throw ConfigError(SourceLocation{"", 0, 0, "curve"},
                        "node '" + name() + "': curve must be a file inside the output folder, got '" +
                            params_.curve + "'");
    }
  }
  resource_ = ctx.resource_as<ModelResource>(params_.model);
  guidance_ = ClassGuidance(params_.guidance, resource_->model().num_classes(), "model '" + params_.model + "'");
  classifier_ = classifier_resource(ctx, params_.classifier, name(), "classifier");
  schedule_ = ctx.resource_as<NoiseSchedule>(params_.schedule);
  steps_ = std::make_unique<DiffusionSteps>(*schedule_, ctx.device());
  plan_reverse_chain(schedule_->timesteps(), params_.chain.method, params_.chain.steps, 0, "steps");
  const auto reference = ctx.resource_as<ImageSet>(params_.reference);
  if (reference->size() < 2) {
    throw ConfigError(SourceLocation{"", 0, 0, "reference"},
                      "node '" + name() + "': reference '" + params_.reference + "' holds fewer than 2 images");
  }

  // The same noise for every measurement: drawn from (seed, node name) only.
  const Tensor& real = reference->images();
  auto rng = ctx.rng(name() + "/x_T");
  x_T_ = standard_normal({params_.count, real.dim(1), real.dim(2), real.dim(3)}, rng, *Device::host());
  noise_seed_ = ctx.rng(name() + "/z")();

  if (params_.every == 0 && !params_.at_end) return;  // switched off: no classifier pass, no cache

  QualityOptions options;
  options.batch = params_.batch;
  options.kid = KidOptions{params_.kid_subsets, params_.kid_subset_size, 0};
  options.cache_dir = params_.cache_dir.empty() ? default_quality_cache_dir() : fs::path(params_.cache_dir);
  meter_ = std::make_unique<QualityMeter>(classifier_->classifier(), reference->images(), options);
}

SampleQuality::~SampleQuality() = default;

Tensor SampleQuality::draw() {
  const int64_t n = x_T_.dim(0);
  const int64_t per_image = x_T_.numel() / n;
  Tensor samples(x_T_.shape(), DType::f32, Device::host()->engine());
  DenoiserModel& model = resource_->model();
  EmaWeightSwap swap(model, params_.use_ema ? resource_->ema() : nullptr);
  const HostMap<float> noise(x_T_.memory());
  for (int64_t start = 0, chunk = 0; start < n; start += params_.batch, ++chunk) {
    const int64_t count = std::min(params_.batch, n - start);
    Tensor x_T({count, x_T_.dim(1), x_T_.dim(2), x_T_.dim(3)}, DType::f32, Device::host()->engine());
    {
      auto dst = x_T.map<float>();
      std::copy_n(noise.data() + start * per_image, count * per_image, dst.data());
    }
    const ReverseChainDraw chain{params_.chain, 0, RunContext::mix(noise_seed_, static_cast<uint64_t>(chunk)),
                                 guidance_};
    const std::vector<float> x0 = sample_reverse_chain(model, *steps_, x_T, chain).to_vector();
    auto dst = samples.map<float>();
    std::copy(x0.begin(), x0.end(), dst.data() + start * per_image);
  }
  return samples;
}

QualityReport SampleQuality::measure(int64_t step) {
  const auto start = std::chrono::steady_clock::now();
  const QualityReport report = meter_->measure(draw());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  history_.emplace_back(step, report);
  last_measured_ = step;

  auto& metrics = ctx().metrics();
  metrics.log(step, name(), "fid", report.fid);
  metrics.log(step, name(), "kid", report.kid.mean);
  metrics.log(step, name(), "kid_std", report.kid.std);
  metrics.log(step, name(), "confidence", report.classes.confidence);
  metrics.log(step, name(), "class_entropy", report.classes.entropy);
  for (size_t k = 0; k < report.classes.histogram.size(); ++k) {
    metrics.log(step, name(), "class_" + std::to_string(k), report.classes.histogram[k]);
  }
  char line[320];
  std::snprintf(line, sizeof line,
                "[%s] step %lld: FID %.3f  KID %.5f +- %.5f  confidence %.3f  class entropy %.3f (even: %.3f)  "
                "%lld samples, %.1f s",
                name().c_str(), static_cast<long long>(step), report.fid, report.kid.mean, report.kid.std,
                report.classes.confidence, report.classes.entropy,
                std::log(static_cast<double>(report.classes.histogram.size())), static_cast<long long>(report.count),
                seconds);
  ctx().info(line);

  if (!ctx().out_dir().empty()) {
    const fs::path file = ctx().out_dir() / "quality.jsonl";
    create_parent_folders(file);
    std::ofstream out(file, std::ios::app);
    std::string json = report.to_json();
    json.insert(1, "\"step\":" + std::to_string(step) + ",\"seconds\":" + std::to_string(seconds) + ",");
    out << json << "\n";
    out.flush();
    if (!out) throw std::runtime_error(file.string() + ": cannot append a line (disk full?)");
    write_curve();
  }
  return report;
}

void SampleQuality::write_curve() {
  if (params_.curve.empty() || history_.empty()) return;
  LineSeries fid{"FID (n = " + std::to_string(params_.count) + ")", {}, {}, {}, {}};
  for (const auto& [step, report] : history_) {
    fid.x.push_back(static_cast<double>(step));
    fid.y.push_back(report.fid);
  }
  LinePlotStyle style;
  style.title = "sample quality: FID on classifier features";
  style.x_label = "optimiser step";
  style.y_label = "FID";
  write_png_atomic(draw_line_plot({fid}, style), ctx().out_dir() / params_.curve);
}

void SampleQuality::process(const NodeInput& in, Emitter& out) {
  const int64_t step = in.packet().get(fields::kStep);
  // With gradient accumulation several packets carry one step: measure it once.
  if (params_.every > 0 && step > 0 && step % params_.every == 0 && step != last_measured_) measure(step);
  last_step_ = step;
  out.emit(in.ptr());
}

void SampleQuality::finish() {
  const int64_t step = std::max<int64_t>(last_step_, 0);
  if (params_.at_end && step != last_measured_) measure(step);
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(sample_quality, diffuflow::SampleQuality);
