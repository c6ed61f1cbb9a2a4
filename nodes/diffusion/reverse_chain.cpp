#include "nodes/diffusion/reverse_chain.hpp"

#include "graph/device.hpp"
#include "graph/errors.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace diffuflow {

namespace {

constexpr int64_t kDefaultDdimSteps = 50;
constexpr int64_t kDefaultSolverSteps = 20;

}  // namespace

SchedulerClass scheduler_class(SamplerMethod method) {
  switch (method) {
    case SamplerMethod::ddpm: return SchedulerClass::DDPMScheduler;
    case SamplerMethod::ddim: return SchedulerClass::DDIMScheduler;
    case SamplerMethod::dpmpp: return SchedulerClass::DPMSolverMultistepScheduler;
    case SamplerMethod::euler: return SchedulerClass::EulerDiscreteScheduler;
    case SamplerMethod::euler_ancestral: return SchedulerClass::EulerAncestralDiscreteScheduler;
    case SamplerMethod::unipc: return SchedulerClass::UniPCMultistepScheduler;
  }
  throw std::logic_error("unknown sampler method");
}

bool is_sigma_method(SamplerMethod method) { return is_sigma_class(scheduler_class(method)); }

SchedulerConfig chain_step_config(const SchedulerConfig& schedule, const ReverseChainOptions& options) {
  SchedulerConfig config = schedule;
  config.clip_sample = schedule.clip_sample && options.clip;
  const PredictionType own = prediction_type(options.prediction);
  if (own != PredictionType::epsilon) {
    if (schedule.prediction_type != PredictionType::epsilon && schedule.prediction_type != own) {
      throw ConfigError(SourceLocation{"", 0, 0, "prediction"},
                        "prediction: " + enum_name(options.prediction) + " contradicts the schedule's prediction_type " +
                            enum_name(schedule.prediction_type) + "; give one of them");
    }
    config.prediction_type = own;
  }
  return config;
}

int ReverseChainPlan::next(int t) const {
  const auto it = std::find(timesteps.begin(), timesteps.end(), t);
  if (it == timesteps.end()) {
    throw std::invalid_argument("timestep " + std::to_string(t) + " is not one of the chain's " +
                                std::to_string(timesteps.size()) + " timesteps (" + std::to_string(timesteps.front()) +
                                " ... " + std::to_string(timesteps.back()) + ")");
  }
  return it + 1 == timesteps.end() ? -1 : *(it + 1);
}

int ReverseChainPlan::step_target(int t) const { return method == SamplerMethod::ddim ? t - stride : next(t); }

ReverseChainPlan plan_reverse_chain(const SchedulerConfig& schedule, SamplerMethod method, int64_t steps,
                                    int64_t snapshots, const std::string& snapshots_param, double eta) {
  const int64_t schedule_timesteps = schedule.num_train_timesteps;
  const bool sigma_method = is_sigma_method(method);
  if (eta != 0.0 && method != SamplerMethod::ddim) {
    throw ConfigError(SourceLocation{"", 0, 0, "eta"},
                      "eta is DDIM's noise scale; method " + enum_name(method) + " takes none (got " +
                          std::to_string(eta) + ")");
  }
  int64_t count = steps;
  if (count == 0) {
    count = method == SamplerMethod::ddim ? std::min<int64_t>(kDefaultDdimSteps, schedule_timesteps)
            : sigma_method                ? std::min<int64_t>(kDefaultSolverSteps, schedule_timesteps)
                                          : schedule_timesteps;
  }
  if (count < 1 || count > schedule_timesteps) {
    throw ConfigError(SourceLocation{"", 0, 0, "steps"},
                      "sampling steps must be in [1, " + std::to_string(schedule_timesteps) +
                          "] (at most the schedule's " + std::to_string(schedule_timesteps) + " timesteps), got " +
                          std::to_string(count));
  }
  ReverseChainPlan plan;
  if (sigma_method) {
    plan.sigmas = plan_sigma_schedule(schedule, scheduler_class(method), count, NoiseSchedule(schedule).alphas_cumprod());
    for (size_t k = 0; k < plan.sigmas.size(); ++k) plan.timesteps.push_back(plan.sigmas.model_timestep(k));
  } else {
    for (int64_t t : schedule.inference_timesteps(count)) plan.timesteps.push_back(static_cast<int>(t));
  }
  plan.stride = static_cast<int>(schedule_timesteps / count);
  plan.method = method;
  plan.ancestral = method == SamplerMethod::ddpm;
  for (size_t k = 0; k < plan.timesteps.size(); ++k) {
    const int after = k + 1 < plan.timesteps.size() ? plan.timesteps[k + 1] : -1;
    plan.ancestral = plan.ancestral && after == plan.timesteps[k] - 1;
  }
  // x_T, then one state after every step (diffusers' trailing spacing may give one step more than asked).
  const int64_t positions = static_cast<int64_t>(plan.timesteps.size()) + 1;
  if (snapshots > positions) {
    throw ConfigError(SourceLocation{"", 0, 0, snapshots_param},
                      snapshots_param + ": reverse chain snapshots must be at most steps + 1 = " +
                          std::to_string(positions) + ", got " + std::to_string(snapshots));
  }
  const int64_t last = positions - 1;
  if (snapshots == 1) plan.snapshot_positions = {last};
  for (int64_t k = 0; snapshots > 1 && k < snapshots; ++k) {
    plan.snapshot_positions.push_back(static_cast<int64_t>(std::llround(double(k) * last / double(snapshots - 1))));
  }
  return plan;
}

ReverseChainPlan plan_reverse_chain(int schedule_timesteps, SamplerMethod method, int64_t steps, int64_t snapshots,
                                    const std::string& snapshots_param) {
  SchedulerConfig schedule;
  schedule.num_train_timesteps = schedule_timesteps;
  return plan_reverse_chain(schedule, method, steps, snapshots, snapshots_param);
}

Tensor exact_timesteps(const ReverseChainPlan& plan, size_t k, int64_t n) {
  if (!is_sigma_method(plan.method) || plan.sigmas.integer_timesteps()) return Tensor();
  Tensor out({n}, DType::f32, Device::host()->engine());
  auto host = out.map<float>();
  std::fill(host.begin(), host.end(), static_cast<float>(plan.sigmas.timesteps.at(k)));
  return out;
}

}  // namespace diffuflow
