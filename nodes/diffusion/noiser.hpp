// noiser: the forward process in closed form, one timestep per image.
//
// Example config:
//   - name: noiser
//     type: noiser
//     params: {schedule: schedule}
//
// in:  x0    [N,C,H,W] f32 in [-1, 1] (any engine)
//      t     [N] s32 host tensor, each in [0, T) (from timestep_sampler)
// out: noise [N,C,H,W] f32 on the device, eps ~ N(0, I), drawn from the stream
//            (pipeline seed, node name, seq): the same packet always gets the same noise
//      x_t   [N,C,H,W] f32 on the device, sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
//
// The arithmetic runs as oneDNN primitives on the pipeline's device.
#pragma once

#include "graph/node.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"

#include <memory>
#include <string>

namespace diffuflow {

class Noiser : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, schedule, "", "the noise schedule (betas, alphas_cumprod)",
                    .resource("noise_schedule"));
  };

  static NodeContract contract();
  Noiser(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

 private:
  Params params_;
  std::shared_ptr<NoiseSchedule> schedule_;
  DiffusionSteps steps_;
};

}  // namespace diffuflow
