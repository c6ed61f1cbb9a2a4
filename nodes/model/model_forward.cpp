#include "nodes/model/model_forward.hpp"

#include "graph/registry.hpp"
#include "nodes/model/model_resource.hpp"

namespace diffuflow {

NodeContract ModelForward::contract() {
  NodeContract c;
  c.doc = "Runs the denoiser on x_t at timesteps t; in training mode keeps the activations for model_backward.";
  c.example = "{name: forward, type: model_forward, params: {model: model, training: true}}";
  c.params = {ParamSpec::resource("model", kModelResourceKind, "the model resource (unet_model, mlp_model)"),
              ParamSpec::boolean("training", false, "keep the activations the backward pass needs")};
  c.inputs = {{"in", {"x_t", "t"}, "x_t [N,C,H,W] f32; t [N] s32 host"}};
  c.outputs = {{"out", {"prediction", "activations"}, "prediction [N,C,H,W] f32; activations (training only)"}};
  c.host_only = false;
  return c;
}

ModelForward::ModelForward(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx),
      model_(ctx.resource_as<ModelResource>(config.params.text("model"))),
      training_(config.params.boolean("training")) {}

void ModelForward::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  ForwardResult result = model_->model().forward(packet.tensor("x_t"), packet.tensor("t"), training_);
  Packet next = packet.with("prediction", result.prediction);
  if (training_) next.set("activations", std::shared_ptr<const Payload>(result.state));
  out.emit(std::move(next));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(model_forward, diffuflow::ModelForward);
