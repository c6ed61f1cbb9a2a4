#include "nodes/model/unet_model.hpp"

#include "graph/registry.hpp"
#include "graph/safetensors.hpp"
#include "graph/world.hpp"
#include "nodes/model/diffusers_folder.hpp"

#include <filesystem>
#include <optional>

namespace diffuflow {

ResourceContract UNetModelResource::contract() {
  ResourceContract c;
  c.kind = kModelResourceKind;
  c.doc = "The U-Net denoiser (diffusers UNet2DModel names), its parameters and gradients in flat oneDNN buffers.";
  return c;
}

UNetModelResource::Source UNetModelResource::resolve(const Params& params) {
  Source source;
  std::optional<UNetConfig> named;
  if (!params.config.empty()) named = UNetConfig::resolve(params.config);
  if (!params.weights.empty() && std::filesystem::is_directory(params.weights)) {
    const DiffusersUNetFolder folder = find_diffusers_unet(params.weights);
    if (folder.weights.empty()) {
      throw ConfigError(SourceLocation{"", 0, 0, "weights"},
                        "diffusers folder '" + params.weights + "': " + folder.weights_problem);
    }
    source.config = UNetConfig::from_file(folder.config);
    if (named && *named != source.config) {
      std::string keys;
      for (const auto& d : named->differences(source.config)) keys += "; " + d;
      throw ConfigError(SourceLocation{"", 0, 0, "config"},
                        "config '" + params.config + "' contradicts " + folder.config.string() +
                            " of the weights folder (config vs folder): " + keys.substr(2) +
                            " (leave config empty to use the folder's)");
    }
    source.weights = folder.weights.string();
    source.diffusers_folder = true;
    return source;
  }
  if (!params.weights.empty() && !std::filesystem::is_regular_file(params.weights)) {
    throw ConfigError(SourceLocation{"", 0, 0, "weights"}, "weights file '" + params.weights + "' does not exist");
  }
  source.weights = params.weights;
  // A training checkpoint names its model config: used when `config` is empty, and a `config` that
  // contradicts it is refused (the weights would load into the wrong network, or not at all).
  std::optional<UNetConfig> saved;
  if (!params.weights.empty()) {
    const auto meta = SafetensorsFile::read(params.weights).metadata();
    auto kind = meta.find("model_kind");
    auto text = meta.find("model_config");
    if (kind != meta.end() && kind->second == "unet" && text != meta.end()) {
      saved = UNetConfig::from_json(text->second, params.weights + " metadata model_config");
    }
  }
  if (named && saved && *named != *saved) {
    std::string keys;
    for (const auto& d : named->differences(*saved)) keys += "; " + d;
    throw ConfigError(SourceLocation{"", 0, 0, "config"},
                      "config '" + params.config + "' contradicts the model config of the checkpoint " +
                          params.weights + " (config vs checkpoint): " + keys.substr(2) +
                          " (leave config empty to use the checkpoint's)");
  }
  source.config = named ? *named : saved ? *saved : UNetConfig::named("unet-s");
  return source;
}

namespace {

const char* const kFastestNotDeterministic =
    "precision: fastest chooses by timing, which a deterministic run cannot; name f32 or bf16";

// f32 and bf16 as named; fastest by timing both here, which a deterministic
// run cannot have (the choice could differ between two machines of one kind).
// Over several processes rank 0 times and every rank takes its choice, so the
// weights stay equal on all.
Precision precision_of(PrecisionChoice choice, const std::string& name, RunContext& ctx) {
  if (choice != PrecisionChoice::fastest) return choice == PrecisionChoice::bf16 ? Precision::bf16 : Precision::f32;
  if (ctx.deterministic) {
    throw ConfigError(SourceLocation{"", 0, 0, "precision"}, kFastestNotDeterministic);
  }
  World& world = ctx.world();
  std::string chosen;
  if (world.rank() == 0) {
    const PrecisionProbe probe = probe_precision(ctx.device().engine());
    ctx.info(name + ": " + probe.summary());
    chosen = enum_name(probe.chosen);
  }
  if (world.distributed()) chosen = world.broadcast(chosen, 0);
  return parse_enum<Precision>(chosen, "precision");
}

}  // namespace

void UNetModelResource::check(const Params& params, const PipelineFacts& pipeline) {
  resolve(params);
  if (pipeline.deterministic && params.precision == PrecisionChoice::fastest) {
    throw ConfigError(SourceLocation{"", 0, 0, "precision"}, kFastestNotDeterministic);
  }
}

UNetModelResource::UNetModelResource(const ResourceConfig& config, RunContext& ctx)
    : params_(config.params_as<Params>()) {
  const Source source = resolve(params_);
  model_ = std::shared_ptr<UNetModel>(make_unet(source.config, ctx.device()));
  model_->set_precision(precision_of(params_.precision, config.name, ctx));
  model_->set_native_kernels(params_.native_kernels);
  model_->set_conv_algorithm(params_.convolution);
  model_->set_bf16_backward(params_.bf16_backward);
  model_->set_activation_layout(params_.activation_layout);
  model_->set_teams(ctx.teams);
  if (!source.weights.empty()) {
    const SafetensorsFile file = SafetensorsFile::read(source.weights);
    // A checkpoint's metadata (the settings it was trained with) for the nodes that must agree with it.
    for (const auto& [key, value] : file.metadata()) ctx.add_input_metadata(key, value, "weights " + source.weights);
    const auto& slots = model_->param_slots();
    model_->load(unet_weights_from_diffusers(
        source.diffusers_folder ? file : model_weights_from(file, slots, params_.use_ema), slots));
  } else {
    model_->init_random(static_cast<uint64_t>(params_.init_seed));
  }
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_RESOURCE(unet_model, diffuflow::UNetModelResource);
