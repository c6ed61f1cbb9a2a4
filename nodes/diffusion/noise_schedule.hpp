// noise_schedule: the betas and alphas_cumprod of the forward process, shared by
// the noiser, the loss and the sampler.
//
// Example config (under `resources:`):
//   - name: schedule
//     type: noise_schedule
//     params: {kind: linear, timesteps: 1000, beta_start: 0.0001, beta_end: 0.02}
//
// The tables are tiny host-side float32 constants, computed exactly as PyTorch
// (and diffusers) compute them, so a model trained here and one trained in
// Python see the same numbers:
//   linear: betas = torch.linspace(beta_start, beta_end, T) in float32
//   cosine: squaredcos_cap_v2, beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999),
//           abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2, in float64 then cast to float32
//   alphas = 1 - betas (float32); alphas_cumprod = running product accumulated in
//   float64 and rounded to float32 per entry (as torch.cumprod does on the CPU).
//
// Every derived coefficient below is evaluated in float32 in the order diffusers
// uses, so results match the PyTorch reference to the last bit or two.
#pragma once

#include "graph/resource.hpp"

#include <string>
#include <vector>

namespace diffuflow {

DIFFUFLOW_ENUM(ScheduleKind, linear, cosine);

class NoiseSchedule : public Resource {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(ScheduleKind, kind, ScheduleKind::linear,
                    "beta schedule: linear (Ho et al.) or cosine (Nichol & Dhariwal, squaredcos_cap_v2)");
    DIFFUFLOW_PARAM(int, timesteps, 1000, "T, the number of diffusion steps", .range(2, 100000));
    DIFFUFLOW_PARAM(double, beta_start, 1e-4, "first beta of the linear schedule", .range(1e-9, 0.999));
    DIFFUFLOW_PARAM(double, beta_end, 0.02, "last beta of the linear schedule", .range(1e-9, 0.999));
  };

  static ResourceContract contract();
  NoiseSchedule(const ResourceConfig& config, RunContext& ctx);
  explicit NoiseSchedule(const Params& params);

  // The raw tables. ConfigError when the parameters give betas outside (0, 1).
  static std::vector<float> linear_betas(int timesteps, double beta_start, double beta_end);
  static std::vector<float> cosine_betas(int timesteps, double max_beta = 0.999);
  static std::vector<float> cumprod_alphas(const std::vector<float>& betas);

  const Params& params() const { return params_; }
  int timesteps() const { return params_.timesteps; }
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

  // The DDPM posterior q(x_{t-1} | x_t, x_0) for the step t -> t-1:
  //   mean = coef_x0 * x0 + coef_xt * x_t, variance (fixed_small) clamped to >= 1e-20.
  struct Posterior {
    float coef_x0 = 0;
    float coef_xt = 0;
    float variance = 0;
  };
  Posterior posterior(int t) const;

  // Throws std::out_of_range naming the valid range when t is outside [0, T).
  void check_timestep(int64_t t) const;

 private:
  void build();

  Params params_;
  std::vector<float> betas_;
  std::vector<float> alphas_cumprod_;
};

}  // namespace diffuflow
