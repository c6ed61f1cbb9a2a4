// model_forward: runs the denoiser on a noisy batch.
//
// Example config:
//   - name: forward
//     type: model_forward
//     params: {model: model, training: true}
//
// in:  x_t [N,C,H,W] f32, t [N] s32 host
// out: prediction [N,C,H,W] f32 on the model's engine;
//      activations (training only): the saved state the model_backward node needs
#pragma once

#include "graph/node.hpp"

namespace diffuflow {

class ModelResource;

class ModelForward : public Node {
 public:
  static NodeContract contract();
  ModelForward(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

 private:
  std::shared_ptr<ModelResource> model_;
  bool training_ = false;
};

}  // namespace diffuflow
