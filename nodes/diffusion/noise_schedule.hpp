// noise_schedule: the betas and alphas_cumprod of the forward process, shared by
// the noiser, the loss and the sampler, and the diffusers scheduler settings
// the samplers follow (prediction type, clipping, thresholding, timestep spacing).
//
// Example config (under `resources:`), three ways to say the same kind of thing:
//   - {name: schedule, type: noise_schedule, params: {kind: linear, timesteps: 1000}}
//   - {name: schedule, type: noise_schedule, params: {config: models/ddpm-cifar10-32}}
//   - name: schedule
//     type: noise_schedule
//     params: {beta_schedule: squaredcos_cap_v2, prediction_type: v_prediction, timestep_spacing: trailing}
//
// Every key of diffusers' DDPMScheduler / DDIMScheduler config is a parameter
// (SchedulerConfig's rows); `config` names a scheduler_config.json, a folder
// holding one (a diffusers pipeline folder), or holds the keys inline as a
// YAML/JSON mapping. `kind` (cosine = squaredcos_cap_v2) and `timesteps`
// (= num_train_timesteps) are this project's older names. The sources combine
// key by key: a value other than diffusers' default wins over the default, and
// two different non-default values for one key are a ConfigError.
//
// The tables are tiny host-side float32 constants, computed exactly as PyTorch
// (and diffusers) compute them, so a model trained here and one trained in
// Python see the same numbers:
//   linear: betas = torch.linspace(beta_start, beta_end, T) in float32
//   scaled_linear: torch.linspace(sqrt(beta_start), sqrt(beta_end), T) squared in float32
//   squaredcos_cap_v2: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999),
//           abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2, in float64 then cast to float32
//   trained_betas: the given values, cast to float32
//   rescale_betas_zero_snr: sqrt(alphas_cumprod) shifted to end at 0 and scaled
//           to keep its first value, back to betas (float32, diffusers' order)
//   alphas = 1 - betas (float32); alphas_cumprod = running product accumulated in
//   float64 and rounded to float32 per entry (as torch.cumprod does on the CPU).
//
// Every derived coefficient below is evaluated in float32 in the order diffusers
// uses, so results match the PyTorch reference to the last bit or two.
#pragma once

#include "graph/resource.hpp"
#include "nodes/diffusion/scheduler_config.hpp"

#include <string>
#include <vector>

namespace diffuflow {

DIFFUFLOW_ENUM(ScheduleKind, linear, cosine);

class NoiseSchedule : public Resource {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, config, "",
                    "a diffusers scheduler config: scheduler_config.json, a folder holding one (or scheduler/ of "
                    "a pipeline folder), or the keys inline as a YAML/JSON mapping");
    DIFFUFLOW_PARAM(ScheduleKind, kind, ScheduleKind::linear,
                    "beta schedule: linear (Ho et al.) or cosine (Nichol & Dhariwal, squaredcos_cap_v2); "
                    "same as beta_schedule");
    DIFFUFLOW_PARAM(int, timesteps, 1000, "T, the number of diffusion steps; same as num_train_timesteps",
                    .range(2, 100000));
    // num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type, ...
    DIFFUFLOW_PARAM_GROUP(SchedulerConfig, scheduler, SchedulerConfig{});
  };

  // The scheduler config the parameters describe: `config` (when given), the
  // diffusers keys and kind/timesteps combined as described above.
  static SchedulerConfig resolve(const Params& params);
  // Validation: the parameters resolve and give a valid table.
  static void check(const Params& params);

  static ResourceContract contract();
  NoiseSchedule(const ResourceConfig& config, RunContext& ctx);
  explicit NoiseSchedule(const Params& params);
  explicit NoiseSchedule(const SchedulerConfig& config);

  // The raw tables.
  static std::vector<float> linear_betas(int timesteps, double beta_start, double beta_end);
  static std::vector<float> scaled_linear_betas(int timesteps, double beta_start, double beta_end);
  static std::vector<float> cosine_betas(int timesteps, double max_beta = 0.999);
  static std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas);
  static std::vector<float> cumprod_alphas(const std::vector<float>& betas);
  // The betas a config gives (before the checks the constructor makes).
  static std::vector<float> betas_of(const SchedulerConfig& config);

  // The parameters it was made from (for a config, the config as parameters).
  const Params& params() const { return params_; }
  const SchedulerConfig& config() const { return config_; }
  int timesteps() const { return static_cast<int>(config_.num_train_timesteps); }
  const std::vector<float>& betas() const { return betas_; }
  const std::vector<float>& alphas_cumprod() const { return alphas_cumprod_; }

  // Per-timestep values (float32). t must be in [0, T); alpha_bar_prev accepts
  // t = -1 .. T-1 and returns 1 for t < 0 (the "alpha set to one" convention).
  float beta(int t) const;
  float alpha_bar(int t) const;
  float alpha_bar_prev(int t) const { return alpha_bar_or_one(t - 1); }
  float alpha_bar_or_one(int t) const;  // abar_t, or 1 when t < 0
  float sqrt_alpha_bar(int t) const;                // sqrt(abar_t)
  float sqrt_one_minus_alpha_bar(int t) const;      // sqrt(1 - abar_t)
  float snr(int t) const;                           // abar_t / (1 - abar_t)

  // The DDPM posterior q(x_prev | x_t, x_0) for the step t -> t_prev (t - 1 for
  // the full chain; the next timestep of a shorter one, or -1 after the last,
  // where abar is 1): mean = coef_x0 * x0 + coef_xt * x_t; `variance` is
  // fixed_small, clamped to >= 1e-20, and `beta` the step's beta,
  // 1 - abar_t / abar_prev (fixed_large's variance).
  struct Posterior {
    float coef_x0 = 0;
    float coef_xt = 0;
    float variance = 0;
    float beta = 0;
  };
  Posterior posterior(int t) const { return posterior(t, t - 1); }
  Posterior posterior(int t, int t_prev) const;

  // Throws std::out_of_range naming the valid range when t is outside [0, T).
  void check_timestep(int64_t t) const;

 private:
  void build();

  Params params_;
  SchedulerConfig config_;
  std::vector<float> betas_;
  std::vector<float> alphas_cumprod_;
};

}  // namespace diffuflow
