// noising_chain: the forward Markov chain made visible. Each image becomes a
// strip of K snapshots x_t at the listed timesteps (for an image writer).
//
// Example config:
//   - name: chain
//     type: noising_chain
//     params: {schedule: schedule, at: [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999],
//              mode: markov, include_x0: true}
//
// in:  x0      [N,C,H,W] f32 in [-1, 1]
// out: chain   [N,K,C,H,W] f32 on the device; K = len(at) (+1 with include_x0, whose
//              column 0 is x0 itself); column k holds x_t for t = at[k]
//      chain_t [K] s32 host: the timestep of each column (-1 for the x0 column)
//
// mode markov (default): runs the chain step by step from x0,
//   x_t = sqrt(1 - b_t) x_{t-1} + sqrt(b_t) z_t, with fresh z_t ~ N(0, I) at every step,
//   recording the listed steps (max(at) + 1 oneDNN steps per packet).
// mode closed_form: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with ONE eps shared by
//   all columns, so the strip shows the same noise pattern growing over the image.
// Both have the same distribution per column; noise is seeded by (seed, node name, seq).
#pragma once

#include "graph/node.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"

#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

DIFFUFLOW_ENUM(ChainMode, markov, closed_form);

class NoisingChain : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, schedule, "", "the noise schedule (betas, alphas_cumprod)",
                    .resource("noise_schedule"));
    DIFFUFLOW_PARAM(std::vector<int64_t>, at, (std::vector<int64_t>{0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999}),
                    "timesteps to show, strictly increasing, each in [0, T)", .range(0, 100000));
    DIFFUFLOW_PARAM(ChainMode, mode, ChainMode::markov,
                    "markov: step x_{t-1} -> x_t with fresh noise; closed_form: one shared eps for all columns");
    DIFFUFLOW_PARAM(bool, include_x0, true, "put the clean image x0 in front of the strip (column 0)");
  };

  static NodeContract contract();
  NoisingChain(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

  int columns() const { return static_cast<int>(params_.at.size()) + (params_.include_x0 ? 1 : 0); }

 private:
  Params params_;
  std::shared_ptr<NoiseSchedule> schedule_;
  DiffusionSteps steps_;  // also copies each x_t into its column of the chain
};

}  // namespace diffuflow
