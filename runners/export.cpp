// `diffuflow export`: a training checkpoint as a diffusers DDPMPipeline folder,
// which diffusers' DDPMPipeline.from_pretrained (and diffuflow's unet_model)
// loads as it is:
//
//   diffuflow export runs/quickstart/checkpoints/latest.safetensors --out my-ddpm [--no-ema]
//
//   my-ddpm/model_index.json                          {"_class_name": "DDPMPipeline", "scheduler": [...], "unet": [...]}
//   my-ddpm/unet/config.json                          UNet2DModel's full key set, as save_config writes it
//   my-ddpm/unet/diffusion_pytorch_model.safetensors  F32 weights under diffusers' names (EMA by default)
//   my-ddpm/scheduler/scheduler_config.json           the training schedule (DDPMScheduler or DDIMScheduler)
//
// The schedule and prediction type come from the checkpoint's metadata; a
// checkpoint written before they were recorded gets diffusers' default
// DDPMScheduler config, with a warning.
#include "graph/atomic_file.hpp"
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "graph/safetensors.hpp"
#include "nodes/diffusion/trained_settings.hpp"
#include "nodes/model/unet.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>

namespace diffuflow {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The diffusers release whose folder format the exported files follow.
constexpr const char* kDiffusersVersion = "0.30.0";

OptionTable export_options() {
  return {OptionSpec::positional("checkpoint", "CHECKPOINT", "a training checkpoint (.safetensors)"),
          shared::output().required(),
          OptionSpec::flag("no-ema", "export the raw weights instead of their EMA")};
}

// A config as diffusers' to_json_string writes it: sorted keys, two-space indent, the version, a newline.
std::string diffusers_json(json config) {
  config["_diffusers_version"] = kDiffusersVersion;
  return config.dump(2) + "\n";
}

int run_export(const ParsedOptions& options) {
  const fs::path path = options.text("checkpoint");
  if (!fs::is_regular_file(path)) {
    throw ConfigError(SourceLocation{"CHECKPOINT", 0, 0, ""}, "checkpoint '" + path.string() + "' does not exist");
  }
  const SafetensorsFile file = SafetensorsFile::read(path);
  const auto& meta = file.metadata();
  auto get = [&](const std::string& key) -> std::string {
    auto it = meta.find(key);
    if (it == meta.end()) {
      throw DataError(path.string(), "not a diffuflow training checkpoint: no \"" + key +
                                         "\" in its metadata (export reads the model config from it)");
    }
    return it->second;
  };
  if (get("model_kind") != "unet") {
    throw DataError(path.string(), "the checkpoint holds a '" + get("model_kind") +
                                       "' model; only U-Nets (diffusers' UNet2DModel) can be exported");
  }
  const UNetConfig config = UNetConfig::from_json(get("model_config"), path.string() + " metadata model_config");

  const fs::path out = options.text("out");
  if (fs::exists(out) && (!fs::is_directory(out) || !fs::is_empty(out))) {
    throw ConfigError(SourceLocation{"--out", 0, 0, ""},
                      "output folder '" + out.string() + "' already exists and is not empty; choose another folder");
  }

  // The weights: every parameter of the model, checked by loading them into one.
  Device device(DeviceSpec{});
  auto model = make_unet(config, device);
  const bool use_ema = !options.flag("no-ema");
  const bool has_ema = file.has("ema." + model->param_slots().front().name);
  if (use_ema && !has_ema) std::cerr << "diffuflow export: the checkpoint has no EMA weights; exporting the raw ones\n";
  SafetensorsFile weights = model_weights_from(file, model->param_slots(), use_ema);
  model->load(weights);
  weights.set_metadata("format", "pt");  // what diffusers' safetensors writer records

  SchedulerConfig schedule;
  if (auto trained = trained_settings_from(meta, path.string())) {
    schedule = *trained;
  } else {
    std::cerr << "diffuflow export: the checkpoint records no noise schedule (written by an earlier version); "
                 "writing diffusers' default DDPMScheduler config (linear, 1000 steps, epsilon): edit "
                 "scheduler/scheduler_config.json if the model was trained otherwise\n";
  }

  json model_config = json::parse(config.to_json());
  const json scheduler_config = json::parse(schedule.to_json());
  json index;
  index["_class_name"] = "DDPMPipeline";
  index["scheduler"] = json::array({"diffusers", enum_name(schedule.class_name)});
  index["unet"] = json::array({"diffusers", "UNet2DModel"});

  fs::create_directories(out / "unet");
  fs::create_directories(out / "scheduler");
  write_file_atomically(out / "model_index.json", diffusers_json(index));
  write_file_atomically(out / "unet" / "config.json", diffusers_json(model_config));
  weights.write(out / "unet" / "diffusion_pytorch_model.safetensors");
  write_file_atomically(out / "scheduler" / "scheduler_config.json", diffusers_json(scheduler_config));
  std::cout << "exported " << (use_ema && has_ema ? "EMA" : "raw") << " weights (" << model->param_count()
            << " parameters) and the " << enum_name(schedule.class_name) << " config to " << out.string() << "\n";
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(export, "write a training checkpoint as a diffusers DDPMPipeline folder", export_options(),
                           run_export);

}  // namespace diffuflow
