// mlp_denoiser: a small MLP that predicts the noise of 2-D (or D-dimensional)
// points, the second model behind the DenoiserModel interface; declared in a
// pipeline as the `mlp_model` resource (kind "model"), so model_forward,
// model_backward and the optimiser take it in place of the U-Net.
//
// Example config:
//   resources:
//     - name: model
//       type: mlp_model
//       params: {dim: 2, hidden: 128, layers: 3, time_embed_dim: 32, weights: "", use_ema: true, init_seed: 0}
//
// weights: a .safetensors export or an optimiser checkpoint (its EMA weights
// when use_ema and present).
//
// Network (x [N,D,1,1] or [N,D] f32, t [N] s32/s64 host -> prediction [N,D,1,1]):
//   temb0 = sinusoidal(t) [N,E]               (host table, as the U-Net's)
//   temb  = SiLU(time_embedding.linear_1(temb0))                  [N,H]
//   h     = SiLU(layers.0(x) + temb)                              [N,H]
//   h     = SiLU(layers.i(h) + temb)   for i = 1 .. layers-1     [N,H]
//   out   = output(h)                                             [N,D]
// Parameters (weight [out,in], bias [out]): time_embedding.linear_1, layers.0 ..
// layers.<layers-1>, output. Forward and backward are oneDNN inner products,
// eltwise swish and binary adds recorded in a Program (compute/program.hpp),
// built once per (batch size, training) and pooled like the U-Net's.
#pragma once

#include "graph/device.hpp"
#include "graph/param_table.hpp"
#include "graph/safetensors.hpp"
#include "nodes/model/denoiser_model.hpp"
#include "nodes/model/model_resource.hpp"

#include <memory>
#include <string>

namespace diffuflow {

// The network's shape; also the first rows of the mlp_model resource's parameters.
struct MlpConfig {
  DIFFUFLOW_PARAMS(MlpConfig);
  DIFFUFLOW_PARAM(int64_t, dim, 2, "point dimension D (inputs [N,D,1,1])", .range(1, 4096));
  DIFFUFLOW_PARAM(int64_t, hidden, 128, "width of the hidden layers", .range(1, 65536));
  DIFFUFLOW_PARAM(int64_t, layers, 3, "hidden linear + SiLU layers", .range(1, 64));
  DIFFUFLOW_PARAM(int64_t, time_embed_dim, 32, "size of the sinusoidal time embedding (even)", .range(2, 4096));

  void validate() const;  // ConfigError naming the key
  std::string to_json() const;
};

std::vector<ParamSlot> mlp_param_slots(const MlpConfig& config);


class MlpDenoiser : public DenoiserModel {
 public:
  MlpDenoiser(const MlpConfig& config, const dnnl::engine& engine);
  ~MlpDenoiser() override;

  std::string kind() const override { return "mlp"; }
  using DenoiserModel::forward;
  ForwardResult forward(const Tensor& x, const Tensor& t, bool for_training) override;
  Tensor backward(const ForwardState& state, const Tensor& grad_out) override;

  const MlpConfig& config() const { return config_; }

  struct Workspace;
  class Pool;

 private:
  MlpConfig config_;
  std::shared_ptr<Pool> pool_;
};

class MlpModelResource : public ModelResource {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM_GROUP(MlpConfig, network, MlpConfig{});  // dim, hidden, layers, time_embed_dim
    DIFFUFLOW_PARAM(std::string, weights, "", "optional .safetensors weights or optimiser checkpoint to load",
                    .path());
    DIFFUFLOW_PARAM(bool, use_ema, true, "from an optimiser checkpoint, load its EMA weights when it has them");
    DIFFUFLOW_PARAM(int64_t, init_seed, 0, "seed of the random init used when no weights are given",
                    .range(0, 9.0e15));
  };

  static ResourceContract contract();
  // The network's shape is valid and a given weights file exists (ConfigError naming the key).
  static void check(const Params& params);
  MlpModelResource(const ResourceConfig& config, RunContext& ctx);

  DenoiserModel& model() override { return *model_; }
  std::string config_json() const override { return model_->config().to_json(); }
  MlpDenoiser& mlp() { return *model_; }

 private:
  std::shared_ptr<MlpDenoiser> model_;
};

}  // namespace diffuflow
