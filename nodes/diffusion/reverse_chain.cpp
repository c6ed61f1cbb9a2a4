#include "nodes/diffusion/reverse_chain.hpp"

#include "graph/errors.hpp"

#include <algorithm>
#include <cmath>

namespace diffuflow {

namespace {

constexpr int64_t kDefaultDdimSteps = 50;

}  // namespace

ReverseChainPlan plan_reverse_chain(int schedule_timesteps, SamplerMethod method, int64_t steps, int64_t snapshots,
                                    const std::string& snapshots_param) {
  int64_t count = steps;
  if (count == 0) {
    count = method == SamplerMethod::ddim ? std::min<int64_t>(kDefaultDdimSteps, schedule_timesteps)
                                          : schedule_timesteps;
  }
  if (count < 1 || count > schedule_timesteps) {
    throw ConfigError(SourceLocation{"", 0, 0, "steps"},
                      "sampling steps must be in [1, " + std::to_string(schedule_timesteps) +
                          "] (at most the schedule's " + std::to_string(schedule_timesteps) + " timesteps), got " +
                          std::to_string(count));
  }
  ReverseChainPlan plan;
  plan.timesteps = DiffusionSteps::ddim_timesteps(schedule_timesteps, static_cast<int>(count));
  plan.stride = schedule_timesteps / static_cast<int>(count);
  plan.ancestral = method == SamplerMethod::ddpm && plan.stride == 1;
  const int64_t positions = count + 1;  // x_T, then one state after every step
  if (snapshots > positions) {
    throw ConfigError(SourceLocation{"", 0, 0, snapshots_param},
                      snapshots_param + ": reverse chain snapshots must be at most steps + 1 = " +
                          std::to_string(positions) + ", got " + std::to_string(snapshots));
  }
  if (snapshots == 1) plan.snapshot_positions = {count};
  for (int64_t k = 0; snapshots > 1 && k < snapshots; ++k) {
    plan.snapshot_positions.push_back(static_cast<int64_t>(std::llround(double(k) * count / double(snapshots - 1))));
  }
  return plan;
}

}  // namespace diffuflow
