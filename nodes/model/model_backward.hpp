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
//
// Data parallel (several processes, docs/distributed.md): the gradients are
// averaged over the processes while the backward pass runs, in buckets of
// bucket_mb (GradientSync), so every process's optimiser takes the same step.
#pragma once

#include "graph/node.hpp"
#include "nodes/model/gradient_sync.hpp"
#include "nodes/model/model_resource.hpp"

namespace diffuflow {

class ModelBackward : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, model, "", "the model resource the forward pass ran", .resource(kModelResourceKind));
    DIFFUFLOW_PARAM(double, bucket_mb, 4.0,
                    "data parallel: MiB of gradients summed across processes at once, started while backward runs",
                    .range(0.001, 4096.0));
    DIFFUFLOW_PARAM(int64_t, check_every, 100,
                    "data parallel: steps between comparing a checksum of the weights across processes (0: never)",
                    .at_least(0));
  };

  static NodeContract contract();
  ModelBackward(const NodeConfig& config, RunContext& ctx);
  ~ModelBackward() override;
  void process(const NodeInput& in, Emitter& out) override;

 private:
  Params params_;
  std::shared_ptr<ModelResource> model_;
  std::unique_ptr<GradientSync> sync_;  // several processes only
};

}  // namespace diffuflow
