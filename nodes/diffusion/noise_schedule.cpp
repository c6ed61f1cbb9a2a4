#include "nodes/diffusion/noise_schedule.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

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

// Inline configs are mappings: "{...}" or YAML lines ("key: value"); anything else is a path.
bool is_inline_config(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return false;
  return text[first] == '{' || text.find('\n', first) != std::string::npos || text.find(": ") != std::string::npos;
}

}  // namespace

ResourceContract NoiseSchedule::contract() {
  ResourceContract c;
  c.doc = "The forward-process betas and alphas_cumprod, shared by noiser, loss and sampler, with the diffusers "
          "scheduler settings the samplers follow; takes diffusers' DDPMScheduler/DDIMScheduler config keys, "
          "inline or from a scheduler_config.json.";
  return c;
}

SchedulerConfig NoiseSchedule::resolve(const Params& params) {
  // kind and timesteps, seen as diffusers keys, then combined with the diffusers keys given.
  SchedulerConfig older;
  older.num_train_timesteps = params.timesteps;
  older.beta_schedule = params.kind == ScheduleKind::cosine ? BetaSchedule::squaredcos_cap_v2 : BetaSchedule::linear;
  SchedulerConfig config = merge_scheduler_configs(older, "the parameters kind/timesteps", params.scheduler,
                                                   "the diffusers parameters");
  if (!params.config.empty()) {
    const SchedulerConfig given = is_inline_config(params.config)
                                      ? SchedulerConfig::from_text(params.config, "noise_schedule config")
                                      : SchedulerConfig::from_file(params.config);
    config = merge_scheduler_configs(given, "config '" + params.config + "'", config, "the other parameters");
  }
  config.validate("noise_schedule");
  return config;
}

void NoiseSchedule::check(const Params& params) { NoiseSchedule schedule(params); }

NoiseSchedule::NoiseSchedule(const ResourceConfig& config, RunContext& ctx)
    : NoiseSchedule(config.params_as<Params>()) {}

NoiseSchedule::NoiseSchedule(const Params& params) : params_(params), config_(resolve(params)) { build(); }

NoiseSchedule::NoiseSchedule(const SchedulerConfig& config) : config_(config) {
  config_.validate();
  params_.scheduler = config;
  params_.timesteps = static_cast<int>(config.num_train_timesteps);
  params_.kind = config.beta_schedule == BetaSchedule::squaredcos_cap_v2 ? ScheduleKind::cosine : ScheduleKind::linear;
  build();
}

void NoiseSchedule::build() {
  betas_ = betas_of(config_);
  // Betas in (0, 1]; 1 only where the schedule ends with zero signal (rescale_betas_zero_snr).
  for (size_t i = 0; i < betas_.size(); ++i) {
    if (!(betas_[i] > 0.0f && betas_[i] <= 1.0f)) {
      throw ConfigError(SourceLocation{}, "noise_schedule: beta[" + std::to_string(i) + "] = " +
                                              std::to_string(betas_[i]) + " is outside (0, 1]");
    }
  }
  alphas_cumprod_ = cumprod_alphas(betas_);
}

std::vector<float> NoiseSchedule::betas_of(const SchedulerConfig& config) {
  const int T = static_cast<int>(config.num_train_timesteps);
  if (T < 2) {
    throw ConfigError(SourceLocation{}, "noise_schedule needs timesteps >= 2, got " + std::to_string(T));
  }
  std::vector<float> betas;
  if (!config.trained_betas.empty()) {
    betas.assign(config.trained_betas.begin(), config.trained_betas.end());  // torch.tensor(..., float32)
  } else {
    switch (config.beta_schedule) {
      case BetaSchedule::linear: betas = linear_betas(T, config.beta_start, config.beta_end); break;
      case BetaSchedule::scaled_linear: betas = scaled_linear_betas(T, config.beta_start, config.beta_end); break;
      case BetaSchedule::squaredcos_cap_v2: betas = cosine_betas(T); break;
    }
  }
  if (config.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  return betas;
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

std::vector<float> NoiseSchedule::scaled_linear_betas(int timesteps, double beta_start, double beta_end) {
  // torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=float32) ** 2: the roots in
  // float64, the line in float32, each value squared in float32.
  std::vector<float> betas = linear_betas(timesteps, std::pow(beta_start, 0.5), std::pow(beta_end, 0.5));
  for (float& b : betas) b = b * b;
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

std::vector<float> NoiseSchedule::rescale_zero_terminal_snr(const std::vector<float>& betas) {
  // Lin et al. 2023, algorithm 1, on float32 tables as diffusers computes it:
  // s = sqrt(alphas_cumprod); s = (s - s_last) * (s_0 / (s_0 - s_last)); abar = s * s;
  // alphas = abar_0, then abar_i / abar_{i-1}; betas = 1 - alphas.
  const std::vector<float> cumprod = cumprod_alphas(betas);
  std::vector<float> root(cumprod.size());
  for (size_t i = 0; i < root.size(); ++i) root[i] = std::sqrt(cumprod[i]);
  const float first = root.front(), last = root.back();
  const float scale = first / (first - last);
  std::vector<float> abar(root.size());
  for (size_t i = 0; i < root.size(); ++i) {
    const float shifted = root[i] - last;
    const float scaled = shifted * scale;
    abar[i] = scaled * scaled;
  }
  std::vector<float> out(betas.size());
  for (size_t i = 0; i < out.size(); ++i) {
    const float alpha = i == 0 ? abar[0] : abar[i] / abar[i - 1];
    out[i] = 1.0f - alpha;
  }
  return out;
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
  if (t < 0 || t >= timesteps()) {
    throw std::out_of_range("timestep " + std::to_string(t) + " is outside [0, " +
                            std::to_string(timesteps() - 1) + "]");
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

NoiseSchedule::Posterior NoiseSchedule::posterior(int t, int t_prev) const {
  // diffusers DDPMScheduler.step, float32, same order of operations.
  const float ab_t = alpha_bar(t);
  const float ab_prev = alpha_bar_or_one(t_prev);
  const float beta_prod_t = 1.0f - ab_t;
  const float beta_prod_prev = 1.0f - ab_prev;
  const float alpha_t = ab_t / ab_prev;
  const float beta_t = 1.0f - alpha_t;
  Posterior p;
  p.coef_x0 = (std::sqrt(ab_prev) * beta_t) / beta_prod_t;
  p.coef_xt = (std::sqrt(alpha_t) * beta_prod_prev) / beta_prod_t;
  p.variance = std::max((beta_prod_prev / beta_prod_t) * beta_t, kMinVariance);
  p.beta = beta_t;
  return p;
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_RESOURCE(noise_schedule, diffuflow::NoiseSchedule);
