#include "nodes/diffusion/noiser.hpp"

#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <tbb/parallel_for.h>

namespace diffuflow {

NodeContract Noiser::contract() {
  NodeContract c;
  c.doc = "Noises each image to its timestep in closed form: x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps, "
          "eps ~ N(0, I) seeded per image position in the data stream.";
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
  // Each image's noise is keyed by its place in the data stream, so it does not
  // depend on which process or batch holds the image.
  const int64_t n = x0.dim(0);
  const int64_t per_image = n > 0 ? x0.numel() / n : 0;
  Tensor noise(x0.shape(), DType::f32, ctx().device().engine());
  {
    auto values = noise.map<float>();  // free on a CPU engine, a transfer on a GPU
    float* data = values.data();
    // Each image its own stream, so the images are drawn on the graph's
    // threads at once (the compute thread's team idles meanwhile) with the
    // same values as one after another.
    tbb::parallel_for(int64_t{0}, n, [&](int64_t i) {
      ctx().item_rng(name(), packet.item_position(i, n)).fill_normal(data + i * per_image, per_image);
    });
  }
  Tensor x_t = steps_.q_sample(x0, noise, t);
  out.emit(packet.with(fields::kNoise, noise).with(fields::kXt, x_t));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(noiser, diffuflow::Noiser);
