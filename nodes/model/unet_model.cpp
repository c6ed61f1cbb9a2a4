#include "nodes/model/unet_model.hpp"

#include "graph/registry.hpp"
#include "graph/safetensors.hpp"

#include <filesystem>

namespace diffuflow {

namespace {

void check_params(const diffuflow::ParamValues& params) {
  // Parses and validates the config (ConfigError naming the key), and checks
  // that a given checkpoint exists, before anything runs.
  UNetConfig::resolve(params.text("config"));
  const std::string& weights = params.text("weights");
  if (!weights.empty() && !std::filesystem::is_regular_file(weights)) {
    throw ConfigError(SourceLocation{"", 0, 0, "weights"}, "weights file '" + weights + "' does not exist");
  }
}

}  // namespace

ResourceContract UNetModelResource::contract() {
  ResourceContract c;
  c.kind = kModelResourceKind;
  c.doc = "The U-Net denoiser (diffusers UNet2DModel names), its parameters and gradients in flat oneDNN buffers.";
  c.params = {
      ParamSpec::text("config", "unet-s", "built-in config (unet-s, unet-tiny) or a path to a diffusers config.json"),
      ParamSpec::path("weights", "", "optional .safetensors checkpoint to load (diffusers parameter names)"),
      ParamSpec::boolean("use_ema", true, "from a training checkpoint, load its EMA weights when it has them"),
      ParamSpec::integer("init_seed", 0, "seed of the random init used when no weights are given")
          .range(0, 9.0e15),
      ParamSpec::choice("precision", "f32", {"f32", "bf16"},
                        "convolution arithmetic: f32, or bf16 inputs and weights with f32 accumulation and f32 "
                        "parameters, gradients and activations (mixed precision; fast on CPUs with AMX or "
                        "AVX512-BF16)")};
  c.check = &check_params;
  return c;
}

UNetModelResource::UNetModelResource(const ResourceConfig& config, RunContext& ctx) {
  params_.config = config.params.text("config");
  params_.weights = config.params.text("weights");
  params_.init_seed = config.params.integer("init_seed");
  params_.use_ema = config.params.boolean("use_ema");
  model_ = std::shared_ptr<UNetModel>(make_unet(UNetConfig::resolve(params_.config), ctx.device()));
  model_->set_precision(parse_precision(config.params.text("precision")));
  if (!params_.weights.empty()) {
    model_->load(model_weights_from(SafetensorsFile::read(params_.weights), model_->param_slots(), params_.use_ema));
  } else {
    model_->init_random(static_cast<uint64_t>(params_.init_seed));
  }
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_RESOURCE(unet_model, diffuflow::UNetModelResource);
