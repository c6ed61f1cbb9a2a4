// model_backward: back-propagates dL/d(prediction) through the saved
// activations, adding the parameter gradients into the model's flat gradient
// buffer. The activations are dropped from the packet (their memory returns
// to the model's pool as soon as the packet moves on).
//
// Example config:
//   - {name: backward, type: model_backward, params: {model: model}}
//
// in:  activations (from model_forward with training: true),
//      grad_prediction [N,C,H,W] f32 (from the loss)
// out: grads_ready (an integer marker: the model's gradients hold this batch)
#pragma once

#include "graph/node.hpp"
#include "nodes/model/model_resource.hpp"

namespace diffuflow {

class ModelBackward : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, model, "", "the model resource the forward pass ran", .resource(kModelResourceKind));
  };

  static NodeContract contract();
  ModelBackward(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

 private:
  Params params_;
  std::shared_ptr<ModelResource> model_;
};

}  // namespace diffuflow
