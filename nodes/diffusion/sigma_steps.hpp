// sigma_steps: the samplers that walk a sequence of noise levels sigma =
// sqrt((1 - abar) / abar) rather than timesteps: diffusers'
// DPMSolverMultistepScheduler (DPM-Solver and DPM-Solver++, Lu et al. 2022,
// orders 1 to 3, midpoint or heun, deterministic or SDE), EulerDiscreteScheduler
// (Karras et al. 2022, algorithm 2 without churn), EulerAncestralDiscreteScheduler
// and UniPCMultistepScheduler (UniPC, Zhao et al. 2023: a multistep predictor
// whose result the next step corrects with the model output it computes anyway). Shared by the in-graph
// sampler, sample_preview and `diffuflow scheduler-io`.
//
//   SigmaSchedule plan = plan_sigma_schedule(config, SchedulerClass::DPMSolverMultistepScheduler, 20,
//                                            schedule.alphas_cumprod());
//   Tensor x = scale_initial_noise(steps, plan, noise);        // x_T * init_noise_sigma
//   SolverHistory history;                                      // a multistep solver's past outputs
//   for (size_t k = 0; k < plan.size(); ++k) {
//     Tensor input = scale_model_input(steps, plan, k, x);      // Euler: x / sqrt(sigma^2 + 1)
//     Tensor m = model(input, plan.model_timestep(k));
//     auto r = sigma_step(steps, plan, config, k, x, m, history, noise_k);
//     x = r.prev_sample, history = r.history;
//   }
//
// A step depends only on its inputs (the position k, the sample, the model
// output, the history of the steps before it for the multistep solvers, the
// noise for Euler ancestral and the SDE variants of DPM-Solver), so each chain
// carries its own history and any
// number of chains may be in flight. Scalar coefficients are computed on the
// host in float32 in diffusers' order; tensor work runs as DiffusionSteps'
// oneDNN primitives. Shapes: [N, ...] f32; every sample of a call is at the
// same position k.
#pragma once

#include "graph/tensor.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"
#include "nodes/diffusion/scheduler_config.hpp"

#include <cstdint>
#include <vector>

namespace diffuflow {

// What diffusers' set_timesteps(steps) gives a sigma-space class.
struct SigmaSchedule {
  SchedulerClass scheduler_class = SchedulerClass::DPMSolverMultistepScheduler;
  // The model-call timesteps, noisiest first, as diffusers holds them: integers
  // for DPM-Solver and UniPC, float32 values for Euler (fractional with linspace
  // spacing or Karras sigmas).
  std::vector<double> timesteps;
  std::vector<float> sigmas;          // timesteps.size() + 1; the last is the final sigma
  float init_noise_sigma = 1.0f;      // the pipeline starts from noise * init_noise_sigma
  std::vector<float> alphas_cumprod;  // as the class holds it (zero-SNR rescale: the last is 2^-24)

  size_t size() const { return timesteps.size(); }
  // The timestep the model is called with at position k: timesteps[k] rounded
  // to the nearest integer (this project's models take integer timesteps).
  int model_timestep(size_t k) const;
  // Whether every timestep is an integer (then the model sees diffusers' exact timesteps).
  bool integer_timesteps() const;
};

// diffusers' set_timesteps(steps) for `cls` (a sigma-space class) with the
// config's spacing, Karras sigmas and final sigma, over the schedule's
// alphas_cumprod. ConfigError (key `steps`) when steps is outside [1, T] or a
// timestep falls outside [0, T); ConfigError for a setting the class does not
// support (Euler ancestral with prediction_type sample).
SigmaSchedule plan_sigma_schedule(const SchedulerConfig& config, SchedulerClass cls, int64_t steps,
                                  const std::vector<float>& alphas_cumprod);

// x_T as the pipeline starts it: noise * init_noise_sigma [N,...].
Tensor scale_initial_noise(DiffusionSteps& steps, const SigmaSchedule& plan, const Tensor& noise);

// diffusers' scale_model_input at position k: Euler divides by sqrt(sigma^2 + 1);
// DPM-Solver and UniPC return the sample as it is.
Tensor scale_model_input(DiffusionSteps& steps, const SigmaSchedule& plan, size_t k, const Tensor& sample);

// A multistep solver's memory of the steps before. DPM-Solver and UniPC keep
// their converted model outputs (x_0 for dpmsolver++, sde-dpmsolver++ and UniPC
// with predict_x0; epsilon otherwise), the latest first: solver_order - 1 of
// them for DPM-Solver, solver_order for UniPC, whose corrector revisits the
// previous step with the new model output, the sample that step started from
// and its order.
struct SolverHistory {
  std::vector<Tensor> outputs;
  Tensor last_sample;  // UniPC: the (corrected) sample the previous step started from
  int last_order = 0;  // UniPC: the order of the previous step's predictor
};

struct SigmaStepResult {
  Tensor prev_sample;           // [N,...] the sample at the next sigma
  Tensor pred_original_sample;  // [N,...] the x_0 prediction the step implies (thresholded where configured)
  SolverHistory history;        // what the next step takes as `history` (empty for Euler)
};

// One step of plan.scheduler_class at position k, as diffusers' step() computes
// it after the k steps before it. `history`: the previous step's result.history
// (empty at k = 0 and for Euler). For UniPC, prev_sample is the predictor's
// result, which the next step corrects before going on, as diffusers' step()
// returns it. `noise` [N,...]: the step noise of Euler
// ancestral and the SDE variants (may be empty for the others).
// std::invalid_argument on a position outside the plan or a missing history or noise.
SigmaStepResult sigma_step(DiffusionSteps& steps, const SigmaSchedule& plan, const SchedulerConfig& config, size_t k,
                           const Tensor& sample, const Tensor& model_output, const SolverHistory& history,
                           const Tensor& noise);

// The order of the DPM-Solver update (UniPC: of the predictor) at position k
// (1 for Euler): diffusers' warm-up (order k + 1 at most) and its lower-order
// final steps.
int sigma_step_order(const SigmaSchedule& plan, const SchedulerConfig& config, size_t k);

// Whether each step of the class and algorithm draws noise (Euler ancestral, sde-dpmsolver, sde-dpmsolver++).
bool sigma_step_needs_noise(const SigmaSchedule& plan, const SchedulerConfig& config);

}  // namespace diffuflow
