// `diffuflow scheduler-io`: runs a diffusers scheduler's set_timesteps() and
// step() on tensors from a .safetensors file, for parity checks against
// diffusers (or any other implementation); the scheduler's counterpart of unet-io.
//
//   diffuflow scheduler-io --config scheduler_config.json --steps K
//                          --inputs IN.safetensors --out OUT.safetensors
//
// The class comes from the config's `_class_name`.
// DDPMScheduler, DDIMScheduler: IN: sample and model_output F32 [N,C,H,W]; step_timesteps I64 (or I32) [M];
// optional noise F32 [N,C,H,W] (the variance noise of a stochastic step) and
// eta F32 [1] (DDIM). OUT: timesteps I64 (after set_timesteps(K)),
// alphas_cumprod F32 [T], and per i < M step.<i>.prev_sample and
// step.<i>.pred_original_sample, each one step at step_timesteps[i] from the
// same sample and model_output.
// DPMSolverMultistepScheduler, EulerDiscreteScheduler,
// EulerAncestralDiscreteScheduler, UniPCMultistepScheduler (a step depends on the steps before it): the
// whole sequence. IN: sample F32 [N,C,H,W] (the first step's sample: the
// pipeline's noise times init_noise_sigma), model_outputs F32 [S,N,C,H,W] (one
// per step, S <= the schedule's length), optional noises F32 [S,N,C,H,W]
// (the step noise of Euler ancestral and of DPM-Solver's sde-dpmsolver and
// sde-dpmsolver++; required there). OUT: timesteps (I64 for DPM-Solver and UniPC, F32 for
// Euler, as diffusers holds them), sigmas F32 [K+1], init_noise_sigma F32 [1],
// alphas_cumprod F32 [T], and per i < S step.<i>.model_input
// (scale_model_input of the step's sample), step.<i>.prev_sample and
// step.<i>.pred_original_sample (the x_0 prediction the step implies: for
// DPM-Solver's dpmsolver and sde-dpmsolver, which step on epsilon, (x -
// sigma_t eps) / alpha_t), each step continuing from the one before.
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "graph/safetensors.hpp"
#include "nodes/diffusion/diffusers_scheduler.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <algorithm>
#include <iostream>
#include <stdexcept>

namespace diffuflow {

namespace {

OptionTable scheduler_io_options() {
  return {shared::unet_config().required(), shared::steps().range(1, 100000).required(),
          shared::inputs().required(), shared::output().required()};
}

// Item i of a stacked F32 [S, ...] tensor as a tensor of the remaining shape.
Tensor stacked_item(const std::vector<float>& values, const Shape& item_shape, int64_t i, Device& device) {
  Tensor out(item_shape, DType::f32, device.engine());
  auto host = out.map<float>();
  const size_t count = host.size();
  std::copy(values.begin() + static_cast<std::ptrdiff_t>(i * count),
            values.begin() + static_cast<std::ptrdiff_t>((i + 1) * count), host.begin());
  return out;
}

// The sigma-space classes: the whole sequence of steps from `sample`.
int run_sequence(SigmaScheduler& scheduler, const SchedulerConfig& config, const SafetensorsFile& io,
                 const std::string& inputs_path, const std::string& out_path, Device& device) {
  const std::string name = enum_name(config.class_name);
  for (const char* single : {"model_output", "step_timesteps", "eta", "noise"}) {
    if (io.has(single)) {
      throw DataError(inputs_path, "'" + std::string(single) + "' belongs to the DDPM/DDIM format; " + name +
                                       " runs a whole sequence: give 'model_outputs' [S,N,C,H,W] (and 'noises')");
    }
  }
  const auto& sample_entry = io.entry("sample");
  if (sample_entry.dtype != "F32" || sample_entry.shape.size() != 4) {
    throw DataError(inputs_path, "tensor 'sample' must be F32 [N, C, H, W], got " + sample_entry.dtype + " " +
                                     shape_str(sample_entry.shape));
  }
  const Shape shape = sample_entry.shape;
  const SigmaSchedule& plan = scheduler.plan();
  auto stacked = [&](const std::string& key) {
    const auto& entry = io.entry(key);
    Shape want{entry.shape.empty() ? 0 : entry.shape[0]};
    want.insert(want.end(), shape.begin(), shape.end());
    if (entry.dtype != "F32" || entry.shape != want || want[0] < 1) {
      throw DataError(inputs_path, "tensor '" + key + "' must be F32 [S, " + shape_str(shape).substr(1) +
                                       " (S >= 1 steps of samples like 'sample'), got " + entry.dtype + " " +
                                       shape_str(entry.shape));
    }
    return io.floats(key);
  };
  const std::vector<float> outputs = stacked("model_outputs");
  const int64_t count = io.entry("model_outputs").shape[0];
  if (count > static_cast<int64_t>(plan.size())) {
    throw DataError(inputs_path, "'model_outputs' holds " + std::to_string(count) + " steps but the schedule has " +
                                     std::to_string(plan.size()));
  }
  std::vector<float> noises;
  if (io.has("noises")) {
    noises = stacked("noises");
    if (io.entry("noises").shape[0] != count) {
      throw DataError(inputs_path, "'noises' must hold one noise per model output (" + std::to_string(count) + ")");
    }
  } else if (sigma_step_needs_noise(plan, config)) {
    throw DataError(inputs_path, name + (config.class_name == SchedulerClass::DPMSolverMultistepScheduler
                                             ? " with algorithm_type " + config.algorithm_type
                                             : std::string()) +
                                     " adds noise at every step: give 'noises' [S,N,C,H,W]");
  }

  SafetensorsFile out;
  if (config.class_name == SchedulerClass::DPMSolverMultistepScheduler ||
      config.class_name == SchedulerClass::UniPCMultistepScheduler) {
    out.add_i64("timesteps", Shape{static_cast<int64_t>(plan.size())}, scheduler.timesteps());
  } else {
    const std::vector<float> exact(plan.timesteps.begin(), plan.timesteps.end());
    out.add_f32("timesteps", Shape{static_cast<int64_t>(exact.size())}, exact.data());
  }
  out.add_f32("sigmas", Shape{static_cast<int64_t>(plan.sigmas.size())}, plan.sigmas.data());
  out.add_f32("init_noise_sigma", Shape{1}, &plan.init_noise_sigma);
  out.add_f32("alphas_cumprod", Shape{static_cast<int64_t>(plan.alphas_cumprod.size())}, plan.alphas_cumprod.data());
  Tensor sample = io.tensor("sample");
  for (int64_t i = 0; i < count; ++i) {
    const std::string prefix = "step." + std::to_string(i) + ".";
    out.add_f32(prefix + "model_input", scheduler.scale_model_input(sample));
    const Tensor noise = noises.empty() ? Tensor() : stacked_item(noises, shape, i, device);
    const auto result = scheduler.step(stacked_item(outputs, shape, i, device),
                                       scheduler.timesteps()[static_cast<size_t>(i)], sample, 0.0f, noise);
    out.add_f32(prefix + "prev_sample", result.prev_sample);
    out.add_f32(prefix + "pred_original_sample", result.pred_original_sample);
    sample = result.prev_sample;
  }
  out.write(out_path);
  std::cout << "wrote " << out_path << ": " << name << ", " << plan.size() << " timesteps, " << count << " steps\n";
  return kExitOk;
}

int run_scheduler_io(const ParsedOptions& options) {
  const SchedulerConfig config = SchedulerConfig::from_file(options.text("config"));
  const int64_t steps = options.integer("steps");
  Device device(DeviceSpec{});
  auto scheduler = make_diffusers_scheduler(config, device);
  scheduler->set_timesteps(steps);

  const std::string inputs_path = options.text("inputs");
  const auto io = SafetensorsFile::read(inputs_path);
  if (auto* sigma = dynamic_cast<SigmaScheduler*>(scheduler.get())) {
    return run_sequence(*sigma, config, io, inputs_path, options.text("out"), device);
  }
  if (io.has("model_outputs")) {
    throw DataError(inputs_path, "'model_outputs' (a whole sequence) is for the multistep and Euler classes; " +
                                     enum_name(config.class_name) + " takes 'model_output' and 'step_timesteps'");
  }
  const auto& sample_entry = io.entry("sample");
  if (sample_entry.dtype != "F32" || sample_entry.shape.size() != 4) {
    throw DataError(inputs_path, "tensor 'sample' must be F32 [N, C, H, W], got " + sample_entry.dtype + " " +
                                     shape_str(sample_entry.shape));
  }
  const Shape shape = sample_entry.shape;
  auto same_shape = [&](const std::string& name) {
    const auto& entry = io.entry(name);
    if (entry.dtype != "F32" || entry.shape != shape) {
      throw DataError(inputs_path, "tensor '" + name + "' must be F32 " + shape_str(shape) + " like 'sample', got " +
                                       entry.dtype + " " + shape_str(entry.shape));
    }
    return io.tensor(name);
  };
  const Tensor sample = io.tensor("sample");
  const Tensor model_output = same_shape("model_output");
  const Tensor noise = io.has("noise") ? same_shape("noise") : Tensor();
  float eta = 0.0f;
  if (io.has("eta")) {
    const std::vector<float> values = io.floats("eta", Shape{1});
    eta = values[0];
    if (config.class_name != SchedulerClass::DDIMScheduler && eta != 0.0f) {
      throw DataError(inputs_path, "'eta' is a DDIMScheduler setting; " + enum_name(config.class_name) +
                                       " takes none (got " + std::to_string(eta) + ")");
    }
    if (!(eta >= 0.0f && eta <= 1.0f)) {
      throw DataError(inputs_path, "'eta' must be in [0, 1], got " + std::to_string(eta));
    }
  }
  const std::vector<int64_t> step_timesteps = io.ints("step_timesteps");

  SafetensorsFile out;
  out.add_i64("timesteps", Shape{static_cast<int64_t>(scheduler->timesteps().size())}, scheduler->timesteps());
  const std::vector<float>& abar = scheduler->schedule().alphas_cumprod();
  out.add_f32("alphas_cumprod", Shape{static_cast<int64_t>(abar.size())}, abar.data());
  for (size_t i = 0; i < step_timesteps.size(); ++i) {
    const int64_t t = step_timesteps[i];
    DiffusionSteps::StepResult result;
    try {
      result = scheduler->step(model_output, t, sample, eta, noise);
    } catch (const std::invalid_argument& e) {
      throw DataError(inputs_path, "step_timesteps[" + std::to_string(i) + "] = " + std::to_string(t) + ": " +
                                       e.what());
    } catch (const std::out_of_range& e) {
      throw DataError(inputs_path, "step_timesteps[" + std::to_string(i) + "] = " + std::to_string(t) + ": " +
                                       e.what());
    }
    const std::string prefix = "step." + std::to_string(i) + ".";
    out.add_f32(prefix + "prev_sample", result.prev_sample);
    out.add_f32(prefix + "pred_original_sample", result.pred_original_sample);
  }
  const std::string out_path = options.text("out");
  out.write(out_path);
  std::cout << "wrote " << out_path << ": " << enum_name(config.class_name) << ", "
            << scheduler->timesteps().size() << " timesteps, " << step_timesteps.size() << " steps\n";
  return kExitOk;
}

}  // namespace

}  // namespace diffuflow

DIFFUFLOW_REGISTER_COMMAND(scheduler_io,
                           "run a diffusers scheduler's set_timesteps and step() on tensors from a file",
                           diffuflow::scheduler_io_options(), diffuflow::run_scheduler_io);
