// timestep_sampler: draws one diffusion timestep per image, uniform over 0..T-1.
//
// Example config:
//   - name: timesteps
//     type: timestep_sampler
//     params: {timesteps: 1000}
//
// in:  x0 [N,C,H,W] f32 (only its batch size is read)
// out: t  [N] s32 host tensor, seeded by (pipeline seed, node name, seq)
#pragma once

#include "graph/node.hpp"

namespace diffuflow {

class TimestepSampler : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, timesteps, 1000, "T, the number of diffusion steps", .range(1, 100000));
  };

  static NodeContract contract();
  TimestepSampler(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

 private:
  Params params_;
};

}  // namespace diffuflow
