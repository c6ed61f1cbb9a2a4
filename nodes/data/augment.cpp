#include "nodes/data/augment.hpp"

#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <random>
#include <stdexcept>

namespace diffuflow {

namespace {

constexpr float kFill = -1.0f;  // black in [-1, 1]

}  // namespace

NodeContract Augment::contract() {
  NodeContract c;
  c.doc = "Random horizontal flip (probability p) and random crop with `pad` pixels of black padding; "
          "seeded per image position in the data stream.";
  c.example = "{name: augment, type: augment, params: {p: 0.5, pad: 2}}";
  c.inputs = {{"in", {fields::kX0}, "x0 [N,C,H,W] f32 in [-1,1] (host)"}};
  c.outputs = {{"out", {fields::kX0}, "x0 [N,C,H,W] f32, flipped and shifted per image"}};
  return c;
}

Augment::Augment(const NodeConfig& config, RunContext& ctx) : Node(config, ctx), params_(config.params_as<Params>()) {}

void Augment::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  if (params_.p <= 0.0 && params_.pad == 0) {
    out.emit(in.ptr());
    return;
  }
  const Tensor& x0 = packet.get(fields::kX0);
  const int64_t n = x0.dim(0);
  const int64_t channels = x0.dim(1);
  const int64_t height = x0.dim(2);
  const int64_t width = x0.dim(3);
  const int64_t pad = params_.pad;

  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<int64_t> shift(-pad, pad);

  Tensor result(x0.shape(), DType::f32, Device::host()->engine());
  {
    auto src = x0.map<float>();
    auto dst = result.map<float>();
    for (int64_t i = 0; i < n; ++i) {
      // Keyed by the image's place in the data stream: one flip draw, then
      // (with padding) two shift draws.
      CounterRng rng = ctx().item_rng(name(), packet.item_position(i, n));
      const bool flip = unit(rng) < params_.p;
      const int64_t dy = pad > 0 ? shift(rng) : 0;
      const int64_t dx = pad > 0 ? shift(rng) : 0;
      for (int64_t c = 0; c < channels; ++c) {
        const float* plane_in = src.data() + (i * channels + c) * height * width;
        float* plane_out = dst.data() + (i * channels + c) * height * width;
        for (int64_t y = 0; y < height; ++y) {
          const int64_t sy = y + dy;
          for (int64_t x = 0; x < width; ++x) {
            // Output pixel x of the flipped crop is pixel (W-1-x) of the crop.
            const int64_t sx = (flip ? width - 1 - x : x) + dx;
            const bool inside = sy >= 0 && sy < height && sx >= 0 && sx < width;
            plane_out[y * width + x] = inside ? plane_in[sy * width + sx] : kFill;
          }
        }
      }
    }
  }
  out.emit(packet.with(fields::kX0, result));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(augment, diffuflow::Augment);
