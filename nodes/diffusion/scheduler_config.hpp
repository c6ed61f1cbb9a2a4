// SchedulerConfig: a diffusers scheduler configuration (DDPMScheduler,
// DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
// EulerAncestralDiscreteScheduler, UniPCMultistepScheduler), with diffusers' key names, values and defaults. It is the one
// description of a noise schedule and of how a reverse step treats the model's
// output: the noise_schedule resource holds one (its parameters are these rows),
// the samplers read their settings from it, `diffuflow scheduler-io` loads one
// from scheduler_config.json, and to_json() writes one that diffusers loads.
//
//   {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
//    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
//    "prediction_type": "v_prediction", "timestep_spacing": "trailing",
//    "rescale_betas_zero_snr": true, "clip_sample": false, "set_alpha_to_one": false}
//
// Each row below is a key of diffusers' config; a value this project does not
// implement (beta_schedule sigmoid, variance_type learned, ...) and a key it does
// not know are ConfigErrors naming the key, the value and what is supported.
// `_class_name` and `_diffusers_version` are accepted as well. Keys for the
// sigma spacings and schedule shifts diffusers offers beside Karras sigmas
// (use_exponential_sigmas, use_beta_sigmas, use_lu_lambdas, use_flow_sigmas,
// use_dynamic_shifting, sigma_min, interpolation_type, ...) are outside this
// project's samplers: a config holding their defaults loads, any other value
// is one ConfigError naming the key (docs/sampling.md lists them).
#pragma once

#include "graph/param_table.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace diffuflow {

DIFFUFLOW_ENUM(BetaSchedule, linear, scaled_linear, squaredcos_cap_v2);
// diffusers' spelling of what the model predicts (PredictionTarget: epsilon | v | x0).
DIFFUFLOW_ENUM(PredictionType, epsilon, v_prediction, sample);
DIFFUFLOW_ENUM(TimestepSpacing, leading, trailing, linspace);
DIFFUFLOW_ENUM(VarianceType, fixed_small, fixed_large);
DIFFUFLOW_ENUM(SchedulerClass, DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
               EulerAncestralDiscreteScheduler, UniPCMultistepScheduler);
// DPM-Solver's second-order update (Lu et al. 2022): midpoint or heun; UniPC's
// B(h) (Zhao et al. 2023): bh1 (h) or bh2 (e^h - 1). Each class reads the other's
// names as diffusers does: DPM-Solver bh1/bh2 as midpoint, UniPC midpoint/heun as bh2.
DIFFUFLOW_ENUM(SolverType, midpoint, heun, bh1, bh2);
// The sigma after the last solver step: 0, or sigma at timestep 0.
DIFFUFLOW_ENUM(FinalSigmasType, zero, sigma_min);

// DPMSolverMultistepScheduler's algorithm_type: dpmsolver, dpmsolver++,
// sde-dpmsolver, sde-dpmsolver++ (diffusers' spelling, which is not a C++ name).
enum class DpmAlgorithm { dpmsolver, dpmsolver_pp, sde_dpmsolver, sde_dpmsolver_pp };

// The classes that step in sigma space (DPM-Solver, Euler, Euler ancestral, UniPC),
// as opposed to DDPM and DDIM.
bool is_sigma_class(SchedulerClass cls);

struct SchedulerConfig {
  DIFFUFLOW_PARAMS(SchedulerConfig);
  DIFFUFLOW_PARAM(int64_t, num_train_timesteps, 1000, "T, the number of diffusion steps the model is trained with",
                  .range(2, 100000));
  DIFFUFLOW_PARAM(double, beta_start, 1e-4, "first beta of the linear and scaled_linear schedules",
                  .range(1e-9, 0.999));
  DIFFUFLOW_PARAM(double, beta_end, 0.02, "last beta of the linear and scaled_linear schedules", .range(1e-9, 0.999));
  DIFFUFLOW_PARAM(BetaSchedule, beta_schedule, BetaSchedule::linear,
                  "linear (Ho et al.), scaled_linear (linear in sqrt(beta)) or squaredcos_cap_v2 (cosine)");
  DIFFUFLOW_PARAM(std::vector<double>, trained_betas, {},
                  "T betas used as given, instead of beta_schedule (empty: none)", .range(0.0, 1.0));
  DIFFUFLOW_PARAM(PredictionType, prediction_type, PredictionType::epsilon,
                  "what the model predicts: epsilon (the noise), v_prediction or sample (x_0)");
  DIFFUFLOW_PARAM(bool, clip_sample, true, "clip the predicted x_0 to [-clip_sample_range, clip_sample_range]");
  DIFFUFLOW_PARAM(double, clip_sample_range, 1.0, "bound of clip_sample", .range(1e-6, 1e6));
  DIFFUFLOW_PARAM(TimestepSpacing, timestep_spacing, TimestepSpacing::leading,
                  "how K sampling steps are spread over T: leading (k T/K + steps_offset), trailing (from T-1 "
                  "down) or linspace");
  DIFFUFLOW_PARAM(int64_t, steps_offset, 0, "added to every timestep of leading spacing", .range(0, 100000));
  DIFFUFLOW_PARAM(bool, set_alpha_to_one, true,
                  "DDIM: past the last step alphas_cumprod is 1 (else alphas_cumprod[0])");
  DIFFUFLOW_PARAM(VarianceType, variance_type, VarianceType::fixed_small,
                  "DDPM step noise: fixed_small (the posterior variance) or fixed_large (beta_t)");
  DIFFUFLOW_PARAM(bool, rescale_betas_zero_snr, false,
                  "rescale the betas so the last timestep has zero signal (Lin et al. 2023); pair with "
                  "v_prediction");
  DIFFUFLOW_PARAM(bool, thresholding, false,
                  "dynamic thresholding of the predicted x_0 (Saharia et al. 2022), instead of clip_sample");
  DIFFUFLOW_PARAM(double, dynamic_thresholding_ratio, 0.995, "thresholding: the quantile of |x_0| per sample",
                  .range(0.0, 1.0));
  DIFFUFLOW_PARAM(double, sample_max_value, 1.0, "thresholding: the largest threshold", .range(1e-6, 1e6));
  // DPMSolverMultistepScheduler, EulerDiscreteScheduler (use_karras_sigmas, final_sigmas_type).
  DIFFUFLOW_PARAM(int64_t, solver_order, 2,
                  "DPM-Solver: 1 (DDIM-like), 2 (2M, multistep) or 3 (3M; not with sde-dpmsolver)", .range(1, 3));
  DIFFUFLOW_PARAM(std::string, algorithm_type, "dpmsolver++",
                  "DPM-Solver: dpmsolver++ (on the x_0 prediction), dpmsolver (on epsilon), or their stochastic "
                  "sde-dpmsolver++ and sde-dpmsolver; dpmsolver and sde-dpmsolver need final_sigmas_type sigma_min");
  DIFFUFLOW_PARAM(SolverType, solver_type, SolverType::midpoint,
                  "DPM-Solver's second-order update (midpoint or heun); UniPC's B(h) (bh1, or bh2 for any other)");
  DIFFUFLOW_PARAM(bool, lower_order_final, true, "DPM-Solver: lower-order final steps when there are fewer than 15");
  DIFFUFLOW_PARAM(bool, euler_at_final, false, "DPM-Solver: a first-order last step whatever the step count");
  DIFFUFLOW_PARAM(bool, use_karras_sigmas, false,
                  "DPM-Solver and Euler: sigmas spaced as Karras et al. 2022 (rho 7) between the schedule's ends");
  DIFFUFLOW_PARAM(bool, predict_x0, true, "UniPC: solve on the x_0 prediction (UniPC-p on the data), else on epsilon");
  DIFFUFLOW_PARAM(std::vector<int64_t>, disable_corrector, {},
                  "UniPC: the step indices whose result is not corrected (empty: every step's is)", .range(0, 100000));
  DIFFUFLOW_PARAM(FinalSigmasType, final_sigmas_type, FinalSigmasType::zero,
                  "DPM-Solver and Euler: the sigma after the last step, zero or sigma_min (sigma at timestep 0)");

  // `_class_name`: which diffusers scheduler the config describes (not a row).
  SchedulerClass class_name = SchedulerClass::DDPMScheduler;

  // Parses a scheduler config: JSON (diffusers' scheduler_config.json) or the
  // same keys as a YAML mapping. `source` names it in errors. Missing keys
  // take diffusers' defaults. Validates.
  static SchedulerConfig from_text(const std::string& text, const std::string& source);
  // A scheduler_config.json, or a folder holding one (directly or in
  // scheduler/, as a diffusers pipeline folder does).
  static SchedulerConfig from_file(const std::filesystem::path& path);
  // The file from_file() reads for `path`; ConfigError naming what was looked for.
  static std::filesystem::path config_file(const std::filesystem::path& path);

  // Cross-key checks: trained_betas of length T, a known algorithm_type and
  // the combinations diffusers refuses (dpmsolver and sde-dpmsolver towards
  // sigma 0, sde-dpmsolver of order 3). ConfigError prefixed with `source`.
  void validate(const std::string& source = "scheduler config") const;

  // Whether diffusers' class `cls` takes the key (a row's name).
  static bool class_takes(SchedulerClass cls, const std::string& key);

  // diffusers' scheduler_config.json for class_name (the keys its class takes).
  std::string to_json() const;

  // diffusers' set_timesteps(steps): the timesteps a sampler with `steps` model
  // calls visits, noisiest first. ConfigError when steps is outside [1, T] or a
  // timestep falls outside [0, T) (steps_offset too large; trailing spacing's
  // rounding giving -1 for some T and steps).
  std::vector<int64_t> inference_timesteps(int64_t steps) const;

  bool operator==(const SchedulerConfig& other) const;
  bool operator!=(const SchedulerConfig& other) const { return !(*this == other); }
};

// The config's algorithm_type (validate() refuses other spellings).
DpmAlgorithm dpm_algorithm(const SchedulerConfig& config);
// sde-dpmsolver or sde-dpmsolver++: a DPM-Solver step that adds noise.
bool is_sde_algorithm(const SchedulerConfig& config);

// `base` with keys set from "KEY=VALUE" texts (diffusers' key names and values,
// e.g. "algorithm_type=sde-dpmsolver++", "disable_corrector=[0, 3]"), each
// parsed and range-checked as in a config file, then validated. ConfigErrors
// name `source` and the key.
SchedulerConfig with_scheduler_keys(const SchedulerConfig& base, const std::vector<std::string>& assignments,
                                    const std::string& source);

// Combines two descriptions of one scheduler (a config file and pipeline
// parameters): for each key, a value other than diffusers' default wins over
// the default; two different non-default values are a ConfigError naming the
// key and both values, with `a_name` and `b_name` saying where each came from.
SchedulerConfig merge_scheduler_configs(const SchedulerConfig& a, const std::string& a_name, const SchedulerConfig& b,
                                        const std::string& b_name);

}  // namespace diffuflow
