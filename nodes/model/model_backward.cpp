#include "nodes/model/model_backward.hpp"

#include "graph/registry.hpp"
#include "nodes/model/model_resource.hpp"

namespace diffuflow {

NodeContract ModelBackward::contract() {
  NodeContract c;
  c.doc = "Back-propagates the loss gradient through the saved activations into the model's gradient buffer.";
  c.example = "{name: backward, type: model_backward, params: {model: model}}";
  c.params = {ParamSpec::resource("model", kModelResourceKind, "the model resource the forward pass ran")};
  c.inputs = {{"in", {"activations", "grad_prediction"}, "activations; grad_prediction [N,C,H,W] f32"}};
  c.outputs = {{"out", {"grads_ready"}, "grads_ready: the model's gradients include this batch"}};
  c.host_only = false;
  c.max_concurrency = 1;  // gradients accumulate into one buffer
  return c;
}

ModelBackward::ModelBackward(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), model_(ctx.resource_as<ModelResource>(config.params.text("model"))) {}

void ModelBackward::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  auto state = packet.payload<ForwardState>("activations");
  model_->model().backward(*state, packet.tensor("grad_prediction"));
  Packet next = packet.with("grads_ready", int64_t{1});
  next.erase("activations");
  next.erase("grad_prediction");
  out.emit(std::move(next));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(model_backward, diffuflow::ModelBackward);
