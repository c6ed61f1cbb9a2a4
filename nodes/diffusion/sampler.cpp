#include "nodes/diffusion/sampler.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/class_labels.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/diffusion/trained_settings.hpp"

#include <algorithm>
#include <cmath>

namespace diffuflow {

namespace {

// The snapshots a chain has kept so far, oldest first. Immutable: a step that
// keeps one more builds a new list sharing the tensors.
class ChainSnapshots : public Payload {
 public:
  std::vector<Tensor> states;  // each [N,C,H,W] f32 on the device
};

// A multistep solver's history (DPM-Solver, UniPC), as a packet payload.
class ChainHistory : public Payload {
 public:
  explicit ChainHistory(SolverHistory memory) : memory(std::move(memory)) {}
  SolverHistory memory;
};

// Private to the sampler: travels round the loop with the chain's packet.
const PayloadField<ChainSnapshots> kChainSnapshots{"sampler_chain", "the snapshots a chain has kept so far"};
// The sigma methods: the chain's sample in the solver's own scaling (Euler: x_0
// + sigma eps; the model sees it scaled to x_t) [N,C,H,W] f32, and a multistep
// solver's memory of the steps before (its history).
const TensorField kSolverSample{"sampler_sample", DType::f32, -1, Place::any, "the solver's sample"};
const PayloadField<ChainHistory> kSolverHistory{"sampler_history", "the solver's memory of the steps before"};

// The chains' classes and guidance, checked against the named model's class embedding.
ClassGuidance sampler_guidance(const Sampler::Params& params, const RunContext& ctx) {
  const GuidanceOptions& options = params.guidance;
  if (params.model.empty()) {
    if (!options.classes.empty() || options.guidance_scale != 1.0) {
      throw ConfigError(SourceLocation{"", 0, 0, "model"},
                        "classes and guidance_scale need `model`: the model resource the chains are sampled from");
    }
    return ClassGuidance();
  }
  return ClassGuidance(options, class_embeds_of(ctx, params.model, "model"), "model '" + params.model + "'");
}

}  // namespace

NodeContract Sampler::contract() {
  NodeContract c;
  c.doc = "Reverse diffusion (DDPM, DDIM, DPM-Solver, Euler, Euler ancestral) as a loop in the graph: sends x_t and t to the model on "
          "`model`, takes its prediction back on `back`, and emits x_0 on `done` after the last step.";
  c.example = "{name: sampler, type: sampler, params: {schedule: schedule, method: ddim, steps: 50}, concurrency: 2}";
  c.inputs = {{"start", {fields::kXt}, "x_t [N,C,H,W] f32: x_T of each chain"},
              {"back", {fields::kXt, fields::kT, fields::kSamplerStep, fields::kPrediction},
               "prediction [N,C,H,W] f32 for (x_t, t); optional z [N,C,H,W] replaces the step's noise"}};
  c.outputs = {{"model", {fields::kXt, fields::kT, fields::kSamplerStep, fields::kLabels, fields::kTExact},
                "x_t [N,C,H,W] f32; t [N] s32 host; sampler_step; labels [N] s32 host with classes (x_t, t and "
                "labels of 2N images when guided: the null class in the second half); t_exact [N] f32 host where "
                "the method's timestep is fractional (Euler's linspace spacing, Karras sigmas; t is it rounded)"},
               {"done", {fields::kSample, fields::kChain, fields::kLabels},
                "sample [N,C,H,W] f32 = x_0; chain [N,K,C,H,W] f32 (snapshots > 0); labels [N] with classes"}};
  c.input_policy = InputPolicy::any;
  c.host_only = false;
  return c;
}

Sampler::Sampler(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx),
      params_(config.params_as<Params>()),
      schedule_(ctx.resource_as<NoiseSchedule>(params_.schedule)),
      steps_(*schedule_, ctx.device()),
      plan_(plan_reverse_chain(schedule_->config(), params_.chain.method, params_.chain.steps, params_.snapshots,
                               "snapshots", params_.chain.eta)),
      step_config_(chain_step_config(schedule_->config(), params_.chain)),
      guidance_(sampler_guidance(params_, ctx)) {
  check_trained_settings(ctx, step_config_, "sampler '" + name() + "'");
}

void Sampler::process(const NodeInput& in, Emitter& out) {
  if (in.port == kStartPort) {
    start(in.packet(), out);
  } else {
    step(in.packet(), out);
  }
}

void Sampler::start(const Packet& packet, Emitter& out) {
  Tensor x_t = packet.get(fields::kXt);
  const int first = plan_.timesteps[0];
  Packet next = packet.with(fields::kT, timestep_tensor(std::vector<int>(static_cast<size_t>(x_t.dim(0)), first)))
                    .with(fields::kSamplerStep, int64_t{0});
  next.erase(fields::kPrediction);
  if (guidance_.conditional()) {
    const int64_t first_image = packet.has(fields::kFirstImage) ? packet.get(fields::kFirstImage) : 0;
    next.set(fields::kLabels, guidance_.labels(x_t.dim(0), first_image));
  }
  if (is_sigma_method(params_.chain.method)) {
    // As diffusers' pipelines: start from noise * init_noise_sigma, call the model on scale_model_input.
    const Tensor sample = scale_initial_noise(steps_, plan_.sigmas, x_t);
    x_t = scale_model_input(steps_, plan_.sigmas, 0, sample);
    next.set(kSolverSample, sample).set(fields::kXt, x_t);
    if (const Tensor exact = exact_timesteps(plan_, 0, x_t.dim(0)); !exact.empty()) next.set(fields::kTExact, exact);
  }
  if (!plan_.snapshot_positions.empty()) {
    next.set(kChainSnapshots, std::make_shared<const ChainSnapshots>());
    keep_snapshot(next, 0, x_t);
  }
  out.emit(kModelPort, to_model(std::move(next)));
}

Packet Sampler::to_model(Packet packet) const {
  if (!guidance_.doubled()) return packet;
  const GuidedBatch batch =
      guidance_.model_inputs(packet.get(fields::kXt), packet.get(fields::kT), packet.get(fields::kLabels));
  packet.set(fields::kXt, batch.x).set(fields::kT, batch.t).set(fields::kLabels, batch.labels);
  if (packet.has(fields::kTExact)) packet.set(fields::kTExact, repeat_batch(packet.get(fields::kTExact)));
  return packet;
}

Packet Sampler::from_model(const Packet& packet) const {
  if (!guidance_.doubled()) return packet;
  const int64_t n = packet.get(fields::kXt).dim(0) / 2;
  Packet chain = packet;
  chain.set(fields::kXt, leading_rows(packet.get(fields::kXt), n))
      .set(fields::kT, leading_rows(packet.get(fields::kT), n))
      .set(fields::kLabels, leading_rows(packet.get(fields::kLabels), n))
      .set(fields::kPrediction, guidance_.combine(packet.get(fields::kPrediction)));
  if (packet.has(fields::kTExact)) chain.set(fields::kTExact, leading_rows(packet.get(fields::kTExact), n));
  return chain;
}

void Sampler::step(const Packet& returned, Emitter& out) {
  const Packet packet = from_model(returned);
  const ReverseChainOptions& chain = params_.chain;
  const int64_t step = packet.get(fields::kSamplerStep);
  const Tensor& x_t = packet.get(fields::kXt);
  const std::vector<int> now = steps_.read_timesteps(packet.get(fields::kT));
  const Tensor& prediction = packet.get(fields::kPrediction);
  // The step's noise: the packet's optional z, else the node's own draw.
  auto noise = [&] {
    if (packet.has(fields::kStepNoise)) return packet.get(fields::kStepNoise);
    if (packet.has(fields::kFirstImage)) return image_step_noise(x_t.shape(), packet.get(fields::kFirstImage), step);
    return step_noise(x_t.shape(), packet.seq(), step);
  };

  // Per sample: where this step goes, and the timestep of the next model call.
  std::vector<int> target(now.size()), after(now.size());
  if (is_sigma_method(chain.method)) {
    // Steps go by position (Karras sigmas may repeat a rounded timestep).
    const size_t k = static_cast<size_t>(step);
    if (k >= plan_.timesteps.size()) {
      throw std::invalid_argument("sampler: step " + std::to_string(step) + " is past the chain's " +
                                  std::to_string(plan_.timesteps.size()) + " steps");
    }
    std::fill(after.begin(), after.end(), k + 1 < plan_.timesteps.size() ? plan_.timesteps[k + 1] : -1);
  } else {
    for (size_t i = 0; i < now.size(); ++i) {
      target[i] = plan_.step_target(now[i]);
      after[i] = plan_.next(now[i]);
    }
  }
  Tensor x_prev;
  std::shared_ptr<const ChainHistory> history;  // the sigma methods: what the next step may need
  if (is_sigma_method(chain.method)) {
    const size_t k = static_cast<size_t>(step);
    const SolverHistory previous = packet.has(kSolverHistory) ? packet.get(kSolverHistory)->memory : SolverHistory();
    const Tensor z = sigma_step_needs_noise(plan_.sigmas, step_config_) ? noise() : Tensor();
    auto result = sigma_step(steps_, plan_.sigmas, step_config_, k, packet.get(kSolverSample), prediction, previous, z);
    x_prev = result.prev_sample;
    history = std::make_shared<const ChainHistory>(std::move(result.history));
  } else if (chain.method == SamplerMethod::ddpm) {
    const bool noisy = std::any_of(now.begin(), now.end(), [](int v) { return v > 0; });
    const Tensor z = packet.has(fields::kStepNoise) || noisy ? noise() : Tensor();
    x_prev = steps_.ddpm_step(x_t, prediction, z, now, target, step_config_).prev_sample;
  } else {
    const float eta = static_cast<float>(chain.eta);
    const Tensor z = eta > 0 ? noise() : Tensor();
    x_prev = steps_.ddim_step(x_t, prediction, now, target, eta, z, step_config_).prev_sample;
  }

  const int64_t position = step + 1;
  const bool last = position >= static_cast<int64_t>(plan_.timesteps.size());
  Packet next = packet.with(fields::kSamplerStep, position);
  next.erase(fields::kPrediction).erase(fields::kStepNoise);
  // What the model sees next (and the snapshots show): Euler's sample scaled to x_t.
  Tensor model_input = x_prev;
  if (is_sigma_method(chain.method)) {
    if (!last) model_input = scale_model_input(steps_, plan_.sigmas, static_cast<size_t>(position), x_prev);
    next.set(kSolverSample, x_prev).set(kSolverHistory, history);
  }
  if (!plan_.snapshot_positions.empty()) keep_snapshot(next, position, model_input);
  if (!last) {
    next.set(fields::kXt, model_input).set(fields::kT, timestep_tensor(after));
    if (is_sigma_method(chain.method)) {
      if (const Tensor exact = exact_timesteps(plan_, static_cast<size_t>(position), x_prev.dim(0)); !exact.empty())
        next.set(fields::kTExact, exact);
    }
    out.emit(kModelPort, to_model(std::move(next)));
    return;
  }
  next.erase(kSolverSample).erase(kSolverHistory).erase(fields::kTExact);
  next.set(fields::kSample, x_prev);
  if (!plan_.snapshot_positions.empty()) next.set(fields::kChain, assemble_chain(next));
  next.erase(kChainSnapshots).erase(fields::kSamplerStep);
  ctx().count_progress(1, x_prev.dim(0));
  out.emit(kDonePort, std::move(next));
}

Tensor Sampler::step_noise(const Shape& shape, int64_t seq, int64_t step) {
  auto rng = ctx().rng(name() + "/z", static_cast<int64_t>(RunContext::mix(static_cast<uint64_t>(seq),
                                                                             static_cast<uint64_t>(step))));
  return standard_normal(shape, rng, ctx().device());
}

Tensor Sampler::image_step_noise(const Shape& shape, int64_t first_image, int64_t step) {
  const std::string stream = name() + "/z/image";
  return standard_normal_per_image(
      shape,
      [&](int64_t i) {
        return ctx().rng(stream, static_cast<int64_t>(RunContext::mix(static_cast<uint64_t>(first_image + i),
                                                                      static_cast<uint64_t>(step))));
      },
      ctx().device());
}

void Sampler::keep_snapshot(Packet& packet, int64_t position, const Tensor& x) {
  // Positions repeat when K is close to steps + 1; each repeat is kept once per K.
  const auto hits = std::count(plan_.snapshot_positions.begin(), plan_.snapshot_positions.end(), position);
  if (hits == 0) return;
  auto kept = std::make_shared<ChainSnapshots>(*packet.get(kChainSnapshots));
  for (int64_t i = 0; i < hits; ++i) kept->states.push_back(x);
  packet.set(kChainSnapshots, std::shared_ptr<const ChainSnapshots>(std::move(kept)));
}

// Copies the K snapshots [N,C,H,W] into chain [N,K,C,H,W], one column each.
Tensor Sampler::assemble_chain(const Packet& packet) {
  const auto& states = packet.get(kChainSnapshots)->states;
  if (states.size() != plan_.snapshot_positions.size()) {
    throw std::logic_error("sampler: a chain kept " + std::to_string(states.size()) + " snapshots, expected " +
                           std::to_string(plan_.snapshot_positions.size()));
  }
  const Shape& one = states.front().shape();
  const int64_t k_count = static_cast<int64_t>(states.size());
  Shape chain_shape{one[0], k_count};
  chain_shape.insert(chain_shape.end(), one.begin() + 1, one.end());
  Tensor chain(chain_shape, DType::f32, ctx().device().engine());
  for (int64_t k = 0; k < k_count; ++k) steps_.write_column(chain, k, states[k]);
  ctx().device().stream().wait();
  return chain;
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(sampler, diffuflow::Sampler);
