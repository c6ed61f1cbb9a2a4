// reverse_chain: how a reverse diffusion chain is run, shared by the in-graph
// sampler node and the training-time sample_preview, so that both take the
// same options (with the same YAML names), call the model at the same
// timesteps and step as diffusers' DDPMScheduler / DDIMScheduler would with
// the noise schedule's scheduler config.
//
//   struct Params {
//     DIFFUFLOW_PARAMS(Params);
//     DIFFUFLOW_PARAM_GROUP(ReverseChainOptions, chain, ReverseChainOptions{});  // method, steps, eta, clip, prediction
//   };
//   ReverseChainPlan plan = plan_reverse_chain(schedule.config(), p.chain.method, p.chain.steps, snapshots);
//   SchedulerConfig steps = chain_step_config(schedule.config(), p.chain);  // what each step follows
#pragma once

#include "graph/param_table.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"
#include "nodes/diffusion/sigma_steps.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace diffuflow {

// ddpm: DDPM (ancestral) steps to the next timestep; ddim: deterministic (eta 0) or noisy DDIM steps;
// dpmpp: multistep DPM-Solver (diffusers' DPMSolverMultistepScheduler, DPM-Solver++ 2M by default); euler: EulerDiscreteScheduler;
// euler_ancestral: EulerAncestralDiscreteScheduler; unipc: UniPCMultistepScheduler (UniPC, bh2, order 2
// by default). The last four follow the schedule's solver keys
// (solver_order, solver_type, lower_order_final, use_karras_sigmas, final_sigmas_type, ...).
DIFFUFLOW_ENUM(SamplerMethod, ddpm, ddim, dpmpp, euler, euler_ancestral, unipc);

// The diffusers class a sigma-space method steps as (DDPMScheduler for ddpm, DDIMScheduler for ddim).
SchedulerClass scheduler_class(SamplerMethod method);
bool is_sigma_method(SamplerMethod method);

// The options of one reverse chain, as parameter rows (a DIFFUFLOW_PARAM_GROUP).
// A node whose default `steps` differs sets it in its group's fallback:
// ReverseChainOptions::with_steps(50).
struct ReverseChainOptions {
  DIFFUFLOW_PARAMS(ReverseChainOptions);
  DIFFUFLOW_PARAM(SamplerMethod, method, SamplerMethod::ddim,
                  "ddpm (ancestral), ddim, dpmpp (multistep DPM-Solver; 2M DPM-Solver++ unless the schedule's algorithm_type and solver_order say otherwise), euler, euler_ancestral or unipc (UniPC multistep predictor-corrector) steps");
  DIFFUFLOW_PARAM(int64_t, steps, 0,
                  "model calls per chain; 0: 50 for ddim, 20 for dpmpp, euler, euler_ancestral and unipc, every timestep "
                  "for ddpm; spread over the schedule's timesteps as its timestep_spacing says",
                  .range(0, 100000));
  DIFFUFLOW_PARAM(double, eta, 0.0, "DDIM noise scale: 0 deterministic, 1 DDPM-like (ddim only)", .range(0.0, 1.0));
  DIFFUFLOW_PARAM(bool, clip, true,
                  "clip the predicted x_0 to the schedule's clip_sample_range at every step; false (here or the "
                  "schedule's clip_sample) turns it off");
  DIFFUFLOW_PARAM(PredictionTarget, prediction, PredictionTarget::epsilon,
                  "what the model predicts; left at epsilon, the schedule's prediction_type decides");

  static ReverseChainOptions with_steps(int64_t model_calls) {
    ReverseChainOptions options;
    options.steps = model_calls;
    return options;
  }
};

// The scheduler config a chain's steps follow: the schedule's, with the chain's
// `clip` (false turns clipping off) and `prediction` (when not epsilon; a
// ConfigError naming both when the schedule's prediction_type is another
// non-default value).
SchedulerConfig chain_step_config(const SchedulerConfig& schedule, const ReverseChainOptions& options);

// The timesteps a reverse chain calls the model at, from the noisiest, as
// diffusers' set_timesteps picks them (the schedule's timestep_spacing and
// steps_offset; steps 0: 50 for DDIM, at most T; all T for DDPM). A DDIM step
// from t goes to t - stride (stride = T / steps, as diffusers' DDIMScheduler);
// a DDPM step to the next timestep (diffusers' previous_timestep). `ancestral`
// when DDPM visits every timestep (each step t -> t-1). `snapshot_positions`:
// the chain positions (0 = x_T, steps = x_0) kept for `snapshots` evenly spaced
// states. The sigma methods (dpmpp, euler, euler_ancestral) step by position
// along `sigmas` (diffusers' set_timesteps for their class); `timesteps` then
// holds the model-call timesteps rounded to integers.
struct ReverseChainPlan {
  std::vector<int> timesteps;
  SigmaSchedule sigmas;  // the sigma methods only
  int stride = 1;
  bool ancestral = false;
  SamplerMethod method = SamplerMethod::ddim;
  std::vector<int64_t> snapshot_positions;

  // The timestep after t (-1 after the last); std::invalid_argument when t is not one of `timesteps`.
  int next(int t) const;
  // Where a step from t goes: t - stride for DDIM, next(t) for DDPM.
  int step_target(int t) const;
};

// Bad counts are ConfigErrors naming `steps` or `snapshots_param`; so are
// settings a method does not take (eta > 0 for a sigma method).
ReverseChainPlan plan_reverse_chain(const SchedulerConfig& schedule, SamplerMethod method, int64_t steps,
                                    int64_t snapshots, const std::string& snapshots_param = "snapshots",
                                    double eta = 0.0);
// The same for a schedule of T timesteps with diffusers' default spacing (leading, no offset).
ReverseChainPlan plan_reverse_chain(int schedule_timesteps, SamplerMethod method, int64_t steps, int64_t snapshots,
                                    const std::string& snapshots_param = "snapshots");

// [n] f32 host: the exact timestep of a sigma method's model call at position
// k where the method's timesteps are fractional (Euler's linspace spacing,
// Karras sigmas), for the model to embed instead of the rounded `timesteps[k]`;
// empty where they are integers (and for DDPM and DDIM).
Tensor exact_timesteps(const ReverseChainPlan& plan, size_t k, int64_t n);

}  // namespace diffuflow
