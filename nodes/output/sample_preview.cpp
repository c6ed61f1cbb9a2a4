#include "nodes/output/sample_preview.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/images.hpp"
#include "nodes/common/output_files.hpp"
#include "nodes/common/plots.hpp"
#include "nodes/model/model_resource.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace diffuflow {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kMaxChainRows = 8;  // image chains: rows (samples) shown at most

SamplePreview::Layout parse_layout(const std::string& text) {
  if (text == "grid") return SamplePreview::Layout::grid;
  if (text == "points") return SamplePreview::Layout::points;
  throw ConfigError(SourceLocation{"", 0, 0, "layout"}, "sample_preview layout must be grid or points, got '" + text + "'");
}

Sampler::Method parse_method(const std::string& text) {
  if (text == "ddpm") return Sampler::Method::ddpm;
  if (text == "ddim") return Sampler::Method::ddim;
  throw ConfigError(SourceLocation{"", 0, 0, "method"}, "sample_preview method must be ddpm or ddim, got '" + text + "'");
}

// A [N] s32 host tensor holding `values`.
Tensor timestep_tensor(const std::vector<int>& values) {
  Tensor t({static_cast<int64_t>(values.size())}, DType::s32, Device::host()->engine());
  auto host = t.map<int32_t>();
  for (size_t i = 0; i < values.size(); ++i) host[i] = values[i];
  return t;
}

}  // namespace

Tensor sample_reverse_chain(DenoiserModel& model, DiffusionSteps& steps, const Tensor& x_T,
                            const ReverseChainOptions& options, std::vector<Tensor>* snapshots) {
  const ReverseChainPlan plan = plan_reverse_chain(steps.schedule().timesteps(), options.method, options.steps,
                                                   options.snapshots, "reverse_chain");
  const size_t n = static_cast<size_t>(x_T.dim(0));
  auto keep = [&](int64_t position, const Tensor& x) {
    if (!snapshots) return;
    const auto hits = std::count(plan.snapshot_positions.begin(), plan.snapshot_positions.end(), position);
    for (int64_t i = 0; i < hits; ++i) snapshots->push_back(x);
  };
  auto step_noise = [&](int64_t k) {
    std::mt19937_64 rng(RunContext::mix(options.noise_seed, static_cast<uint64_t>(k)));
    return standard_normal(x_T.shape(), rng, steps.device());
  };
  if (snapshots) snapshots->clear();

  Tensor x = steps.on_device(x_T);
  keep(0, x);
  const float eta = options.method == Sampler::Method::ddpm ? 1.0f : static_cast<float>(options.eta);
  for (size_t k = 0; k < plan.timesteps.size(); ++k) {
    const int now = plan.timesteps[k];
    const Tensor t = timestep_tensor(std::vector<int>(n, now));
    // The model's output for (x_t, t) [N,C,H,W], as an epsilon prediction.
    const Tensor prediction = model.forward(x, t, /*for_training=*/false).prediction;
    const Tensor eps = steps.epsilon_from(options.prediction, x, prediction, t);
    if (plan.ancestral) {
      x = steps.ddpm_step(x, eps, now > 0 ? step_noise(int64_t(k)) : Tensor(), t, options.clip);
    } else {
      const Tensor t_prev = timestep_tensor(std::vector<int>(n, now - plan.stride));
      x = steps.ddim_step(x, eps, t, t_prev, eta, eta > 0 ? step_noise(int64_t(k)) : Tensor(), options.clip);
    }
    keep(int64_t(k) + 1, x);
  }
  return x;
}

EmaWeightSwap::EmaWeightSwap(DenoiserModel& model, const dnnl::memory* ema) : model_(model) {
  if (!ema) return;
  dnnl::memory params = model_.params();  // handles: execute() takes non-const references
  dnnl::memory ema_weights = *ema;
  if (ema->get_desc() != params.get_desc() || ema->get_engine() != params.get_engine()) {
    throw std::invalid_argument("EMA weights do not match the model's parameter buffer (" +
                                std::to_string(ema->get_desc().get_size()) + " vs " +
                                std::to_string(params.get_desc().get_size()) + " bytes)");
  }
  // One reorder primitive serves every copy: all three buffers share one descriptor.
  stream_ = dnnl::stream(model_.engine());
  saved_ = dnnl::memory(params.get_desc(), model_.engine());
  copy_ = dnnl::reorder(dnnl::reorder::primitive_desc(params, saved_));
  copy_.execute(stream_, params, saved_);  // saved = raw weights [P]
  copy_.execute(stream_, ema_weights, params);  // params = EMA [P]
  stream_.wait();
  active_ = true;
}

EmaWeightSwap::~EmaWeightSwap() {
  if (!active_) return;
  copy_.execute(stream_, saved_, model_.params());  // params = raw weights again
  stream_.wait();
}

NodeContract SamplePreview::contract() {
  NodeContract c;
  c.doc = "During training, every `every` optimiser steps and at the end, samples the current model (EMA weights "
          "when kept) from fixed noise with DDIM/DDPM and writes a grid or scatter plot (and the reverse chain at "
          "the end). Passes its input packet through unchanged.";
  c.example = "{name: preview, type: sample_preview, params: {model: model, schedule: schedule, shape: [2, 1, 1], "
              "count: 1000, every: 500, layout: points, reverse_chain: 6}}";
  c.params = {
      ParamSpec::resource("model", kModelResourceKind, "the model being trained (unet_model, mlp_model)"),
      ParamSpec::resource("schedule", "noise_schedule", "the noise schedule the model is trained with"),
      ParamSpec::int_list("shape", {1, 28, 28}, "[C, H, W] of one sample ([2, 1, 1] for 2-D points)").range(1, 65536),
      ParamSpec::integer("count", 64, "samples per preview").range(1, 1e6),
      ParamSpec::integer("every", 500, "preview every N optimiser steps (0: only at the end)").range(0, 1e9),
      ParamSpec::choice("method", "ddim", {"ddpm", "ddim"}, "DDIM steps or ancestral DDPM steps"),
      ParamSpec::integer("steps", 50, "model calls per preview; 0: 50 for ddim, every timestep for ddpm")
          .range(0, 100000),
      ParamSpec::number("eta", 0.0, "DDIM noise scale: 0 deterministic, 1 DDPM-like").range(0.0, 1.0),
      ParamSpec::boolean("clip", true, "clip the predicted x_0 to [-1, 1] at every step"),
      ParamSpec::choice("prediction", "epsilon", {"epsilon", "v", "x0"}, "what the model predicts"),
      ParamSpec::boolean("use_ema", true, "sample from the optimiser's EMA weights when it keeps them"),
      ParamSpec::choice("layout", "grid", {"grid", "points"}, "grid: images [N,C,H,W]; points: 2-D [N,2,1,1]"),
      ParamSpec::integer("reverse_chain", 0, "at the end, also draw K evenly spaced states x_T ... x_0 (0: none)")
          .range(0, 1000),
      ParamSpec::text("subdir", "samples", "folder inside the output folder"),
      ParamSpec::integer("nrow", 8, "grid: images per row").range(1, 4096),
      ParamSpec::integer("scale", 2, "grid: pixel enlargement").range(1, 64),
      ParamSpec::number("limit", 1.5, "points: axes span [-limit, limit]").range(1e-6, 1e6)};
  c.inputs = {{"in", {"step"}, "step (int64): optimiser steps taken so far"}};
  c.outputs = {{"out", {}, "the input packet, unchanged"}};
  c.host_only = false;
  c.max_concurrency = 1;
  return c;
}

SamplePreview::SamplePreview(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {
  const auto& p = config.params;
  params_.model = p.text("model");
  params_.schedule = p.text("schedule");
  params_.shape = p.ints("shape");
  params_.count = p.integer("count");
  params_.every = p.integer("every");
  params_.chain.method = parse_method(p.text("method"));
  params_.chain.steps = p.integer("steps");
  params_.chain.eta = p.number("eta");
  params_.chain.clip = p.boolean("clip");
  params_.chain.prediction = parse_prediction_target(p.text("prediction"));
  params_.use_ema = p.boolean("use_ema");
  params_.layout = parse_layout(p.text("layout"));
  params_.reverse_chain = p.integer("reverse_chain");
  params_.subdir = p.text("subdir");
  check_output_subdir(name(), params_.subdir);
  params_.nrow = p.integer("nrow");
  params_.scale = p.integer("scale");
  params_.limit = p.number("limit");

  if (params_.shape.size() != 3) {
    throw ConfigError(SourceLocation{"", 0, 0, "shape"},
                      "sample_preview shape must be [C, H, W], got " + shape_str(params_.shape));
  }
  if (params_.layout == Layout::points && params_.shape != Shape{2, 1, 1}) {
    throw ConfigError(SourceLocation{"", 0, 0, "shape"},
                      "sample_preview layout points needs shape [2, 1, 1], got " + shape_str(params_.shape));
  }
  if (params_.layout == Layout::grid && params_.shape[0] != 1 && params_.shape[0] != 3) {
    throw ConfigError(SourceLocation{"", 0, 0, "shape"},
                      "sample_preview layout grid needs 1 or 3 channels, got " + shape_str(params_.shape));
  }

  resource_ = ctx.resource_as<ModelResource>(params_.model);
  schedule_ = ctx.resource_as<NoiseSchedule>(params_.schedule);
  steps_ = std::make_unique<DiffusionSteps>(*schedule_, ctx.device());
  plan_reverse_chain(schedule_->timesteps(), params_.chain.method, params_.chain.steps, params_.reverse_chain,
                     "reverse_chain");  // steps and reverse_chain in range

  // The same x_T and step noise for every preview: drawn from (seed, node name) only.
  auto rng = ctx.rng(name() + "/x_T");
  x_T_ = standard_normal({params_.count, params_.shape[0], params_.shape[1], params_.shape[2]}, rng, ctx.device());
  params_.chain.noise_seed = ctx.rng(name() + "/z")();
}

SamplePreview::~SamplePreview() = default;

Tensor SamplePreview::draw(std::vector<Tensor>* snapshots) {
  ReverseChainOptions options = params_.chain;
  options.snapshots = snapshots ? params_.reverse_chain : 0;
  DenoiserModel& model = resource_->model();
  EmaWeightSwap swap(model, params_.use_ema ? resource_->ema() : nullptr);
  return sample_reverse_chain(model, *steps_, x_T_, options, snapshots);
}

void SamplePreview::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  const int64_t step = packet.integer("step");
  // With gradient accumulation several packets carry one step: preview it once.
  if (params_.every > 0 && step > 0 && step % params_.every == 0 && step != last_step_ && !ctx().out_dir().empty()) {
    write_samples(draw(), preview_file(step), "step " + std::to_string(step));
    previewed_.push_back(step);
  }
  last_step_ = step;
  out.emit(in.ptr());
}

void SamplePreview::finish() {
  if (ctx().out_dir().empty()) return;
  std::vector<Tensor> snapshots;
  const Tensor samples = draw(params_.reverse_chain > 0 ? &snapshots : nullptr);
  write_samples(samples, output_file("final.png"), "final, step " + std::to_string(std::max<int64_t>(last_step_, 0)));
  if (params_.reverse_chain > 0) write_chain(snapshots, output_file("reverse_chain.png"));
}

fs::path SamplePreview::preview_file(int64_t step) { return output_file("preview_" + step_str(step) + ".png"); }

fs::path SamplePreview::output_file(const std::string& file_name) {
  if (ctx().out_dir().empty()) return {};
  return ctx().out_dir() / params_.subdir / file_name;
}

void SamplePreview::write_samples(const Tensor& samples, const fs::path& file, const std::string& title) {
  if (file.empty()) return;
  if (params_.layout == Layout::grid) {
    write_png_grid(samples, static_cast<int>(params_.nrow), static_cast<int>(params_.scale), file);
    return;
  }
  const std::vector<float> xy = samples.to_vector();  // [N,2,1,1]: x,y pairs
  write_png_atomic(draw_scatter(xy, static_cast<float>(params_.limit), 400, title), file);
}

// Host-side layout of the snapshots for a picture: [N,K,...] rows of K states.
void SamplePreview::write_chain(const std::vector<Tensor>& snapshots, const fs::path& file) {
  if (file.empty() || snapshots.empty()) return;
  const int64_t k = static_cast<int64_t>(snapshots.size());
  const int64_t n_all = snapshots.front().dim(0);
  const int64_t n = params_.layout == Layout::grid ? std::min(n_all, kMaxChainRows) : n_all;
  const int64_t per_sample = snapshots.front().numel() / n_all;
  std::vector<float> rows(static_cast<size_t>(n * k * per_sample));
  for (int64_t j = 0; j < k; ++j) {
    const std::vector<float> state = snapshots[j].to_vector();
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(state.begin() + i * per_sample, per_sample, rows.begin() + (i * k + j) * per_sample);
    }
  }
  if (params_.layout == Layout::points) {
    // x_T ~ N(0, I) spreads beyond the data: the chain's axes reach at least 3 standard deviations.
    const float limit = static_cast<float>(std::max(params_.limit, 3.0));
    write_png_atomic(draw_scatter_chain(rows, n, k, limit, 300), file);
    return;
  }
  const Tensor grid = Tensor::from_vector({n * k, params_.shape[0], params_.shape[1], params_.shape[2]}, rows);
  write_png_grid(grid, static_cast<int>(k), static_cast<int>(params_.scale), file);
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(sample_preview, diffuflow::SamplePreview);
