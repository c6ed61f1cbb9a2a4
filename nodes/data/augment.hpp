// augment: random horizontal flips and random crops with padding, the classic
// light augmentation for small-image diffusion training.
//
// Example config:
//   - name: augment
//     type: augment
//     params: {p: 0.5, pad: 2}
//
// in:  x0 [N,C,H,W] f32 in [-1,1] (host)
// out: x0 [N,C,H,W] f32, a new tensor: each image flipped left-right with
//      probability p, then (pad > 0) shifted by a random offset in [-pad, pad]
//      on each axis, the uncovered border filled with -1 (black)
//
// The draws depend only on (pipeline seed, node name, seq), so a step is
// reproducible whatever thread runs it. With p = 0 and pad = 0 the packet
// passes through untouched.
#pragma once

#include "graph/node.hpp"

namespace diffuflow {

class Augment : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(double, p, 0.5, "probability of flipping an image left-right", .range(0.0, 1.0));
    DIFFUFLOW_PARAM(int64_t, pad, 0, "random crop after padding each side by this many pixels; 0 = off",
                    .range(0, 1024));
  };

  static NodeContract contract();
  Augment(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

 private:
  Params params_;
};

}  // namespace diffuflow
