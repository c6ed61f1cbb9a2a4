// cutout: a user-written augmentation node, living outside nodes/. It blanks
// one random square per image (DeVries & Taylor, 2017), a classic way to make a
// model rely on the whole image.
//
// Example config:
//   - name: cutout
//     type: cutout
//     params: {size: 8, fill: -1.0}
//
// in:  x0 [N,C,H,W] f32 in [-1,1] (host)
// out: x0 [N,C,H,W] f32, a new tensor with one size x size square per image set to `fill`
//
// The whole node is this file; the line at the bottom registers it. Linking
// the file into a program that also links diffuflow's nodes and runners (see
// CMakeLists.txt beside it) is all it takes to use `type: cutout` in YAML.
#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <algorithm>
#include <random>

namespace example {

using namespace diffuflow;

class Cutout : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, size, 8, "side of the blanked square in pixels", .range(1, 4096));
    DIFFUFLOW_PARAM(float, fill, -1.0f, "value written into the square (-1 is black)", .range(-1.0, 1.0));
  };

  static NodeContract contract() {
    NodeContract c;
    c.doc = "Blanks one random square per image (cutout augmentation); an example of a user node.";
    c.example = "{name: cutout, type: cutout, params: {size: 8, fill: -1.0}}";
    c.inputs = {{"in", {fields::kX0}, "x0 [N,C,H,W] f32 in [-1,1]"}};
    c.outputs = {{"out", {fields::kX0}, "x0 [N,C,H,W] f32 with one square per image blanked"}};
    return c;
  }

  Cutout(const NodeConfig& config, RunContext& ctx) : Node(config, ctx), params_(config.params_as<Params>()) {}

  void process(const NodeInput& in, Emitter& out) override {
    const Packet& packet = in.packet();
    const Tensor& x0 = packet.get(fields::kX0);
    const int64_t n = x0.dim(0), c = x0.dim(1), h = x0.dim(2), w = x0.dim(3), size = params_.size;
    Tensor result(x0.shape(), DType::f32, x0.engine());
    auto rng = ctx().rng(name(), packet.seq());  // depends on (seed, node, step) only
    {
      auto src = x0.map<float>();
      auto dst = result.map<float>();
      std::copy(src.begin(), src.end(), dst.begin());
      std::uniform_int_distribution<int64_t> cy(0, h - 1), cx(0, w - 1);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t y0 = std::max<int64_t>(0, cy(rng) - size / 2), x0_ = std::max<int64_t>(0, cx(rng) - size / 2);
        const int64_t y1 = std::min(h, y0 + size), x1 = std::min(w, x0_ + size);
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t y = y0; y < y1; ++y)
            for (int64_t x = x0_; x < x1; ++x) dst[((i * c + ch) * h + y) * w + x] = params_.fill;
      }
    }
    out.emit(packet.with(fields::kX0, result));
  }

 private:
  Params params_;
};

}  // namespace example

DIFFUFLOW_REGISTER_NODE(cutout, example::Cutout);
