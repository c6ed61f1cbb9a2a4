#include "nodes/model/unet_model.hpp"

#include "graph/registry.hpp"
#include "graph/safetensors.hpp"

#include <filesystem>

namespace diffuflow {

ResourceContract UNetModelResource::contract() {
  ResourceContract c;
  c.kind = kModelResourceKind;
  c.doc = "The U-Net denoiser (diffusers UNet2DModel names), its parameters and gradients in flat oneDNN buffers.";
  return c;
}

void UNetModelResource::check(const Params& params) {
  UNetConfig::resolve(params.config);
  if (!params.weights.empty() && !std::filesystem::is_regular_file(params.weights)) {
    throw ConfigError(SourceLocation{"", 0, 0, "weights"}, "weights file '" + params.weights + "' does not exist");
  }
}

UNetModelResource::UNetModelResource(const ResourceConfig& config, RunContext& ctx)
    : params_(config.params_as<Params>()) {
  model_ = std::shared_ptr<UNetModel>(make_unet(UNetConfig::resolve(params_.config), ctx.device()));
  model_->set_precision(params_.precision);
  if (!params_.weights.empty()) {
    model_->load(model_weights_from(SafetensorsFile::read(params_.weights), model_->param_slots(), params_.use_ema));
  } else {
    model_->init_random(static_cast<uint64_t>(params_.init_seed));
  }
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_RESOURCE(unet_model, diffuflow::UNetModelResource);
