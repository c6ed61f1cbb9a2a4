#include "nodes/model/model_backward.hpp"

#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

namespace diffuflow {

NodeContract ModelBackward::contract() {
  NodeContract c;
  c.doc = "Back-propagates the loss gradient through the saved activations into the model's gradient buffer; "
          "with several processes, averages the gradients across them while it runs.";
  c.example = "{name: backward, type: model_backward, params: {model: model}}";
  c.inputs = {{"in", {fields::kActivations, fields::kGradPrediction}, "activations; grad_prediction [N,C,H,W] f32"}};
  c.outputs = {{"out", {fields::kGradsReady}, "grads_ready: the model's gradients include this batch"}};
  c.host_only = false;
  c.max_concurrency = 1;  // gradients accumulate into one buffer
  return c;
}

ModelBackward::ModelBackward(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx),
      params_(config.params_as<Params>()),
      model_(ctx.resource_as<ModelResource>(params_.model)) {
  if (ctx.world().distributed()) {
    sync_ = std::make_unique<GradientSync>(ctx, name(), model_->model().params(),
                                           GradientSync::Options{params_.bucket_mb, params_.check_every});
    model_->model().set_gradient_observer(sync_.get());
  }
}

ModelBackward::~ModelBackward() {
  if (sync_) model_->model().set_gradient_observer(nullptr);
}

void ModelBackward::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  auto state = packet.get(fields::kActivations);
  if (sync_) sync_->set_step(packet.seq());
  model_->model().backward(*state, packet.get(fields::kGradPrediction));
  Packet next = packet.with(fields::kGradsReady, int64_t{1});
  next.erase(fields::kActivations);
  next.erase(fields::kGradPrediction);
  out.emit(std::move(next));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(model_backward, diffuflow::ModelBackward);
