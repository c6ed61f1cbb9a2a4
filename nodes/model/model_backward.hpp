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

namespace diffuflow {

class ModelResource;

class ModelBackward : public Node {
 public:
  static NodeContract contract();
  ModelBackward(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

 private:
  std::shared_ptr<ModelResource> model_;
};

}  // namespace diffuflow
