// DiffusersScheduler: one of diffusers' scheduler classes, picked by the
// config's `_class_name`, with its set_timesteps() and step(). `diffuflow
// scheduler-io` runs it on tensors from a file; the samplers take the same
// steps through DiffusionSteps.
//
//   auto scheduler = make_diffusers_scheduler(SchedulerConfig::from_file("scheduler_config.json"), device);
//   scheduler->set_timesteps(50);
//   for (int64_t t : scheduler->timesteps()) {
//     DiffusionSteps::StepResult r = scheduler->step(model_output, t, sample, eta, noise);
//     sample = r.prev_sample;
//   }
//
// Adding a class: a value of SchedulerClass (scheduler_config.hpp), a subclass
// here, and its line in make_diffusers_scheduler(). A multistep class keeps the
// model outputs it needs in its own members between step() calls.
#pragma once

#include "graph/device.hpp"
#include "graph/tensor.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"
#include "nodes/diffusion/noise_schedule.hpp"
#include "nodes/diffusion/scheduler_config.hpp"
#include "nodes/diffusion/sigma_steps.hpp"

#include <cstdint>
#include <memory>
#include <vector>

namespace diffuflow {

class DiffusersScheduler {
 public:
  DiffusersScheduler(const SchedulerConfig& config, Device& device);
  virtual ~DiffusersScheduler() = default;

  const SchedulerConfig& config() const { return schedule_.config(); }
  const NoiseSchedule& schedule() const { return schedule_; }

  // diffusers' set_timesteps(steps): ConfigError when steps is outside [1, T]
  // or the spacing gives a timestep outside [0, T).
  virtual void set_timesteps(int64_t steps);
  // The timesteps after set_timesteps, noisiest first; empty before it.
  const std::vector<int64_t>& timesteps() const { return timesteps_; }

  // Where a step from t goes (-1: past the last timestep). std::invalid_argument
  // when set_timesteps was not called, or t is not a timestep this class can step from.
  virtual int64_t previous_timestep(int64_t t) const = 0;

  // One step from t of every sample [N,...] as diffusers' step() computes it.
  // `noise` [N,...] is the variance noise a stochastic step adds (may be empty
  // when the step adds none); `eta` is DDIM's noise scale (0 for the others).
  virtual DiffusionSteps::StepResult step(const Tensor& model_output, int64_t t, const Tensor& sample, float eta,
                                          const Tensor& noise) = 0;

 protected:
  void check_ready() const;

  NoiseSchedule schedule_;
  DiffusionSteps steps_;
  std::vector<int64_t> timesteps_;
  int64_t inference_steps_ = 0;  // the steps asked of set_timesteps (trailing spacing may give one timestep more)
};

// DDPMScheduler: the posterior step to the next timestep of the schedule
// (t - 1 over all T), variance fixed_small or fixed_large; no eta.
class DdpmScheduler : public DiffusersScheduler {
 public:
  using DiffusersScheduler::DiffusersScheduler;
  int64_t previous_timestep(int64_t t) const override;
  DiffusionSteps::StepResult step(const Tensor& model_output, int64_t t, const Tensor& sample, float eta,
                                  const Tensor& noise) override;
};

// DDIMScheduler: the step from t to t - T / steps (set_alpha_to_one past the
// last), noise eta * sigma.
class DdimScheduler : public DiffusersScheduler {
 public:
  using DiffusersScheduler::DiffusersScheduler;
  int64_t previous_timestep(int64_t t) const override;
  DiffusionSteps::StepResult step(const Tensor& model_output, int64_t t, const Tensor& sample, float eta,
                                  const Tensor& noise) override;
};

// DPMSolverMultistepScheduler, EulerDiscreteScheduler and
// EulerAncestralDiscreteScheduler (the class config.class_name names): steps in
// sigma space along the whole schedule, in order, from its first timestep. The
// step counter and DPM-Solver's history of converted model outputs are members, as in
// diffusers; a chain in the graph carries them in its packet instead.
class SigmaScheduler : public DiffusersScheduler {
 public:
  using DiffusersScheduler::DiffusersScheduler;
  // Plans sigmas and timesteps (timesteps() holds them rounded; plan() exactly)
  // and resets the step counter and history.
  void set_timesteps(int64_t steps) override;
  const SigmaSchedule& plan() const { return plan_; }
  // The position of the next step (diffusers' step_index).
  size_t step_index() const { return index_; }
  int64_t previous_timestep(int64_t t) const override;
  // The step at step_index(); t must be its (rounded) timestep; eta must be 0.
  DiffusionSteps::StepResult step(const Tensor& model_output, int64_t t, const Tensor& sample, float eta,
                                  const Tensor& noise) override;
  // diffusers' scale_model_input at step_index().
  Tensor scale_model_input(const Tensor& sample);

 private:
  SigmaSchedule plan_;
  size_t index_ = 0;
  SolverHistory history_;
};

// The class config.class_name names.
std::unique_ptr<DiffusersScheduler> make_diffusers_scheduler(const SchedulerConfig& config, Device& device);

}  // namespace diffuflow
