#include "nodes/diffusion/diffusers_scheduler.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace diffuflow {

DiffusersScheduler::DiffusersScheduler(const SchedulerConfig& config, Device& device)
    : schedule_(config), steps_(schedule_, device) {}

void DiffusersScheduler::set_timesteps(int64_t steps) {
  timesteps_ = schedule_.config().inference_timesteps(steps);
  inference_steps_ = steps;
}

void DiffusersScheduler::check_ready() const {
  if (timesteps_.empty()) throw std::logic_error("DiffusersScheduler: set_timesteps() must come before step()");
}

int64_t DdpmScheduler::previous_timestep(int64_t t) const {
  check_ready();
  // With inference steps set, diffusers steps to the next entry of the schedule.
  const auto it = std::find(timesteps_.begin(), timesteps_.end(), t);
  if (it == timesteps_.end()) {
    throw std::invalid_argument("DDPMScheduler: timestep " + std::to_string(t) + " is not one of the " +
                                std::to_string(timesteps_.size()) + " timesteps after set_timesteps (" +
                                std::to_string(timesteps_.front()) + " ... " + std::to_string(timesteps_.back()) +
                                ")");
  }
  return it + 1 == timesteps_.end() ? -1 : *(it + 1);
}

DiffusionSteps::StepResult DdpmScheduler::step(const Tensor& model_output, int64_t t, const Tensor& sample, float eta,
                                               const Tensor& noise) {
  if (eta != 0.0f) throw std::invalid_argument("DDPMScheduler has no eta (it is DDIMScheduler's); got " +
                                               std::to_string(eta));
  const size_t n = static_cast<size_t>(sample.dim(0));
  const std::vector<int> now(n, static_cast<int>(t)), prev(n, static_cast<int>(previous_timestep(t)));
  return steps_.ddpm_step(sample, model_output, t > 0 ? noise : Tensor(), now, prev, config());
}

int64_t DdimScheduler::previous_timestep(int64_t t) const {
  check_ready();
  schedule_.check_timestep(t);
  // diffusers' DDIM steps by T // steps from any timestep.
  return t - config().num_train_timesteps / inference_steps_;
}

DiffusionSteps::StepResult DdimScheduler::step(const Tensor& model_output, int64_t t, const Tensor& sample, float eta,
                                               const Tensor& noise) {
  const size_t n = static_cast<size_t>(sample.dim(0));
  const std::vector<int> now(n, static_cast<int>(t)), prev(n, static_cast<int>(previous_timestep(t)));
  return steps_.ddim_step(sample, model_output, now, prev, eta, eta > 0.0f ? noise : Tensor(), config());
}

void SigmaScheduler::set_timesteps(int64_t steps) {
  plan_ = plan_sigma_schedule(config(), config().class_name, steps, schedule_.alphas_cumprod());
  timesteps_.clear();
  for (size_t k = 0; k < plan_.size(); ++k) timesteps_.push_back(plan_.model_timestep(k));
  inference_steps_ = steps;
  index_ = 0;
  history_ = SolverHistory();
}

int64_t SigmaScheduler::previous_timestep(int64_t t) const {
  check_ready();
  const auto it = std::find(timesteps_.begin(), timesteps_.end(), t);
  if (it == timesteps_.end()) {
    throw std::invalid_argument(enum_name(config().class_name) + ": timestep " + std::to_string(t) +
                                " is not one of the " + std::to_string(timesteps_.size()) + " timesteps");
  }
  return it + 1 == timesteps_.end() ? -1 : *(it + 1);
}

DiffusionSteps::StepResult SigmaScheduler::step(const Tensor& model_output, int64_t t, const Tensor& sample, float eta,
                                                const Tensor& noise) {
  check_ready();
  const std::string name = enum_name(config().class_name);
  if (eta != 0.0f) throw std::invalid_argument(name + " has no eta (it is DDIMScheduler's)");
  if (index_ >= plan_.size()) {
    throw std::invalid_argument(name + ": all " + std::to_string(plan_.size()) + " steps are taken");
  }
  if (t != timesteps_[index_]) {
    throw std::invalid_argument(name + ": step " + std::to_string(index_) + " is at timestep " +
                                std::to_string(timesteps_[index_]) + ", not " + std::to_string(t) +
                                " (a solver steps along its whole schedule, in order)");
  }
  SigmaStepResult result = sigma_step(steps_, plan_, config(), index_, sample, model_output, history_, noise);
  history_ = std::move(result.history);
  ++index_;
  return {result.prev_sample, result.pred_original_sample};
}

Tensor SigmaScheduler::scale_model_input(const Tensor& sample) {
  check_ready();
  return diffuflow::scale_model_input(steps_, plan_, std::min(index_, plan_.size() - 1), sample);
}

std::unique_ptr<DiffusersScheduler> make_diffusers_scheduler(const SchedulerConfig& config, Device& device) {
  switch (config.class_name) {
    case SchedulerClass::DDPMScheduler: return std::make_unique<DdpmScheduler>(config, device);
    case SchedulerClass::DDIMScheduler: return std::make_unique<DdimScheduler>(config, device);
    case SchedulerClass::DPMSolverMultistepScheduler:
    case SchedulerClass::EulerDiscreteScheduler:
    case SchedulerClass::EulerAncestralDiscreteScheduler:
    case SchedulerClass::UniPCMultistepScheduler: return std::make_unique<SigmaScheduler>(config, device);
  }
  throw std::logic_error("make_diffusers_scheduler: unknown scheduler class");
}

}  // namespace diffuflow
