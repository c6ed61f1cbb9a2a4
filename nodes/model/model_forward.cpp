#include "nodes/model/model_forward.hpp"

#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <stdexcept>
#include <string>

namespace diffuflow {

NodeContract ModelForward::contract() {
  NodeContract c;
  c.doc = "Runs the denoiser on x_t at timesteps t; in training mode keeps the activations for model_backward.";
  c.example = "{name: forward, type: model_forward, params: {model: model, training: true}}";
  c.inputs = {{"in", {fields::kXt, fields::kT},
                "x_t [N,C,H,W] f32; t [N] s32 host; labels [N] s32 host, read (and required) only when the model "
                "has a class embedding; t_exact [N] f32 host, when present the timesteps the model embeds "
                "(a sampler's fractional ones)"}};
  c.outputs = {{"out", {fields::kPrediction, fields::kActivations}, "prediction [N,C,H,W] f32; activations (training only)"}};
  c.host_only = false;
  return c;
}

ModelForward::ModelForward(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx),
      params_(config.params_as<Params>()),
      model_(ctx.resource_as<ModelResource>(params_.model)) {}

void ModelForward::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  DenoiserModel& model = model_->model();
  ForwardInputs inputs;
  if (model.num_classes() > 0) {
    if (!packet.has(fields::kLabels)) {
      throw std::invalid_argument("the model has a class embedding (" + std::to_string(model.num_classes()) +
                                  " classes), so packets need the field '" + fields::kLabels.name + "'");
    }
    inputs.class_labels = packet.get(fields::kLabels);
  }
  // Dropout masks (training only) follow the (seed, node, step) stream.
  if (params_.training) inputs.dropout_seed = ctx().rng(name(), packet.seq())();
  const Tensor& t = packet.has(fields::kTExact) ? packet.get(fields::kTExact) : packet.get(fields::kT);
  ForwardResult result = model.forward(packet.get(fields::kXt), t, params_.training, inputs);
  Packet next = packet.with(fields::kPrediction, result.prediction);
  if (params_.training) next.set(fields::kActivations, result.state);
  out.emit(std::move(next));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(model_forward, diffuflow::ModelForward);
