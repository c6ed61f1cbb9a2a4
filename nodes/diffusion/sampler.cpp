#include "nodes/diffusion/sampler.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "compute/program.hpp"

#include <algorithm>
#include <cmath>

namespace diffuflow {

namespace {

constexpr const char* kChainPayloadField = "sampler_chain";
constexpr int64_t kDefaultDdimSteps = 50;

// The snapshots a chain has kept so far, oldest first. Immutable: a step that
// keeps one more builds a new list sharing the tensors.
class ChainSnapshots : public Payload {
 public:
  std::vector<Tensor> states;  // each [N,C,H,W] f32 on the device
};

Sampler::Method parse_method(const std::string& text) {
  if (text == "ddpm") return Sampler::Method::ddpm;
  if (text == "ddim") return Sampler::Method::ddim;
  throw ConfigError(SourceLocation{"", 0, 0, "method"}, "sampler method must be ddpm or ddim, got '" + text + "'");
}

// A [N] s32 host tensor holding `values`.
Tensor timestep_tensor(const std::vector<int>& values) {
  Tensor t({static_cast<int64_t>(values.size())}, DType::s32, Device::host()->engine());
  auto host = t.map<int32_t>();
  for (size_t i = 0; i < values.size(); ++i) host[i] = values[i];
  return t;
}

}  // namespace

NodeContract Sampler::contract() {
  NodeContract c;
  c.doc = "Reverse diffusion (DDPM ancestral or DDIM) as a loop in the graph: sends x_t and t to the model on "
          "`model`, takes its prediction back on `back`, and emits x_0 on `done` after the last step.";
  c.example = "{name: sampler, type: sampler, params: {schedule: schedule, method: ddim, steps: 50}, concurrency: 2}";
  c.params = {
      ParamSpec::resource("schedule", "noise_schedule", "the noise schedule the model was trained with"),
      ParamSpec::choice("method", "ddim", {"ddpm", "ddim"}, "ancestral DDPM steps or DDIM steps"),
      ParamSpec::integer("steps", 0,
                         "model calls per chain; 0: 50 for ddim, every timestep for ddpm (ddpm with fewer than T "
                         "steps takes DDIM steps with eta 1 over the same spacing)")
          .range(0, 100000),
      ParamSpec::number("eta", 0.0, "DDIM noise scale: 0 deterministic, 1 DDPM-like").range(0.0, 1.0),
      ParamSpec::boolean("clip", true, "clip the predicted x_0 to [-1, 1] at every step"),
      ParamSpec::choice("prediction", "epsilon", {"epsilon", "v", "x0"}, "what the model predicts"),
      ParamSpec::integer("snapshots", 0, "keep K evenly spaced x_t of the reverse chain (x_T ... x_0) in `chain`")
          .range(0, 1000)};
  c.inputs = {{"start", {"x_t"}, "x_t [N,C,H,W] f32: x_T of each chain"},
              {"back", {"x_t", "t", kSamplerStepField, "prediction"},
               "prediction [N,C,H,W] f32 for (x_t, t); optional z [N,C,H,W] replaces the step's noise"}};
  c.outputs = {{"model", {"x_t", "t", kSamplerStepField}, "x_t [N,C,H,W] f32; t [N] s32 host; sampler_step"},
               {"done", {"sample", "chain"}, "sample [N,C,H,W] f32 = x_0; chain [N,K,C,H,W] f32 (snapshots > 0)"}};
  c.input_policy = InputPolicy::any;
  c.host_only = false;
  return c;
}

ReverseChainPlan plan_reverse_chain(int schedule_timesteps, Sampler::Method method, int64_t steps, int64_t snapshots,
                                    const std::string& snapshots_param) {
  int64_t count = steps;
  if (count == 0) {
    count = method == Sampler::Method::ddim ? std::min<int64_t>(kDefaultDdimSteps, schedule_timesteps)
                                            : schedule_timesteps;
  }
  if (count < 1 || count > schedule_timesteps) {
    throw ConfigError(SourceLocation{"", 0, 0, "steps"},
                      "sampling steps must be in [1, " + std::to_string(schedule_timesteps) +
                          "] (at most the schedule's " + std::to_string(schedule_timesteps) + " timesteps), got " +
                          std::to_string(count));
  }
  ReverseChainPlan plan;
  plan.timesteps = DiffusionSteps::ddim_timesteps(schedule_timesteps, static_cast<int>(count));
  plan.stride = schedule_timesteps / static_cast<int>(count);
  plan.ancestral = method == Sampler::Method::ddpm && plan.stride == 1;
  const int64_t positions = count + 1;  // x_T, then one state after every step
  if (snapshots > positions) {
    throw ConfigError(SourceLocation{"", 0, 0, snapshots_param},
                      snapshots_param + ": reverse chain snapshots must be at most steps + 1 = " +
                          std::to_string(positions) + ", got " + std::to_string(snapshots));
  }
  if (snapshots == 1) plan.snapshot_positions = {count};
  for (int64_t k = 0; snapshots > 1 && k < snapshots; ++k) {
    plan.snapshot_positions.push_back(static_cast<int64_t>(std::llround(double(k) * count / double(snapshots - 1))));
  }
  return plan;
}

Sampler::Sampler(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx),
      params_{config.params.text("schedule"),
              parse_method(config.params.text("method")),
              config.params.integer("steps"),
              config.params.number("eta"),
              config.params.boolean("clip"),
              parse_prediction_target(config.params.text("prediction")),
              config.params.integer("snapshots")},
      schedule_(ctx.resource_as<NoiseSchedule>(params_.schedule)),
      steps_(*schedule_, ctx.device()) {
  const ReverseChainPlan plan =
      plan_reverse_chain(schedule_->timesteps(), params_.method, params_.steps, params_.snapshots);
  timesteps_ = plan.timesteps;
  stride_ = plan.stride;
  ancestral_ = plan.ancestral;
  snapshot_positions_ = plan.snapshot_positions;
}

void Sampler::process(const NodeInput& in, Emitter& out) {
  if (in.port == kStartPort) {
    start(in.packet(), out);
  } else {
    step(in.packet(), out);
  }
}

void Sampler::start(const Packet& packet, Emitter& out) {
  const Tensor& x_t = packet.tensor("x_t");
  Packet next = packet.with("t", timestep_tensor(std::vector<int>(static_cast<size_t>(x_t.dim(0)), timesteps_[0])))
                    .with(kSamplerStepField, int64_t{0});
  next.erase("prediction");
  if (!snapshot_positions_.empty()) {
    next.set(kChainPayloadField, std::shared_ptr<const Payload>(std::make_shared<ChainSnapshots>()));
    keep_snapshot(next, 0, x_t);
  }
  out.emit(kModelPort, std::move(next));
}

void Sampler::step(const Packet& packet, Emitter& out) {
  const int64_t step = packet.integer(kSamplerStepField);
  const Tensor& x_t = packet.tensor("x_t");
  const Tensor& t = packet.tensor("t");
  const std::vector<int> now = steps_.read_timesteps(t);
  const Tensor eps = steps_.epsilon_from(params_.prediction, x_t, packet.tensor("prediction"), t);

  Tensor x_prev;
  std::vector<int> after(now.size());
  for (size_t i = 0; i < now.size(); ++i) after[i] = now[i] - stride_;
  if (ancestral_) {
    const bool noisy = std::any_of(now.begin(), now.end(), [](int v) { return v > 0; });
    Tensor z = packet.has("z") ? packet.tensor("z") : noisy ? step_noise(x_t.shape(), packet.seq(), step) : Tensor();
    x_prev = steps_.ddpm_step(x_t, eps, z, t, params_.clip);
  } else {
    const float eta = params_.method == Method::ddpm ? 1.0f : static_cast<float>(params_.eta);
    Tensor z;
    if (eta > 0) z = packet.has("z") ? packet.tensor("z") : step_noise(x_t.shape(), packet.seq(), step);
    x_prev = steps_.ddim_step(x_t, eps, t, timestep_tensor(after), eta, z, params_.clip);
  }

  const int64_t position = step + 1;
  Packet next = packet.with(kSamplerStepField, position);
  next.erase("prediction").erase("z");
  if (!snapshot_positions_.empty()) keep_snapshot(next, position, x_prev);
  if (position < static_cast<int64_t>(timesteps_.size())) {
    next.set("x_t", x_prev).set("t", timestep_tensor(after));
    out.emit(kModelPort, std::move(next));
    return;
  }
  next.set("sample", x_prev);
  if (!snapshot_positions_.empty()) next.set("chain", assemble_chain(next));
  next.erase(kChainPayloadField).erase(kSamplerStepField);
  ctx().count_progress(1, next.tensor("sample").dim(0));
  out.emit(kDonePort, std::move(next));
}

Tensor Sampler::step_noise(const Shape& shape, int64_t seq, int64_t step) {
  auto rng = ctx().rng(name() + "/z", static_cast<int64_t>(RunContext::mix(static_cast<uint64_t>(seq),
                                                                             static_cast<uint64_t>(step))));
  return standard_normal(shape, rng, ctx().device());
}

void Sampler::keep_snapshot(Packet& packet, int64_t position, const Tensor& x) {
  // Positions repeat when K is close to steps + 1; each repeat is kept once per K.
  const auto hits = std::count(snapshot_positions_.begin(), snapshot_positions_.end(), position);
  if (hits == 0) return;
  auto kept = std::make_shared<ChainSnapshots>(*packet.payload<ChainSnapshots>(kChainPayloadField));
  for (int64_t i = 0; i < hits; ++i) kept->states.push_back(x);
  packet.set(kChainPayloadField, std::shared_ptr<const Payload>(std::move(kept)));
}

// Copies the K snapshots [N,C,H,W] into chain [N,K,C,H,W]: one reorder per
// column into a strided view of the chain tensor.
Tensor Sampler::assemble_chain(const Packet& packet) {
  const auto& states = packet.payload<ChainSnapshots>(kChainPayloadField)->states;
  if (states.size() != snapshot_positions_.size()) {
    throw std::logic_error("sampler: a chain kept " + std::to_string(states.size()) + " snapshots, expected " +
                           std::to_string(snapshot_positions_.size()));
  }
  const Shape& one = states.front().shape();
  const int64_t k_count = static_cast<int64_t>(states.size());
  Shape chain_shape{one[0], k_count};
  chain_shape.insert(chain_shape.end(), one.begin() + 1, one.end());
  Tensor chain(chain_shape, DType::f32, ctx().device().engine());
  Shape column_shape = chain_shape;
  column_shape[1] = 1;
  const auto chain_md = plain_f32(chain_shape);
  const auto column_md = plain_f32(column_shape);
  std::lock_guard<std::mutex> lock(chain_mutex_);
  auto& stream = ctx().device().stream();
  for (int64_t k = 0; k < k_count; ++k) {
    dnnl::memory::dims offsets(chain_shape.size(), 0);
    offsets[1] = k;
    const auto dst_md = chain_md.submemory_desc(column_md.dims(), offsets);
    const Tensor src = steps_.on_device(states[k]);
    dnnl::memory src_mem = view(src.memory(), column_md);
    dnnl::memory dst_mem = view(chain.memory(), dst_md);
    auto key = std::make_pair(chain_shape, k);
    auto it = chain_copies_.find(key);
    if (it == chain_copies_.end()) {
      it = chain_copies_.emplace(key, dnnl::reorder(dnnl::reorder::primitive_desc(src_mem, dst_mem))).first;
    }
    it->second.execute(stream, src_mem, dst_mem);
  }
  stream.wait();
  return chain;
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(sampler, diffuflow::Sampler);
