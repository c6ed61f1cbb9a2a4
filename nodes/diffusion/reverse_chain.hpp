// reverse_chain: how a reverse diffusion chain is run, shared by the in-graph
// sampler node and the training-time sample_preview, so that both take the
// same options (with the same YAML names) and call the model at the same
// timesteps.
//
//   struct Params {
//     DIFFUFLOW_PARAMS(Params);
//     DIFFUFLOW_PARAM_GROUP(ReverseChainOptions, chain, ReverseChainOptions{});  // method, steps, eta, clip, prediction
//   };
//   ReverseChainPlan plan = plan_reverse_chain(schedule.timesteps(), p.chain.method, p.chain.steps, snapshots);
#pragma once

#include "graph/param_table.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace diffuflow {

// ddpm: ancestral steps t -> t-1; ddim: deterministic (eta 0) or noisy DDIM steps.
DIFFUFLOW_ENUM(SamplerMethod, ddpm, ddim);

// The options of one reverse chain, as parameter rows (a DIFFUFLOW_PARAM_GROUP).
// A node whose default `steps` differs sets it in its group's fallback:
// ReverseChainOptions::with_steps(50).
struct ReverseChainOptions {
  DIFFUFLOW_PARAMS(ReverseChainOptions);
  DIFFUFLOW_PARAM(SamplerMethod, method, SamplerMethod::ddim, "ancestral DDPM steps or DDIM steps");
  DIFFUFLOW_PARAM(int64_t, steps, 0,
                  "model calls per chain; 0: 50 for ddim, every timestep for ddpm (ddpm with fewer than T steps "
                  "takes DDIM steps with eta 1 over the same spacing)",
                  .range(0, 100000));
  DIFFUFLOW_PARAM(double, eta, 0.0, "DDIM noise scale: 0 deterministic, 1 DDPM-like", .range(0.0, 1.0));
  DIFFUFLOW_PARAM(bool, clip, true, "clip the predicted x_0 to [-1, 1] at every step");
  DIFFUFLOW_PARAM(PredictionTarget, prediction, PredictionTarget::epsilon, "what the model predicts");

  static ReverseChainOptions with_steps(int64_t model_calls) {
    ReverseChainOptions options;
    options.steps = model_calls;
    return options;
  }
  // The DDIM eta a step uses: 1 for ddpm (a respaced ancestral step), else eta.
  float step_eta() const { return method == SamplerMethod::ddpm ? 1.0f : static_cast<float>(eta); }
};

// The timesteps a reverse chain calls the model at, from the noisiest:
// leading spacing T/steps apart (steps 0: 50 for DDIM, at most T; all T for
// DDPM); `stride` is how far each step moves; `ancestral` when every timestep
// is a DDPM step t -> t-1; `snapshot_positions` the chain positions (0 = x_T,
// steps = x_0) kept for `snapshots` evenly spaced states.
struct ReverseChainPlan {
  std::vector<int> timesteps;
  int stride = 1;
  bool ancestral = false;
  std::vector<int64_t> snapshot_positions;
};

// Bad counts are ConfigErrors naming `steps` or `snapshots_param`.
ReverseChainPlan plan_reverse_chain(int schedule_timesteps, SamplerMethod method, int64_t steps, int64_t snapshots,
                                    const std::string& snapshots_param = "snapshots");

}  // namespace diffuflow
