#include "nodes/diffusion/timestep_sampler.hpp"

#include "graph/registry.hpp"

#include <random>

namespace diffuflow {

NodeContract TimestepSampler::contract() {
  NodeContract c;
  c.doc = "Draws a timestep per image, uniform over 0..timesteps-1 (seeded per step).";
  c.example = "{name: timesteps, type: timestep_sampler, params: {timesteps: 1000}}";
  c.params = {ParamSpec::integer("timesteps", 1000, "T, the number of diffusion steps").range(1, 100000)};
  c.inputs = {{"in", {"x0"}, "x0 [N,C,H,W] f32: the batch whose size is used"}};
  c.outputs = {{"out", {"t"}, "t [N] s32 on the host"}};
  return c;
}

TimestepSampler::TimestepSampler(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {
  params_.timesteps = config.params.integer("timesteps");
}

void TimestepSampler::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  const int64_t batch = packet.tensor("x0").dim(0);
  Tensor t({batch}, DType::s32, Device::host()->engine());
  auto rng = ctx().rng(name(), packet.seq());
  std::uniform_int_distribution<int32_t> uniform(0, static_cast<int32_t>(params_.timesteps - 1));
  {
    auto host = t.map<int32_t>();
    for (auto& value : host) value = uniform(rng);
  }
  out.emit(packet.with("t", t));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(timestep_sampler, diffuflow::TimestepSampler);
