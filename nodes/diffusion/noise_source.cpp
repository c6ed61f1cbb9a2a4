#include "nodes/diffusion/noise_source.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "graph/world.hpp"
#include "nodes/common/batching.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"

#include <algorithm>

namespace diffuflow {

NodeContract NoiseSource::contract() {
  NodeContract c;
  c.doc = "Starts reverse diffusion chains: packets of x_T ~ N(0, I), seeded per chain (seq).";
  c.example = "{name: noise, type: noise_source, params: {shape: [1, 28, 28], batch_size: 16, count: 64}}";
  c.outputs = {{"out", {fields::kXt, fields::kFirstImage},
                "x_t [N,C,H,W] f32 ~ N(0, I) on the device; first_image (int64, seed_by: image only)"}};
  c.host_only = false;
  return c;
}

NoiseSource::NoiseSource(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  if (params_.shape.size() != 3) {
    throw ConfigError(SourceLocation{"", 0, 0, "shape"},
                      "noise_source shape must be [C, H, W], got " + shape_str(params_.shape));
  }
}

bool NoiseSource::produce(Emitter& out) {
  // Several processes whose results rank 0 gathers: each takes every size-th
  // chain packet (rank r: r, r + size, ...). A packet keeps its global index as
  // seq, so its noise and its samples are the single process's.
  const World& world = ctx().world();
  if (world.distributed() && ctx().results_gathered()) {
    while (emitted_ < packets() && emitted_ % world.size() != world.rank()) ++emitted_;
  }
  if (emitted_ >= packets() || !source_may_emit(ctx(), emitted_)) return false;
  const int64_t n = std::min(params_.batch_size, params_.count - emitted_ * params_.batch_size);
  const Shape shape{n, params_.shape[0], params_.shape[1], params_.shape[2]};
  if (params_.seed_by == SeedBy::image) {
    const int64_t first = emitted_ * params_.batch_size;
    const std::string stream = name() + "/image";
    const Tensor x = standard_normal_per_image(shape, [&](int64_t i) { return ctx().rng(stream, first + i); },
                                               ctx().device());
    out.emit(Packet(emitted_).with(fields::kXt, x).with(fields::kFirstImage, first));
  } else {
    auto rng = ctx().rng(name(), emitted_);
    out.emit(Packet(emitted_).with(fields::kXt, standard_normal(shape, rng, ctx().device())));
  }
  ++emitted_;
  return true;
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(noise_source, diffuflow::NoiseSource);
