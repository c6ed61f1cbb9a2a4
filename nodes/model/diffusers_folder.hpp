// Reading a U-Net from a diffusers folder: a model folder (config.json and
// diffusion_pytorch_model.safetensors, what UNet2DModel.save_pretrained
// writes) or a pipeline folder (model_index.json and unet/, what
// DDPMPipeline.save_pretrained writes).
//
//   const DiffusersUNetFolder f = find_diffusers_unet("ddpm-cifar10-32");
//   UNetConfig config = UNetConfig::from_file(f.config);
//   model->load(unet_weights_from_diffusers(SafetensorsFile::read(f.weights), model->param_slots()));
#pragma once

#include "graph/safetensors.hpp"
#include "nodes/model/denoiser_model.hpp"

#include <filesystem>

namespace diffuflow {

struct DiffusersUNetFolder {
  std::filesystem::path folder;   // the model folder (a pipeline's unet/)
  std::filesystem::path config;   // its config.json
  std::filesystem::path weights;  // its safetensors weights; empty when it has none
  std::string weights_problem;    // why there are none (e.g. only a pickled .bin)
};

// `path` must be a diffusers model or pipeline folder (ConfigError naming
// what is missing otherwise; a pipeline whose unet is not a UNet2DModel too).
DiffusersUNetFolder find_diffusers_unet(const std::filesystem::path& path);

// A diffusers state dict made ready for a U-Net's parameters: the attention
// names older diffusers versions wrote (query, key, value, proj_attn) become
// to_q, to_k, to_v, to_out.0, as diffusers renames them on load, and F16 or
// BF16 tensors become F32. Anything else is passed through for load() to check.
SafetensorsFile unet_weights_from_diffusers(const SafetensorsFile& file, const std::vector<ParamSlot>& slots);

}  // namespace diffuflow
