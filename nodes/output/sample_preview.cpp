#include "nodes/output/sample_preview.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/common/images.hpp"
#include "nodes/common/output_files.hpp"
#include "nodes/common/plots.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace diffuflow {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kMaxChainRows = 8;  // image chains: rows (samples) shown at most

}  // namespace

Tensor sample_reverse_chain(DenoiserModel& model, DiffusionSteps& steps, const Tensor& x_T,
                            const ReverseChainDraw& draw, std::vector<Tensor>* snapshots) {
  const ReverseChainOptions& options = draw.options;
  const SchedulerConfig& schedule = steps.schedule().config();
  const ReverseChainPlan plan = plan_reverse_chain(schedule, options.method, options.steps, draw.snapshots,
                                                   "reverse_chain", options.eta);
  const SchedulerConfig config = chain_step_config(schedule, options);
  const size_t n = static_cast<size_t>(x_T.dim(0));
  auto keep = [&](int64_t position, const Tensor& x) {
    if (!snapshots) return;
    const auto hits = std::count(plan.snapshot_positions.begin(), plan.snapshot_positions.end(), position);
    for (int64_t i = 0; i < hits; ++i) snapshots->push_back(x);
  };
  auto step_noise = [&](int64_t k) {
    std::mt19937_64 rng(RunContext::mix(draw.noise_seed, static_cast<uint64_t>(k)));
    return standard_normal(x_T.shape(), rng, steps.device());
  };
  if (snapshots) snapshots->clear();

  Tensor x = steps.on_device(x_T);
  const ClassGuidance& guidance = draw.guidance;
  const Tensor labels = guidance.labels(static_cast<int64_t>(n), draw.first_image);
  // The model's output for (x, t) [N,C,H,W]; guided: from one call on 2N images.
  auto predict = [&](const Tensor& input, const Tensor& t) {
    const GuidedBatch batch = guidance.model_inputs(input, t, labels);
    ForwardInputs inputs;
    inputs.class_labels = batch.labels;
    return guidance.combine(model.forward(batch.x, batch.t, /*for_training=*/false, inputs).prediction);
  };
  if (is_sigma_method(options.method)) {
    // DPM-Solver / Euler / UniPC: the sampler node's loop, in one call (snapshots show the model's inputs).
    Tensor sample = scale_initial_noise(steps, plan.sigmas, x);
    SolverHistory history;
    keep(0, scale_model_input(steps, plan.sigmas, 0, sample));
    for (size_t k = 0; k < plan.sigmas.size(); ++k) {
      const Tensor input = scale_model_input(steps, plan.sigmas, k, sample);
      // The exact timestep where it is fractional (Euler), as diffusers calls its model.
      const Tensor exact = exact_timesteps(plan, k, static_cast<int64_t>(n));
      const Tensor prediction =
          predict(input, exact.empty() ? timestep_tensor(std::vector<int>(n, plan.timesteps[k])) : exact);
      const Tensor z = sigma_step_needs_noise(plan.sigmas, config) ? step_noise(int64_t(k)) : Tensor();
      auto result = sigma_step(steps, plan.sigmas, config, k, sample, prediction, history, z);
      sample = result.prev_sample;
      history = std::move(result.history);
      const bool last = k + 1 == plan.sigmas.size();
      keep(int64_t(k) + 1, last ? sample : scale_model_input(steps, plan.sigmas, k + 1, sample));
    }
    return sample;
  }
  keep(0, x);
  const float eta = static_cast<float>(options.eta);
  for (size_t k = 0; k < plan.timesteps.size(); ++k) {
    const int now = plan.timesteps[k];
    const std::vector<int> t(n, now), target(n, plan.step_target(now));
    const Tensor prediction = predict(x, timestep_tensor(t));
    if (options.method == SamplerMethod::ddpm) {
      x = steps.ddpm_step(x, prediction, now > 0 ? step_noise(int64_t(k)) : Tensor(), t, target, config).prev_sample;
    } else {
      x = steps.ddim_step(x, prediction, t, target, eta, eta > 0 ? step_noise(int64_t(k)) : Tensor(), config)
              .prev_sample;
    }
    keep(int64_t(k) + 1, x);
  }
  return x;
}

EmaWeightSwap::EmaWeightSwap(DenoiserModel& model, const dnnl::memory* ema) : model_(model) {
  if (!ema) return;
  const dnnl::memory& params = model_.params();
  if (ema->get_desc() != params.get_desc() || ema->get_engine() != params.get_engine()) {
    throw std::invalid_argument("EMA weights do not match the model's parameter buffer (" +
                                std::to_string(ema->get_desc().get_size()) + " vs " +
                                std::to_string(params.get_desc().get_size()) + " bytes)");
  }
  saved_ = dnnl::memory(params.get_desc(), model_.engine());
  model_.copy_flat(params, saved_);  // saved = raw weights [P]
  model_.copy_flat(*ema, params);    // params = EMA [P]
  active_ = true;
}

EmaWeightSwap::~EmaWeightSwap() {
  if (active_) model_.copy_flat(saved_, model_.params());  // params = raw weights again
}

NodeContract SamplePreview::contract() {
  NodeContract c;
  c.doc = "During training, every `every` optimiser steps and at the end, samples the current model (EMA weights "
          "when kept) from fixed noise with DDIM/DDPM and writes a grid or scatter plot (and the reverse chain at "
          "the end). Passes its input packet through unchanged.";
  c.example = "{name: preview, type: sample_preview, params: {model: model, schedule: schedule, shape: [2, 1, 1], "
              "count: 1000, every: 500, layout: points, reverse_chain: 6}}";
  c.inputs = {{"in", {fields::kStep}, "step (int64): optimiser steps taken so far"}};
  c.outputs = {{"out", {}, "the input packet, unchanged"}};
  c.host_only = false;
  c.max_concurrency = 1;
  return c;
}

SamplePreview::SamplePreview(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  check_output_subdir(name(), params_.subdir);
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
  guidance_ = ClassGuidance(params_.guidance, resource_->model().num_classes(), "model '" + params_.model + "'");
  schedule_ = ctx.resource_as<NoiseSchedule>(params_.schedule);
  steps_ = std::make_unique<DiffusionSteps>(*schedule_, ctx.device());
  plan_reverse_chain(schedule_->config(), params_.chain.method, params_.chain.steps, params_.reverse_chain,
                     "reverse_chain", params_.chain.eta);  // steps, reverse_chain and eta in range
  chain_step_config(schedule_->config(), params_.chain);  // prediction agrees with the schedule

  // The same x_T and step noise for every preview: drawn from (seed, node name) only.
  auto rng = ctx.rng(name() + "/x_T");
  x_T_ = standard_normal({params_.count, params_.shape[0], params_.shape[1], params_.shape[2]}, rng, ctx.device());
  noise_seed_ = ctx.rng(name() + "/z")();
}

SamplePreview::~SamplePreview() = default;

Tensor SamplePreview::draw(std::vector<Tensor>* snapshots) {
  const ReverseChainDraw chain{params_.chain, snapshots ? params_.reverse_chain : 0, noise_seed_, guidance_};
  DenoiserModel& model = resource_->model();
  EmaWeightSwap swap(model, params_.use_ema ? resource_->ema() : nullptr);
  return sample_reverse_chain(model, *steps_, x_T_, chain, snapshots);
}

void SamplePreview::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  const int64_t step = packet.get(fields::kStep);
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
