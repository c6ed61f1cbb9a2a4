// unet_model: the U-Net declared once as a pipeline resource, shared by the
// nodes that run it (forward, backward), update it (optimiser) and save it.
//
// Example config:
//   resources:
//     - name: model
//       type: unet_model
//       params: {config: unet-s, weights: "", init_seed: 0, precision: f32}
//
// config: a built-in name (unet-s, unet-tiny), a path to a diffusers
// config.json, or a diffusers model or pipeline folder (its config); empty:
// the weights folder's or training checkpoint's config, else unet-s (a config
// that contradicts the checkpoint's is a ConfigError naming the keys). weights: an optional .safetensors
// checkpoint with diffusers names, or a diffusers model folder
// (config.json + diffusion_pytorch_model.safetensors) or pipeline folder
// (model_index.json + unet/): the folder's config is the model's, and a
// `config` that contradicts it is a ConfigError naming the keys. Without
// weights the parameters are initialised at random from init_seed
// (conv/linear weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as
// PyTorch's defaults, GroupNorm weight 1 and bias 0, embedding tables
// N(0, 1)). precision: f32 or bf16 convolutions (mixed precision; see
// Precision in program.hpp), or fastest: the one a convolution timed in both
// finds faster here (compute/precision_probe.hpp).
#pragma once

#include "nodes/model/model_resource.hpp"

#include "compute/precision_probe.hpp"
#include "graph/resource.hpp"
#include "nodes/model/unet.hpp"

#include <memory>

namespace diffuflow {

class UNetModelResource : public ModelResource {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, config, "",
                    "built-in config (unet-s, unet-tiny), a diffusers config.json or model/pipeline folder; empty: "
                    "the weights folder's or checkpoint's config, else unet-s");
    DIFFUFLOW_PARAM(std::string, weights, "",
                    "optional .safetensors checkpoint (diffusers parameter names), or a diffusers model or pipeline "
                    "folder (config.json + diffusion_pytorch_model.safetensors, or model_index.json + unet/)",
                    .path());
    DIFFUFLOW_PARAM(bool, use_ema, true, "from a training checkpoint, load its EMA weights when it has them");
    DIFFUFLOW_PARAM(int64_t, init_seed, 0, "seed of the random init used when no weights are given",
                    .range(0, 9.0e15));
    DIFFUFLOW_PARAM(PrecisionChoice, precision, PrecisionChoice::f32,
                    "convolution arithmetic: f32; bf16: bf16 inputs and weights with f32 accumulation, f32 "
                    "parameters and gradients, bf16 activations between layers (mixed precision: faster with "
                    "AMX, slower than f32 on some CPUs with AVX512-BF16 alone); fastest: bf16 where "
                    "a convolution timed in both as the model is made runs at least 1.2x faster in it, else f32 "
                    "(not with deterministic: true)");
    DIFFUFLOW_PARAM(bool, native_kernels, true,
                    "on a CPU, run GroupNorm, the few-channel first and last convolutions and attention's "
                    "softmax as diffuflow's own kernels (faster); false: oneDNN primitives only, as on other "
                    "engines (bf16 training then keeps f32 activations)");
    DIFFUFLOW_PARAM(ConvAlgorithm, convolution, ConvAlgorithm::by_shape,
                    "how f32 3x3 convolutions are computed on a CPU: winograd (Winograd's F(4x4,3x3): fewer "
                    "multiplications, about twice the direct sum's rounding error, slower on small batches), "
                    "direct, or "
                    "by_shape: winograd where a layer has enough 4x4 output tiles per thread (64 forward, 128 "
                    "backward), else direct");
    DIFFUFLOW_PARAM(Bf16Backward, bf16_backward, Bf16Backward::by_shape,
                    "layout of bf16 training's backward convolutions: channels_last (with AMX, oneDNN's AMX "
                    "kernels), blocked (channel-blocked AVX512-BF16 kernels), or by_shape: the forward's layout "
                    "(channels_last with AMX, else blocked); a layout without a fast kernel for a layer falls back "
                    "to the forward's");
    DIFFUFLOW_PARAM(ActivationLayout, activation_layout, ActivationLayout::by_isa,
                    "layout of the image activations between layers: blocked (nChw16c, the layout of oneDNN's "
                    "AVX-512 convolutions), channels_last (nhwc, the only layout of its AMX convolutions: no "
                    "reorder around a bf16 convolution on AMX), or by_isa: channels_last for bf16 on AMX, else "
                    "blocked; channels_last needs native_kernels (else blocked)");
  };

  static ResourceContract contract();
  // Parses and validates the config (ConfigError naming the key), and checks
  // that a given checkpoint or folder exists and agrees with the config,
  // before anything runs.
  // precision: fastest in a deterministic pipeline is refused here too.
  static void check(const Params& params, const PipelineFacts& pipeline = {});

  // The config and the weights file the parameters name.
  struct Source {
    UNetConfig config;
    std::string weights;        // empty: none
    bool diffusers_folder = false;  // the weights come from a diffusers folder
  };
  static Source resolve(const Params& params);
  UNetModelResource(const ResourceConfig& config, RunContext& ctx);

  DenoiserModel& model() override { return *model_; }
  std::string config_json() const override { return model_->config().to_json(); }
  UNetModel& unet() { return *model_; }
  const UNetConfig& unet_config() const { return model_->config(); }
  std::shared_ptr<UNetModel> shared_model() const { return model_; }

 private:
  Params params_;
  std::shared_ptr<UNetModel> model_;
};

}  // namespace diffuflow
