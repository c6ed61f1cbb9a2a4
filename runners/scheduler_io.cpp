// `diffuflow scheduler-io`: runs a diffusers scheduler's set_timesteps() and
// step() on tensors from a .safetensors file, for parity checks against
// diffusers (or any other implementation); the scheduler's counterpart of unet-io.
//
//   diffuflow scheduler-io --config scheduler_config.json --steps K
//                          --inputs IN.safetensors --out OUT.safetensors
//
// The class comes from the config's `_class_name` (DDPMScheduler, DDIMScheduler).
// IN: sample and model_output F32 [N,C,H,W]; step_timesteps I64 (or I32) [M];
// optional noise F32 [N,C,H,W] (the variance noise of a stochastic step) and
// eta F32 [1] (DDIM). OUT: timesteps I64 (after set_timesteps(K)),
// alphas_cumprod F32 [T], and per i < M step.<i>.prev_sample and
// step.<i>.pred_original_sample, each one step at step_timesteps[i] from the
// same sample and model_output.
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "graph/safetensors.hpp"
#include "nodes/diffusion/diffusers_scheduler.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <iostream>
#include <stdexcept>

namespace diffuflow {

namespace {

OptionTable scheduler_io_options() {
  return {shared::unet_config().required(), shared::steps().range(1, 100000).required(),
          shared::inputs().required(), shared::output().required()};
}

int run_scheduler_io(const ParsedOptions& options) {
  const SchedulerConfig config = SchedulerConfig::from_file(options.text("config"));
  const int64_t steps = options.integer("steps");
  Device device(DeviceSpec{});
  auto scheduler = make_diffusers_scheduler(config, device);
  scheduler->set_timesteps(steps);

  const std::string inputs_path = options.text("inputs");
  const auto io = SafetensorsFile::read(inputs_path);
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
