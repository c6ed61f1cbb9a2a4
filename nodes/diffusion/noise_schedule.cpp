#include "nodes/diffusion/noise_schedule.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace diffuflow {

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr float kMinVariance = 1e-20f;
// torch.linspace on the CPU fills float32 output 8 lanes at a time (AVX2):
// each group starts from a base value and adds lane * step in float32.
constexpr int kLinspaceLanes = 8;

// squaredcos_cap_v2's alpha-bar, as diffusers writes it (float64).
double cosine_alpha_bar(double s) {
  const double c = std::cos((s + 0.008) / 1.008 * kPi / 2);
  return c * c;
}

}  // namespace

ResourceContract NoiseSchedule::contract() {
  ResourceContract c;
  c.doc = "The forward-process betas and alphas_cumprod (DDPM linear or cosine), shared by noiser, loss and sampler.";
  return c;
}

NoiseSchedule::NoiseSchedule(const ResourceConfig& config, RunContext& ctx)
    : NoiseSchedule(config.params_as<Params>()) {}

NoiseSchedule::NoiseSchedule(const Params& params) : params_(params) { build(); }

void NoiseSchedule::build() {
  if (params_.timesteps < 2) {
    throw ConfigError(SourceLocation{}, "noise_schedule needs timesteps >= 2, got " +
                                            std::to_string(params_.timesteps));
  }
  betas_ = params_.kind == ScheduleKind::linear
               ? linear_betas(params_.timesteps, params_.beta_start, params_.beta_end)
               : cosine_betas(params_.timesteps);
  for (size_t i = 0; i < betas_.size(); ++i) {
    if (!(betas_[i] > 0.0f && betas_[i] < 1.0f)) {
      throw ConfigError(SourceLocation{}, "noise_schedule: beta[" + std::to_string(i) + "] = " +
                                              std::to_string(betas_[i]) + " is outside (0, 1)");
    }
  }
  alphas_cumprod_ = cumprod_alphas(betas_);
}

std::vector<float> NoiseSchedule::linear_betas(int timesteps, double beta_start, double beta_end) {
  // Mirrors torch.linspace(start, end, steps) for float32 on the CPU (x86-64,
  // AVX2 kernels): the step is computed in float32; the first half counts up from
  // start and the second half down from end; whole groups of 8 use
  // base + lane * step, the tail is scalar. Matches torch bit for bit; float64
  // linspace cast to float32 would differ by up to 1.9e-9.
  const float start = static_cast<float>(beta_start);
  const float end = static_cast<float>(beta_end);
  const int64_t steps = timesteps;
  std::vector<float> betas(static_cast<size_t>(steps));
  if (steps == 1) {
    betas[0] = start;
    return betas;
  }
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int64_t halfway = steps / 2;
  // PyTorch's AVX2 build contracts `start + step * idx` into one fused
  // multiply-add; the per-lane `base + lane * step` stays two roundings.
  auto value_at = [&](int64_t idx) -> float {
    if (idx < halfway) return std::fma(step, static_cast<float>(idx), start);
    return std::fma(-step, static_cast<float>(steps - idx - 1), end);
  };
  int64_t idx = 0;
  // The vectorised loop handles two groups per iteration.
  const int64_t vector_end = steps - steps % (2 * kLinspaceLanes);
  for (; idx < vector_end; idx += kLinspaceLanes) {
    const float base = value_at(idx);
    for (int lane = 0; lane < kLinspaceLanes; ++lane) {
      const float offset = static_cast<float>(lane) * step;
      betas[static_cast<size_t>(idx + lane)] = base + offset;
    }
  }
  for (; idx < steps; ++idx) betas[static_cast<size_t>(idx)] = value_at(idx);
  return betas;
}

std::vector<float> NoiseSchedule::cosine_betas(int timesteps, double max_beta) {
  std::vector<float> betas(static_cast<size_t>(timesteps));
  for (int i = 0; i < timesteps; ++i) {
    const double t1 = static_cast<double>(i) / timesteps;
    const double t2 = static_cast<double>(i + 1) / timesteps;
    betas[static_cast<size_t>(i)] =
        static_cast<float>(std::min(1.0 - cosine_alpha_bar(t2) / cosine_alpha_bar(t1), max_beta));
  }
  return betas;
}

std::vector<float> NoiseSchedule::cumprod_alphas(const std::vector<float>& betas) {
  std::vector<float> cumprod(betas.size());
  double running = 1.0;
  for (size_t i = 0; i < betas.size(); ++i) {
    const float alpha = 1.0f - betas[i];  // float32, as `1 - betas` on a float tensor
    running *= static_cast<double>(alpha);
    cumprod[i] = static_cast<float>(running);
  }
  return cumprod;
}

void NoiseSchedule::check_timestep(int64_t t) const {
  if (t < 0 || t >= params_.timesteps) {
    throw std::out_of_range("timestep " + std::to_string(t) + " is outside [0, " +
                            std::to_string(params_.timesteps - 1) + "]");
  }
}

float NoiseSchedule::beta(int t) const {
  check_timestep(t);
  return betas_[static_cast<size_t>(t)];
}

float NoiseSchedule::alpha_bar(int t) const {
  check_timestep(t);
  return alphas_cumprod_[static_cast<size_t>(t)];
}

float NoiseSchedule::alpha_bar_or_one(int t) const { return t < 0 ? 1.0f : alpha_bar(t); }

float NoiseSchedule::sqrt_alpha_bar(int t) const { return std::sqrt(alpha_bar(t)); }

float NoiseSchedule::sqrt_one_minus_alpha_bar(int t) const { return std::sqrt(1.0f - alpha_bar(t)); }

float NoiseSchedule::snr(int t) const {
  const float ab = alpha_bar(t);
  return ab / (1.0f - ab);
}

NoiseSchedule::Posterior NoiseSchedule::posterior(int t) const {
  // diffusers DDPMScheduler.step, float32, same order of operations.
  const float ab_t = alpha_bar(t);
  const float ab_prev = alpha_bar_or_one(t - 1);
  const float beta_prod_t = 1.0f - ab_t;
  const float beta_prod_prev = 1.0f - ab_prev;
  const float alpha_t = ab_t / ab_prev;
  const float beta_t = 1.0f - alpha_t;
  Posterior p;
  p.coef_x0 = (std::sqrt(ab_prev) * beta_t) / beta_prod_t;
  p.coef_xt = (std::sqrt(alpha_t) * beta_prod_prev) / beta_prod_t;
  p.variance = std::max((beta_prod_prev / beta_prod_t) * beta_t, kMinVariance);
  return p;
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_RESOURCE(noise_schedule, diffuflow::NoiseSchedule);
