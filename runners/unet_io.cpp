// `diffuflow unet-io`: runs the U-Net on tensors from a .safetensors file, for
// parity checks against PyTorch (or any other implementation).
//
//   diffuflow unet-io --config config.json --weights W.safetensors
//                     --inputs IO.safetensors --out OUT.safetensors
//
// IO holds x F32 [N,C,H,W], t (I64 or I32) [N] and, for a model with a class
// embedding, class_labels (I64 or I32) [N]; OUT gets eps_out. When IO
// also holds g_out [N,C_out,H,W], the backward pass of L = sum(eps_out * g_out)
// runs too and OUT gets grad_x and grad.<param> for every parameter.
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "graph/safetensors.hpp"
#include "nodes/model/diffusers_folder.hpp"
#include "nodes/model/unet.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <iostream>

namespace diffuflow {

namespace {

OptionTable unet_io_options() {
  return {shared::unet_config().required(),
          OptionSpec::text("weights", "W.safetensors", "parameters (.safetensors)").required(),
          shared::inputs().required(),
          shared::output().required(),
          shared::device().fallback("cpu")};
}

int run_unet_io(const ParsedOptions& options) {
  DeviceSpec spec;
  try {
    spec = DeviceSpec::parse(options.text("device"));
  } catch (const std::invalid_argument& e) {
    throw ConfigError(SourceLocation{"command line", 0, 0, "--device"}, e.what());
  }
  const UNetConfig config = UNetConfig::resolve(options.text("config"));
  Device device(spec);
  auto model = make_unet(config, device);
  // diffusers files may hold F16 weights or older attention names.
  model->load(unet_weights_from_diffusers(SafetensorsFile::read(options.text("weights")), model->param_slots()));

  const std::string inputs_path = options.text("inputs");
  const auto io = SafetensorsFile::read(inputs_path);
  const auto& x_entry = io.entry("x");
  if (x_entry.dtype != "F32" || x_entry.shape.size() != 4 || x_entry.shape[1] != config.in_channels) {
    throw DataError(inputs_path, "tensor 'x' must be F32 [N, " + std::to_string(config.in_channels) +
                                     ", H, W], got " + x_entry.dtype + " " + shape_str(x_entry.shape));
  }
  const int64_t n = x_entry.shape[0];
  const int64_t factor = int64_t{1} << config.resolution_steps();
  if (x_entry.shape[2] % factor != 0 || x_entry.shape[3] % factor != 0) {
    throw DataError(inputs_path, "tensor 'x' has size " + shape_str(x_entry.shape) +
                                     "; H and W must be multiples of " + std::to_string(factor));
  }
  const auto steps = io.ints("t");
  if (static_cast<int64_t>(steps.size()) != n) {
    throw DataError(inputs_path, "tensor 't' has " + std::to_string(steps.size()) + " entries for a batch of " +
                                     std::to_string(n));
  }
  Tensor t({n}, DType::s64, Device::host()->engine());
  {
    auto m = t.map<int64_t>();
    for (int64_t i = 0; i < n; ++i) m[i] = steps[i];
  }
  // Host tensors are read by the model directly on a CPU device (it copies
  // them in); a GPU device gets them by an explicit host -> device copy.
  auto to_device = [&](const Tensor& host) { return device.is_cpu() ? host : host.copy_to(device.engine()); };
  const Tensor x = to_device(io.tensor("x"));
  const bool with_backward = io.has("g_out");
  Tensor g_out;
  if (with_backward) {
    const Shape want{n, config.out_channels, x_entry.shape[2], x_entry.shape[3]};
    g_out = to_device(Tensor::from_vector(want, io.floats("g_out", want)));
  }

  ForwardInputs inputs;
  if (io.has("class_labels")) {
    const auto labels = io.ints("class_labels");
    inputs.class_labels = Tensor({static_cast<int64_t>(labels.size())}, DType::s64, Device::host()->engine());
    auto m = inputs.class_labels.map<int64_t>();
    for (size_t i = 0; i < labels.size(); ++i) m[i] = labels[i];
  }

  model->zero_grads();
  ForwardResult result;
  try {
    result = model->forward(x, t, with_backward, inputs);
  } catch (const std::invalid_argument& e) {
    throw DataError(inputs_path, e.what());  // labels missing, out of range or of the wrong shape
  }
  SafetensorsFile out;
  out.add_f32("eps_out", result.prediction);
  if (with_backward) {
    out.add_f32("grad_x", model->backward(*result.state, g_out));
    model->save_grads_to(out, "grad.");
  }
  const std::string out_path = options.text("out");
  out.write(out_path);
  std::cout << "wrote " << out_path << ": eps_out" << (with_backward ? ", grad_x and " : "")
            << (with_backward ? std::to_string(model->param_slots().size()) + " parameter gradients" : "") << "\n";
  return kExitOk;
}

}  // namespace

}  // namespace diffuflow

DIFFUFLOW_REGISTER_COMMAND(unet_io, "run the U-Net forward (and backward when IO has g_out) on tensors from a file",
                           diffuflow::unet_io_options(), diffuflow::run_unet_io);
