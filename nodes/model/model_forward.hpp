// model_forward: runs the denoiser on a noisy batch.
//
// Example config:
//   - name: forward
//     type: model_forward
//     params: {model: model, training: true}
//
// in:  x_t [N,C,H,W] f32, t [N] s32 host; labels [N] s32 host (the class of
//      each image), read only when the model has a class embedding
//      (unet_model with num_class_embeds), and then required
// out: prediction [N,C,H,W] f32 on the model's engine;
//      activations (training only): the saved state the model_backward node needs
#pragma once

#include "graph/node.hpp"
#include "nodes/model/model_resource.hpp"

namespace diffuflow {

class ModelForward : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, model, "", "the model resource (unet_model, mlp_model)",
                    .resource(kModelResourceKind));
    DIFFUFLOW_PARAM(bool, training, false, "keep the activations the backward pass needs");
  };

  static NodeContract contract();
  ModelForward(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

 private:
  Params params_;
  std::shared_ptr<ModelResource> model_;
};

}  // namespace diffuflow
