#include "nodes/diffusion/noiser.hpp"

#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

namespace diffuflow {

NodeContract Noiser::contract() {
  NodeContract c;
  c.doc = "Noises each image to its timestep in closed form: x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps, "
          "eps ~ N(0, I) seeded per step.";
  c.example = "{name: noiser, type: noiser, params: {schedule: schedule}}";
  c.inputs = {{"in", {fields::kX0, fields::kT}, "x0 [N,C,H,W] f32 in [-1,1]; t [N] s32 host, in [0, T)"}};
  c.outputs = {{"out", {fields::kNoise, fields::kXt}, "noise [N,C,H,W] f32 ~ N(0,I); x_t [N,C,H,W] f32, both on the device"}};
  c.host_only = false;
  return c;
}

Noiser::Noiser(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx),
      params_(config.params_as<Params>()),
      schedule_(ctx.resource_as<NoiseSchedule>(params_.schedule)),
      steps_(*schedule_, ctx.device()) {}

void Noiser::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  const Tensor& x0 = packet.get(fields::kX0);
  const Tensor& t = packet.get(fields::kT);
  auto rng = ctx().rng(name(), packet.seq());
  Tensor noise = standard_normal(x0.shape(), rng, ctx().device());
  Tensor x_t = steps_.q_sample(x0, noise, t);
  out.emit(packet.with(fields::kNoise, noise).with(fields::kXt, x_t));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(noiser, diffuflow::Noiser);
