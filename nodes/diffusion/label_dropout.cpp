#include "nodes/diffusion/label_dropout.hpp"

#include "graph/counter_rng.hpp"
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/class_labels.hpp"
#include "nodes/common/fields.hpp"

#include <stdexcept>
#include <vector>

namespace diffuflow {

NodeContract LabelDropout::contract() {
  NodeContract c;
  c.doc = "Replaces each class label by the model's null class (the last class-embedding row) with probability p, "
          "seeded per image position, for classifier-free guidance.";
  c.example = "{name: drop_labels, type: label_dropout, params: {model: model, p: 0.1}}";
  c.inputs = {{"in", {fields::kLabels}, "labels [N] s32 host, in [0, num_class_embeds - 1)"}};
  c.outputs = {{"out", {fields::kLabels}, "labels [N] s32 host, some replaced by num_class_embeds - 1"}};
  return c;
}

LabelDropout::LabelDropout(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  const int64_t rows = class_embeds_of(ctx, params_.model, "model");
  if (rows < 2) {
    throw ConfigError(SourceLocation{"", 0, 0, "model"},
                      "label_dropout needs a class-conditional model with num_class_embeds = classes + 1 (the last "
                      "row the null class); model '" + params_.model + "' has num_class_embeds " +
                          std::to_string(rows));
  }
  null_class_ = diffuflow::null_class(rows);
}

void LabelDropout::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  const Tensor& given = packet.get(fields::kLabels);
  const int64_t n = given.dim(0);
  Tensor labels({n}, DType::s32, Device::host()->engine());
  {
    const std::vector<int64_t> values = given.to_int64_vector();
    auto host = labels.map<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t label = values[static_cast<size_t>(i)];
      if (label < 0 || label >= null_class_) {
        throw std::invalid_argument("label " + std::to_string(label) + " of image " + std::to_string(i) +
                                    " is outside the model's classes [0, " + std::to_string(null_class_ - 1) +
                                    "]: num_class_embeds must be the number of classes + 1 (the last row is the "
                                    "null class)");
      }
      CounterRng rng = ctx().item_rng(name(), packet.item_position(i, n));
      host[i] = rng.uniform_open_zero() <= params_.p ? null_class_ : static_cast<int32_t>(label);
    }
  }
  out.emit(packet.with(fields::kLabels, labels));
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(label_dropout, diffuflow::LabelDropout);
