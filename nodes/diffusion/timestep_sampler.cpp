#include "nodes/diffusion/timestep_sampler.hpp"

#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <random>

namespace diffuflow {

NodeContract TimestepSampler::contract() {
  NodeContract c;
  c.doc = "Draws a timestep per image, uniform over 0..timesteps-1 (seeded per image position in the data stream).";
  c.example = "{name: timesteps, type: timestep_sampler, params: {timesteps: 1000}}";
  c.inputs = {{"in", {fields::kX0}, "x0 [N,C,H,W] f32: the batch whose size is used"}};
  c.outputs = {{"out", {fields::kT}, "t [N] s32 on the host"}};
  return c;
}

TimestepSampler::TimestepSampler(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {}

void TimestepSampler::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  const int64_t batch = packet.get(fields::kX0).dim(0);
  Tensor t({batch}, DType::s32, Device::host()->engine());
  std::uniform_int_distribution<int32_t> uniform(0, static_cast<int32_t>(params_.timesteps - 1));
  {
    // Keyed by each image's place in the data stream: the same timestep
    // whichever process or batch holds the image.
    auto host = t.map<int32_t>();
    for (int64_t i = 0; i < batch; ++i) {
      CounterRng rng = ctx().item_rng(name(), packet.item_position(i, batch));
      host[i] = uniform(rng);
    }
  }
  out.emit(packet.with(fields::kT, t));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(timestep_sampler, diffuflow::TimestepSampler);
