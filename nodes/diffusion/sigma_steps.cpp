#include "nodes/diffusion/sigma_steps.hpp"

#include "graph/errors.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace diffuflow {

namespace {

ConfigError steps_error(const std::string& what) { return ConfigError(SourceLocation{"", 0, 0, "steps"}, what); }

// np.interp(x, arange(T), values) for one x in [0, T - 1], in float64.
double interpolate(double x, const std::vector<float>& values) {
  const size_t last = values.size() - 1;
  if (x >= static_cast<double>(last)) return values[last];
  if (x <= 0.0) return values[0];
  const size_t j = static_cast<size_t>(std::floor(x));
  if (x == static_cast<double>(j)) return values[j];
  const double slope = static_cast<double>(values[j + 1]) - static_cast<double>(values[j]);
  return slope * (x - static_cast<double>(j)) + static_cast<double>(values[j]);
}

// The fractional timestep whose log sigma interpolates to log(sigma) (diffusers'
// _sigma_to_t): log_sigmas [T] ascending, float32 as numpy holds them.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // The last index whose log sigma is at most log(sigma) (0 when none), at most T - 2.
  size_t low = 0;
  for (size_t i = 0; i < log_sigmas.size(); ++i)
    if (log_sigma - static_cast<double>(log_sigmas[i]) >= 0.0) low = i;
  low = std::min(low, log_sigmas.size() - 2);
  const double lo = log_sigmas[low], hi = log_sigmas[low + 1];
  const double w = std::min(std::max((lo - log_sigma) / (lo - hi), 0.0), 1.0);
  return (1.0 - w) * static_cast<double>(low) + w * static_cast<double>(low + 1);
}

// Karras et al. 2022 (eq. 5, rho = 7): `count` sigmas from sigma_max down to sigma_min.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t count) {
  constexpr double kRho = 7.0;
  const double min_inv_rho = std::pow(sigma_min, 1.0 / kRho), max_inv_rho = std::pow(sigma_max, 1.0 / kRho);
  std::vector<double> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const double ramp = count > 1 ? (i == count - 1 ? 1.0 : static_cast<double>(i) * (1.0 / double(count - 1))) : 0.0;
    out[static_cast<size_t>(i)] = std::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), kRho);
  }
  return out;
}

// np.linspace(start, stop, count)[i] in float64: start + i * step, the last exactly stop.
double linspace_at(double start, double stop, int64_t count, int64_t i) {
  if (count > 1 && i == count - 1) return stop;
  const double step = count > 1 ? (stop - start) / static_cast<double>(count - 1) : 0.0;
  return static_cast<double>(i) * step + start;
}

// DPMSolverMultistepScheduler's timesteps: its linspace and leading spacings
// divide T into steps + 1 parts and drop the 0; trailing is the usual one.
std::vector<int64_t> dpm_timesteps(const SchedulerConfig& config, int64_t steps) {
  const int64_t T = config.num_train_timesteps;
  std::vector<int64_t> out;
  switch (config.timestep_spacing) {
    case TimestepSpacing::linspace:
      for (int64_t i = steps; i >= 1; --i)
        out.push_back(static_cast<int64_t>(std::nearbyint(linspace_at(0.0, double(T - 1), steps + 1, i))));
      break;
    case TimestepSpacing::leading: {
      const int64_t ratio = T / (steps + 1);
      for (int64_t i = steps; i >= 1; --i) out.push_back(i * ratio + config.steps_offset);
      break;
    }
    case TimestepSpacing::trailing: return config.inference_timesteps(steps);
  }
  for (int64_t t : out) {
    if (t < 0 || t >= T) {
      throw steps_error(enum_name(config.timestep_spacing) + " spacing of " + std::to_string(steps) +
                        " multistep solver steps over " + std::to_string(T) + " timesteps gives timestep " +
                        std::to_string(t) + ", outside [0, " + std::to_string(T - 1) + "] (steps_offset " +
                        std::to_string(config.steps_offset) + ")");
    }
  }
  return out;
}

// Euler's timesteps as float32 values: linspace is not rounded.
std::vector<double> euler_timesteps(const SchedulerConfig& config, int64_t steps) {
  std::vector<double> out;
  if (config.timestep_spacing == TimestepSpacing::linspace) {
    const double stop = static_cast<double>(config.num_train_timesteps - 1);
    for (int64_t i = steps - 1; i >= 0; --i)
      out.push_back(static_cast<float>(linspace_at(0.0, stop, steps, i)));
    return out;
  }
  for (int64_t t : config.inference_timesteps(steps)) out.push_back(static_cast<double>(t));
  return out;
}

// alpha_t = 1 / sqrt(sigma^2 + 1) and sigma_t = sigma alpha_t (diffusers' _sigma_to_alpha_sigma_t), float32.
struct AlphaSigma {
  float alpha, sigma, lambda;
  explicit AlphaSigma(float s) {
    alpha = 1.0f / std::sqrt(s * s + 1.0f);
    sigma = s * alpha;
    lambda = std::log(alpha) - std::log(sigma);  // +inf at sigma 0
  }
};

std::vector<float> same(size_t n, float value) { return std::vector<float>(n, value); }

}  // namespace

int SigmaSchedule::model_timestep(size_t k) const {
  return static_cast<int>(std::nearbyint(timesteps.at(k)));
}

bool SigmaSchedule::integer_timesteps() const {
  return std::all_of(timesteps.begin(), timesteps.end(), [](double t) { return t == std::floor(t); });
}

SigmaSchedule plan_sigma_schedule(const SchedulerConfig& config, SchedulerClass cls, int64_t steps,
                                  const std::vector<float>& alphas_cumprod) {
  if (!is_sigma_class(cls)) throw std::logic_error("plan_sigma_schedule: " + enum_name(cls) + " is not a sigma class");
  const int64_t T = config.num_train_timesteps;
  if (steps < 1 || steps > T) {
    throw steps_error(enum_name(cls) + ": sampling steps must be in [1, " + std::to_string(T) +
                      "] (at most the schedule's " + std::to_string(T) + " timesteps), got " + std::to_string(steps));
  }
  if (static_cast<int64_t>(alphas_cumprod.size()) != T) {
    throw std::invalid_argument("plan_sigma_schedule: " + std::to_string(alphas_cumprod.size()) +
                                " alphas_cumprod for " + std::to_string(T) + " timesteps");
  }
  if (cls == SchedulerClass::EulerAncestralDiscreteScheduler && config.prediction_type == PredictionType::sample) {
    throw ConfigError(SourceLocation{"", 0, 0, "prediction_type"},
                      "EulerAncestralDiscreteScheduler does not implement prediction_type sample (as in diffusers); "
                      "use epsilon or v_prediction, or another sampler");
  }
  if (cls == SchedulerClass::UniPCMultistepScheduler && !config.lower_order_final && config.solver_order > 1 &&
      config.final_sigmas_type == FinalSigmasType::zero) {
    // Its last step would be of order 2 or more towards sigma 0, where every r_k is 0: NaN (diffusers' too).
    throw ConfigError(SourceLocation{"", 0, 0, "lower_order_final"},
                      "UniPCMultistepScheduler with lower_order_final false and final_sigmas_type zero takes a "
                      "higher-order last step to sigma 0, which is undefined (0 / 0); set lower_order_final: true "
                      "or final_sigmas_type: sigma_min");
  }
  SigmaSchedule plan;
  plan.scheduler_class = cls;
  plan.alphas_cumprod = alphas_cumprod;
  // Close to 0 without being 0, so that the first sigma is finite.
  if (config.rescale_betas_zero_snr) plan.alphas_cumprod.back() = std::ldexp(1.0f, -24);
  const std::vector<float>& abar = plan.alphas_cumprod;
  std::vector<float> train_sigmas(abar.size()), log_sigmas(abar.size());
  for (size_t t = 0; t < abar.size(); ++t) {
    train_sigmas[t] = std::sqrt((1.0f - abar[t]) / abar[t]);
    log_sigmas[t] = std::log(train_sigmas[t]);
  }
  const bool karras = config.use_karras_sigmas && cls != SchedulerClass::EulerAncestralDiscreteScheduler;
  std::vector<double> sigmas;
  const bool multistep =
      cls == SchedulerClass::DPMSolverMultistepScheduler || cls == SchedulerClass::UniPCMultistepScheduler;
  if (multistep) {
    const std::vector<int64_t> ts = dpm_timesteps(config, steps);
    if (karras) {
      sigmas = karras_sigmas(train_sigmas.front(), train_sigmas.back(), steps);
      // Rounded to integers, except for DPM-Solver with the cosine schedule, where diffusers casts (truncates).
      // There a value within 1e-6 of an integer is that integer: the first Karras sigma is
      // sigma_max up to round-off, at T - 1, which truncation would turn into T - 2 or not
      // depending on the last bit of a logarithm.
      const bool round =
          config.beta_schedule != BetaSchedule::squaredcos_cap_v2 || cls == SchedulerClass::UniPCMultistepScheduler;
      for (double s : sigmas) {
        const double t = sigma_to_t(s, log_sigmas), nearest = std::nearbyint(t);
        plan.timesteps.push_back(round || std::fabs(t - nearest) < 1e-6 ? nearest : std::trunc(t));
      }
    } else {
      for (int64_t t : ts) {
        plan.timesteps.push_back(static_cast<double>(t));
        sigmas.push_back(train_sigmas[static_cast<size_t>(t)]);
      }
    }
  } else {
    plan.timesteps = euler_timesteps(config, steps);
    for (double t : plan.timesteps) sigmas.push_back(interpolate(t, train_sigmas));
    if (karras) {
      sigmas = karras_sigmas(sigmas.back(), sigmas.front(), steps);
      plan.timesteps.clear();
      for (double s : sigmas) plan.timesteps.push_back(static_cast<float>(sigma_to_t(s, log_sigmas)));
    }
  }
  for (double s : sigmas) plan.sigmas.push_back(static_cast<float>(s));
  const bool final_sigma_min =
      cls != SchedulerClass::EulerAncestralDiscreteScheduler && config.final_sigmas_type == FinalSigmasType::sigma_min;
  // UniPC with Karras sigmas ends at the last Karras sigma (the same value up to round-off).
  const float sigma_min = cls == SchedulerClass::UniPCMultistepScheduler && karras
                              ? static_cast<float>(sigmas.back())
                              : std::sqrt((1.0f - abar[0]) / abar[0]);
  plan.sigmas.push_back(final_sigma_min ? sigma_min : 0.0f);
  if (!multistep) {
    const float max_sigma = *std::max_element(plan.sigmas.begin(), plan.sigmas.end());
    const bool leading = config.timestep_spacing == TimestepSpacing::leading;
    plan.init_noise_sigma = leading ? std::sqrt(max_sigma * max_sigma + 1.0f) : max_sigma;
  }
  return plan;
}

Tensor scale_initial_noise(DiffusionSteps& steps, const SigmaSchedule& plan, const Tensor& noise) {
  const size_t n = static_cast<size_t>(noise.dim(0));
  if (plan.init_noise_sigma == 1.0f) return steps.on_device(noise);
  return steps.combine(same(n, plan.init_noise_sigma), noise, same(n, 0.0f), noise);
}

Tensor scale_model_input(DiffusionSteps& steps, const SigmaSchedule& plan, size_t k, const Tensor& sample) {
  if (k >= plan.size()) throw std::invalid_argument("scale_model_input: position " + std::to_string(k) + " of " +
                                                    std::to_string(plan.size()));
  if (plan.scheduler_class == SchedulerClass::DPMSolverMultistepScheduler ||
      plan.scheduler_class == SchedulerClass::UniPCMultistepScheduler)
    return steps.on_device(sample);
  const size_t n = static_cast<size_t>(sample.dim(0));
  const float sigma = plan.sigmas[k];
  // x / sqrt(sigma^2 + 1), as one division: (x - 0 x) / d.
  return steps.sub_scaled_div(sample, same(n, 0.0f), sample, same(n, std::sqrt(sigma * sigma + 1.0f)), false);
}

bool sigma_step_needs_noise(const SigmaSchedule& plan, const SchedulerConfig& config) {
  if (plan.scheduler_class == SchedulerClass::EulerAncestralDiscreteScheduler) return true;
  return plan.scheduler_class == SchedulerClass::DPMSolverMultistepScheduler && is_sde_algorithm(config);
}

int sigma_step_order(const SigmaSchedule& plan, const SchedulerConfig& config, size_t k) {
  const size_t count = plan.size();
  if (plan.scheduler_class == SchedulerClass::UniPCMultistepScheduler) {
    // diffusers: at most the steps left with lower_order_final, at most k + 1 (warm-up).
    const int64_t order = config.lower_order_final ? std::min<int64_t>(config.solver_order, int64_t(count - k))
                                                   : config.solver_order;
    return static_cast<int>(std::min<int64_t>(order, std::min<int64_t>(int64_t(k), config.solver_order) + 1));
  }
  if (plan.scheduler_class != SchedulerClass::DPMSolverMultistepScheduler) return 1;
  // diffusers: a first-order last step for few steps, with euler_at_final, or towards sigma 0;
  // a second-order step before it for few steps; the order grows by one per step from the first.
  const bool lower_order_final =
      k + 1 == count && (config.euler_at_final || (config.lower_order_final && count < 15) ||
                         config.final_sigmas_type == FinalSigmasType::zero);
  const bool lower_order_second = k + 2 == count && config.lower_order_final && count < 15;
  if (config.solver_order == 1 || k < 1 || lower_order_final) return 1;
  if (config.solver_order == 2 || k < 2 || lower_order_second) return 2;
  return 3;
}

namespace {

// The model output at sigma as a data prediction x_0 (thresholded when the
// config says so) or as a noise prediction epsilon, as diffusers' multistep
// solvers' convert_model_output computes them.
Tensor data_prediction_of(DiffusionSteps& steps, const SchedulerConfig& config, const AlphaSigma& s,
                          const Tensor& sample, const Tensor& model_output) {
  const size_t n = static_cast<size_t>(sample.dim(0));
  Tensor x0;
  switch (config.prediction_type) {
    case PredictionType::epsilon:
      x0 = steps.sub_scaled_div(sample, same(n, s.sigma), model_output, same(n, s.alpha), false);
      break;
    case PredictionType::v_prediction: x0 = steps.combine(same(n, s.alpha), sample, same(n, -s.sigma), model_output); break;
    case PredictionType::sample: x0 = steps.on_device(model_output); break;
  }
  if (config.thresholding) x0 = steps.threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value);
  return x0;
}

Tensor noise_prediction_of(DiffusionSteps& steps, const SchedulerConfig& config, const AlphaSigma& s,
                           const Tensor& sample, const Tensor& model_output) {
  const size_t n = static_cast<size_t>(sample.dim(0));
  switch (config.prediction_type) {
    case PredictionType::epsilon: return steps.on_device(model_output);
    case PredictionType::v_prediction: return steps.combine(same(n, s.alpha), model_output, same(n, s.sigma), sample);
    case PredictionType::sample:
      return steps.sub_scaled_div(sample, same(n, s.alpha), model_output, same(n, s.sigma), false);
  }
  throw std::logic_error("noise_prediction_of: unknown prediction type");
}

// DPMSolverMultistepScheduler's step: diffusers' convert_model_output, then
// its first-, second- or third-order update for the algorithm type.
SigmaStepResult dpm_solver_step(DiffusionSteps& steps, const SigmaSchedule& plan, const SchedulerConfig& config,
                                size_t k, const Tensor& sample, const Tensor& model_output,
                                const SolverHistory& history, const Tensor& noise) {
  const size_t n = static_cast<size_t>(sample.dim(0));
  const DpmAlgorithm algorithm = dpm_algorithm(config);
  const bool data_prediction = algorithm == DpmAlgorithm::dpmsolver_pp || algorithm == DpmAlgorithm::sde_dpmsolver_pp;
  const AlphaSigma s0(plan.sigmas[k]), t(plan.sigmas[k + 1]);

  // convert_model_output: DPM-Solver++ integrates the data prediction x_0,
  // DPM-Solver the noise prediction epsilon; the step keeps the x_0 it implies.
  Tensor x0, converted;
  if (data_prediction) {
    x0 = data_prediction_of(steps, config, s0, sample, model_output);
    converted = x0;
  } else {
    converted = noise_prediction_of(steps, config, s0, sample, model_output);
    x0 = steps.sub_scaled_div(sample, same(n, s0.sigma), converted, same(n, s0.alpha), false);
    if (config.thresholding) {
      x0 = steps.threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value);
      converted = steps.sub_scaled_div(sample, same(n, s0.alpha), x0, same(n, s0.sigma), false);
    }
  }

  const int order = sigma_step_order(plan, config, k);
  if (static_cast<int>(history.outputs.size()) < order - 1) {
    throw std::invalid_argument("DPMSolverMultistepScheduler: step " + std::to_string(k) + " is of order " +
                                std::to_string(order) + " and needs the converted model outputs of the " +
                                std::to_string(order - 1) + " steps before it; got " +
                                std::to_string(history.outputs.size()));
  }
  if (is_sde_algorithm(config) && noise.empty()) {
    throw std::invalid_argument("DPMSolverMultistepScheduler: algorithm_type " + config.algorithm_type +
                                " adds noise at every step; the step needs noise");
  }
  const float h = t.lambda - s0.lambda;
  const float em1 = std::exp(-h) - 1.0f;         // exp(-h) - 1
  const float ep1 = std::exp(h) - 1.0f;          // exp(h) - 1
  const float e2 = 1.0f - std::exp(-2.0f * h);   // 1 - exp(-2h)

  // x_t = c_x sample + c0 D0 (+ c1 D1 + c2 D2) (+ c_z noise), diffusers' coefficients in float32.
  float c_x = 0, c0 = 0, c_z = 0;
  switch (algorithm) {
    case DpmAlgorithm::dpmsolver_pp: c_x = t.sigma / s0.sigma, c0 = -(t.alpha * em1); break;
    case DpmAlgorithm::dpmsolver: c_x = t.alpha / s0.alpha, c0 = -(t.sigma * ep1); break;
    case DpmAlgorithm::sde_dpmsolver_pp:
      c_x = t.sigma / s0.sigma * std::exp(-h), c0 = t.alpha * e2, c_z = t.sigma * std::sqrt(e2);
      break;
    case DpmAlgorithm::sde_dpmsolver:
      c_x = t.alpha / s0.alpha, c0 = -(2.0f * (t.sigma * ep1)), c_z = t.sigma * std::sqrt(std::exp(2.0f * h) - 1.0f);
      break;
  }
  Tensor out = steps.combine(same(n, c_x), sample, same(n, c0), converted);
  const bool midpoint = config.solver_type != SolverType::heun;  // bh1, bh2: midpoint, as diffusers reads them
  if (order == 2) {
    // D1 = (m0 - m1) / r0, r0 = h_0 / h with h_0 = lambda_s0 - lambda_s1.
    const AlphaSigma s1(plan.sigmas[k - 1]);
    const float inv_r0 = 1.0f / ((s0.lambda - s1.lambda) / h);
    const Tensor d1 = steps.combine(same(n, inv_r0), converted, same(n, -inv_r0), history.outputs[0]);
    float c1 = 0;
    switch (algorithm) {
      case DpmAlgorithm::dpmsolver_pp: c1 = midpoint ? -(0.5f * (t.alpha * em1)) : t.alpha * (em1 / h + 1.0f); break;
      case DpmAlgorithm::dpmsolver: c1 = midpoint ? -(0.5f * (t.sigma * ep1)) : -(t.sigma * (ep1 / h - 1.0f)); break;
      case DpmAlgorithm::sde_dpmsolver_pp:
        c1 = midpoint ? 0.5f * (t.alpha * e2) : t.alpha * (e2 / (-2.0f * h) + 1.0f);
        break;
      case DpmAlgorithm::sde_dpmsolver: c1 = midpoint ? -(t.sigma * ep1) : -(2.0f * (t.sigma * (ep1 / h - 1.0f))); break;
    }
    out = steps.combine(same(n, 1.0f), out, same(n, c1), d1);
  } else if (order == 3) {
    // D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1; D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
    // D2 = (D1_0 - D1_1) / (r0 + r1).
    const AlphaSigma s1(plan.sigmas[k - 1]), s2(plan.sigmas[k - 2]);
    const float r0 = (s0.lambda - s1.lambda) / h, r1 = (s1.lambda - s2.lambda) / h;
    const Tensor d1_0 = steps.combine(same(n, 1.0f / r0), converted, same(n, -(1.0f / r0)), history.outputs[0]);
    const Tensor d1_1 =
        steps.combine(same(n, 1.0f / r1), history.outputs[0], same(n, -(1.0f / r1)), history.outputs[1]);
    const Tensor spread = steps.combine(same(n, 1.0f), d1_0, same(n, -1.0f), d1_1);
    const Tensor d1 = steps.combine(same(n, 1.0f), d1_0, same(n, r0 / (r0 + r1)), spread);
    const Tensor d2 = steps.combine(same(n, 1.0f / (r0 + r1)), spread, same(n, 0.0f), spread);
    float c1 = 0, c2 = 0;
    switch (algorithm) {
      case DpmAlgorithm::dpmsolver_pp:
        c1 = t.alpha * (em1 / h + 1.0f), c2 = -(t.alpha * ((em1 + h) / (h * h) - 0.5f));
        break;
      case DpmAlgorithm::dpmsolver:
        c1 = -(t.sigma * (ep1 / h - 1.0f)), c2 = -(t.sigma * ((ep1 - h) / (h * h) - 0.5f));
        break;
      case DpmAlgorithm::sde_dpmsolver_pp: {
        const float two_h = 2.0f * h;
        c1 = t.alpha * (e2 / (-two_h) + 1.0f), c2 = t.alpha * ((e2 - two_h) / (two_h * two_h) - 0.5f);
        break;
      }
      case DpmAlgorithm::sde_dpmsolver:
        throw std::logic_error("sde-dpmsolver has no third-order update (refused by validate())");
    }
    out = steps.combine(same(n, 1.0f), out, same(n, c1), d1);
    out = steps.combine(same(n, 1.0f), out, same(n, c2), d2);
  }
  if (is_sde_algorithm(config)) out = steps.scale_add(same(n, c_z), noise, out);

  // What the next steps need: this step's converted output, then the older ones, solver_order - 1 in all.
  SigmaStepResult result{out, x0, {}};
  const size_t keep = static_cast<size_t>(std::max<int64_t>(config.solver_order - 1, 0));
  if (keep > 0) result.history.outputs.push_back(converted);
  for (size_t j = 0; result.history.outputs.size() < keep && j < history.outputs.size(); ++j)
    result.history.outputs.push_back(history.outputs[j]);
  return result;
}

// Solves a x = b for a small dense system (UniPC's order <= 3) in float32:
// LU with partial pivoting, as LAPACK's sgesv.
std::vector<float> solve_small(std::vector<std::vector<float>> a, std::vector<float> b) {
  const size_t n = b.size();
  for (size_t j = 0; j < n; ++j) {
    size_t pivot = j;
    for (size_t i = j + 1; i < n; ++i)
      if (std::fabs(a[i][j]) > std::fabs(a[pivot][j])) pivot = i;
    std::swap(a[j], a[pivot]);
    std::swap(b[j], b[pivot]);
    if (a[j][j] == 0.0f) throw std::runtime_error("UniPC: singular coefficient system (repeated sigmas?)");
    const float inverse = 1.0f / a[j][j];
    for (size_t i = j + 1; i < n; ++i) {
      const float l = a[i][j] * inverse;
      for (size_t c = j + 1; c < n; ++c) a[i][c] -= l * a[j][c];
      b[i] -= l * b[j];
    }
  }
  std::vector<float> x(n);
  for (size_t i = n; i-- > 0;) {
    float sum = b[i];
    for (size_t c = i + 1; c < n; ++c) sum -= a[i][c] * x[c];
    x[i] = sum / a[i][i];
  }
  return x;
}

// What UniPC's predictor and corrector share for an update of `order` from
// sigma_s0 to sigma_t (Zhao et al. 2023, with diffusers' bh1/bh2 B(h)): the
// ratios r_k = (lambda_k - lambda_s0) / h of the earlier points (latest first)
// and 1, the right-hand side b_i = h phi_{i+1}(hh) i! / B(h), hh = -h on x_0.
struct UniPcTerms {
  AlphaSigma s0, t;
  float h_phi_1 = 0, b_h = 0;
  std::vector<float> rks, b;

  UniPcTerms(float sigma_s0, float sigma_t, const std::vector<float>& earlier_sigmas, int order, bool predict_x0,
             bool bh1)
      : s0(sigma_s0), t(sigma_t) {
    const float h = t.lambda - s0.lambda;
    for (float s : earlier_sigmas) rks.push_back((AlphaSigma(s).lambda - s0.lambda) / h);
    rks.push_back(1.0f);
    const float hh = predict_x0 ? -h : h;
    h_phi_1 = std::expm1(hh);
    b_h = bh1 ? hh : std::expm1(hh);
    float h_phi_k = h_phi_1 / hh - 1.0f;
    int64_t factorial = 1;
    for (int i = 1; i <= order; ++i) {
      b.push_back(h_phi_k * static_cast<float>(factorial) / b_h);
      factorial *= i + 1;
      h_phi_k = h_phi_k / hh - static_cast<float>(1.0 / static_cast<double>(factorial));
    }
  }

  // R[i][j] = rks[j]^i over the first `size` rows and columns.
  std::vector<std::vector<float>> powers(size_t size) const {
    std::vector<std::vector<float>> r(size, std::vector<float>(size, 1.0f));
    for (size_t i = 1; i < size; ++i)
      for (size_t j = 0; j < size; ++j) r[i][j] = r[i - 1][j] * rks[j];
    return r;
  }
};

// x_t = c_x x - c_m m0 - c_res res, the shared shape of UniPC's predictor and
// corrector on x_0 (predict_x0) or epsilon; res may be empty.
Tensor unipc_update(DiffusionSteps& steps, const UniPcTerms& u, bool predict_x0, const Tensor& x, const Tensor& m0,
                    const Tensor& res) {
  const size_t n = static_cast<size_t>(x.dim(0));
  const float c_x = predict_x0 ? u.t.sigma / u.s0.sigma : u.t.alpha / u.s0.alpha;
  const float scale = predict_x0 ? u.t.alpha : u.t.sigma;
  const Tensor first = steps.combine(same(n, c_x), x, same(n, -(scale * u.h_phi_1)), m0);
  if (res.empty()) return first;
  return steps.combine(same(n, 1.0f), first, same(n, -(scale * u.b_h)), res);
}

// sum_k rho_k D1_k with D1_k = (m_k - m0) / r_k over the earlier outputs (latest first); empty for none.
Tensor unipc_residual(DiffusionSteps& steps, const UniPcTerms& u, const std::vector<float>& rhos,
                      const std::vector<Tensor>& earlier, const Tensor& m0) {
  const size_t n = static_cast<size_t>(m0.dim(0));
  Tensor sum;
  for (size_t k = 0; k < earlier.size(); ++k) {
    const Tensor d1 = steps.sub_scaled_div(earlier[k], same(n, 1.0f), m0, same(n, u.rks[k]), false);
    sum = sum.empty() ? steps.combine(same(n, rhos[k]), d1, same(n, 0.0f), d1)
                      : steps.combine(same(n, 1.0f), sum, same(n, rhos[k]), d1);
  }
  return sum;
}

// UniPCMultistepScheduler's step: convert the model output, correct the sample
// with it (UniC, from the previous step's start), then predict (UniP).
SigmaStepResult unipc_step(DiffusionSteps& steps, const SigmaSchedule& plan, const SchedulerConfig& config, size_t k,
                           const Tensor& sample, const Tensor& model_output, const SolverHistory& history) {
  const size_t n = static_cast<size_t>(sample.dim(0));
  const bool x0_space = config.predict_x0;
  const bool bh1 = config.solver_type == SolverType::bh1;
  const AlphaSigma s(plan.sigmas[k]);
  const Tensor converted = x0_space ? data_prediction_of(steps, config, s, sample, model_output)
                                    : noise_prediction_of(steps, config, s, sample, model_output);
  const Tensor x0 =
      x0_space ? converted : steps.sub_scaled_div(sample, same(n, s.sigma), converted, same(n, s.alpha), false);

  // The corrector: the previous step again, from its start, with this model output.
  Tensor x = sample;
  const auto& disabled = config.disable_corrector;
  const bool correct = k > 0 && !history.last_sample.empty() &&
                       std::find(disabled.begin(), disabled.end(), static_cast<int64_t>(k - 1)) == disabled.end();
  if (correct) {
    const int order = history.last_order;
    if (order < 1 || static_cast<int>(history.outputs.size()) < order) {
      throw std::invalid_argument("UniPCMultistepScheduler: step " + std::to_string(k) +
                                  " corrects an order-" + std::to_string(order) + " step and needs " +
                                  std::to_string(order) + " past outputs; got " +
                                  std::to_string(history.outputs.size()));
    }
    std::vector<float> earlier_sigmas;
    for (int i = 1; i < order; ++i) earlier_sigmas.push_back(plan.sigmas[k - 1 - static_cast<size_t>(i)]);
    const UniPcTerms u(plan.sigmas[k - 1], plan.sigmas[k], earlier_sigmas, order, x0_space, bh1);
    const std::vector<float> rhos = order == 1 ? std::vector<float>{0.5f} : solve_small(u.powers(order), u.b);
    const Tensor& m0 = history.outputs[0];
    const std::vector<Tensor> earlier(history.outputs.begin() + 1, history.outputs.begin() + order);
    const Tensor residual = unipc_residual(steps, u, rhos, earlier, m0);
    const Tensor d1_t = steps.combine(same(n, 1.0f), converted, same(n, -1.0f), m0);
    const Tensor total = residual.empty() ? steps.combine(same(n, rhos.back()), d1_t, same(n, 0.0f), d1_t)
                                          : steps.combine(same(n, 1.0f), residual, same(n, rhos.back()), d1_t);
    x = unipc_update(steps, u, x0_space, history.last_sample, m0, total);
  } else if (k > 0 && history.outputs.empty()) {
    throw std::invalid_argument("UniPCMultistepScheduler: step " + std::to_string(k) +
                                " needs the history of the steps before it");
  }

  // The predictor of this step's order, from the (corrected) sample.
  const int order = sigma_step_order(plan, config, k);
  if (static_cast<int>(history.outputs.size()) < order - 1) {
    throw std::invalid_argument("UniPCMultistepScheduler: step " + std::to_string(k) + " is of order " +
                                std::to_string(order) + " and needs " + std::to_string(order - 1) +
                                " past outputs; got " + std::to_string(history.outputs.size()));
  }
  std::vector<float> earlier_sigmas;
  for (int i = 1; i < order; ++i) earlier_sigmas.push_back(plan.sigmas[k - static_cast<size_t>(i)]);
  const UniPcTerms u(plan.sigmas[k], plan.sigmas[k + 1], earlier_sigmas, order, x0_space, bh1);
  Tensor residual;
  if (order >= 2) {
    const std::vector<float> rhos = order == 2 ? std::vector<float>{0.5f} : solve_small(u.powers(order - 1),
                                                                                          {u.b.begin(), u.b.end() - 1});
    const std::vector<Tensor> earlier(history.outputs.begin(), history.outputs.begin() + (order - 1));
    residual = unipc_residual(steps, u, rhos, earlier, converted);
  }
  SigmaStepResult result{unipc_update(steps, u, x0_space, x, converted, residual), x0, {}};
  result.history.outputs.push_back(converted);
  for (size_t j = 0; result.history.outputs.size() < static_cast<size_t>(config.solver_order) &&
                     j < history.outputs.size();
       ++j)
    result.history.outputs.push_back(history.outputs[j]);
  result.history.last_sample = x;
  result.history.last_order = order;
  return result;
}

}  // namespace

SigmaStepResult sigma_step(DiffusionSteps& steps, const SigmaSchedule& plan, const SchedulerConfig& config, size_t k,
                           const Tensor& sample, const Tensor& model_output, const SolverHistory& history,
                           const Tensor& noise) {
  if (k >= plan.size()) {
    throw std::invalid_argument(enum_name(plan.scheduler_class) + ": step position " + std::to_string(k) +
                                " is past the " + std::to_string(plan.size()) + " steps of the schedule");
  }
  if (plan.scheduler_class == SchedulerClass::DPMSolverMultistepScheduler) {
    return dpm_solver_step(steps, plan, config, k, sample, model_output, history, noise);
  }
  if (plan.scheduler_class == SchedulerClass::UniPCMultistepScheduler) {
    return unipc_step(steps, plan, config, k, sample, model_output, history);
  }
  const size_t n = static_cast<size_t>(sample.dim(0));
  const float sigma = plan.sigmas[k], sigma_next = plan.sigmas[k + 1];
  const PredictionType type = config.prediction_type;

  // Euler and Euler ancestral: x_0 from the model output at sigma (no churn: sigma_hat = sigma).
  Tensor x0;
  switch (type) {
    case PredictionType::epsilon:
      x0 = steps.combine(same(n, 1.0f), sample, same(n, -sigma), model_output);
      break;
    case PredictionType::v_prediction: {
      const float c_out = -sigma / std::sqrt(sigma * sigma + 1.0f);
      const float c_skip = 1.0f / (sigma * sigma + 1.0f);
      x0 = steps.combine(same(n, c_out), model_output, same(n, c_skip), sample);
      break;
    }
    case PredictionType::sample: x0 = steps.on_device(model_output); break;
  }
  // The ODE derivative (x - x_0) / sigma, then one Euler step to the next sigma.
  const Tensor derivative = steps.sub_scaled_div(sample, same(n, 1.0f), x0, same(n, sigma), false);
  if (plan.scheduler_class == SchedulerClass::EulerDiscreteScheduler) {
    return {steps.combine(same(n, 1.0f), sample, same(n, sigma_next - sigma), derivative), x0, {}};
  }
  // Ancestral: step down to sigma_down, then add noise of sigma_up.
  const float sigma_up =
      std::sqrt(sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma));
  const float sigma_down = std::sqrt(sigma_next * sigma_next - sigma_up * sigma_up);
  const Tensor moved = steps.combine(same(n, 1.0f), sample, same(n, sigma_down - sigma), derivative);
  if (noise.empty()) throw std::invalid_argument("EulerAncestralDiscreteScheduler: the step needs noise");
  return {steps.scale_add(same(n, sigma_up), noise, moved), x0, {}};
}

}  // namespace diffuflow
