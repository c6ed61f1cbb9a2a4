#include "nodes/diffusion/noising_chain.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <cmath>

namespace diffuflow {

NodeContract NoisingChain::contract() {
  NodeContract c;
  c.doc = "Shows the forward process: a strip per image of x_t at the listed timesteps, run as the Markov "
          "chain step by step (markov) or in closed form with one shared eps (closed_form).";
  c.example = "{name: chain, type: noising_chain, params: {schedule: schedule, at: [0, 250, 500, 750, 999]}}";
  c.inputs = {{"in", {fields::kX0}, "x0 [N,C,H,W] f32 in [-1,1]"}};
  c.outputs = {{"out", {fields::kChain, fields::kChainT},
                "chain [N,K,C,H,W] f32 on the device; chain_t [K] s32 host (-1 marks the x0 column)"}};
  c.host_only = false;
  return c;
}

NoisingChain::NoisingChain(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx),
      params_(config.params_as<Params>()),
      schedule_(ctx.resource_as<NoiseSchedule>(params_.schedule)),
      steps_(*schedule_, ctx.device()) {
  const int timesteps = schedule_->timesteps();
  for (size_t i = 0; i < params_.at.size(); ++i) {
    const int64_t t = params_.at[i];
    if (t < 0 || t >= timesteps) {
      throw ConfigError(SourceLocation{}, "noising_chain '" + name() + "': timestep " + std::to_string(t) +
                                              " in 'at' is outside [0, " + std::to_string(timesteps - 1) + "]");
    }
    if (i > 0 && t <= params_.at[i - 1]) {
      throw ConfigError(SourceLocation{}, "noising_chain '" + name() + "': 'at' must be strictly increasing (" +
                                              std::to_string(t) + " follows " + std::to_string(params_.at[i - 1]) +
                                              ")");
    }
  }
  if (columns() == 0) {
    throw ConfigError(SourceLocation{}, "noising_chain '" + name() + "': nothing to show (empty 'at' and no x0)");
  }
}

void NoisingChain::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  const Tensor x0 = steps_.on_device(packet.get(fields::kX0));  // [N,C,H,W]
  const Shape& shape = x0.shape();
  const int kcols = columns();
  Shape chain_shape = shape;
  chain_shape.insert(chain_shape.begin() + 1, kcols);
  Tensor chain(chain_shape, DType::f32, ctx().device().engine());
  Tensor chain_t({kcols}, DType::s32, Device::host()->engine());
  {
    auto labels = chain_t.map<int32_t>();
    int k = 0;
    if (params_.include_x0) labels[k++] = -1;
    for (int64_t t : params_.at) labels[k++] = static_cast<int32_t>(t);
  }

  int column = 0;
  if (params_.include_x0) steps_.write_column(chain, column++, x0);
  auto rng = ctx().rng(name(), packet.seq());
  const size_t batch = static_cast<size_t>(shape[0]);
  if (params_.mode == ChainMode::closed_form) {
    const Tensor eps = standard_normal(shape, rng, ctx().device());
    for (int64_t at : params_.at) {
      const int t = static_cast<int>(at);
      const std::vector<float> a(batch, schedule_->sqrt_alpha_bar(t));
      const std::vector<float> b(batch, schedule_->sqrt_one_minus_alpha_bar(t));
      steps_.write_column(chain, column++, steps_.combine(a, x0, b, eps));
    }
  } else {
    Tensor x = x0;
    size_t next = 0;
    for (int t = 0; next < params_.at.size(); ++t) {
      // x_t = sqrt(1 - b_t) x_{t-1} + sqrt(b_t) z: the noise is drawn with std sqrt(b_t)
      // on the host, so each step is a single primitive.
      const float beta = schedule_->beta(t);
      const std::vector<float> keep(batch, std::sqrt(1.0f - beta));
      x = steps_.scale_add(keep, x, standard_normal(shape, rng, ctx().device(), std::sqrt(beta)));
      if (t == params_.at[next]) {
        steps_.write_column(chain, column++, x);
        ++next;
      }
    }
  }
  ctx().device().stream().wait();
  out.emit(packet.with(fields::kChain, chain).with(fields::kChainT, chain_t));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(noising_chain, diffuflow::NoisingChain);
