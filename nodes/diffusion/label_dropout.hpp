// label_dropout: replaces each image's class label by the null class with
// probability p, so that one model learns the conditional prediction and the
// unconditional one (classifier-free guidance). The null class is the last
// row of the model's class embedding (num_class_embeds = classes + 1; see
// nodes/common/class_labels.hpp), the one guided sampling asks for.
//
// Example config:
//   nodes:
//     - {name: data, type: mnist_loader, params: {path: data/mnist, batch_size: 64}}
//     - {name: drop_labels, type: label_dropout, params: {model: model, p: 0.1}}
//     - {name: timesteps, type: timestep_sampler, params: {timesteps: 1000}}
//   edges:
//     - data -> drop_labels
//     - drop_labels -> timesteps
//
// in:  labels [N] s32 host, each in [0, num_class_embeds - 1)
// out: labels [N] s32 host, some replaced by the null class num_class_embeds - 1
//
// Whether image i is dropped is drawn from (pipeline seed, node name, the
// image's position in the data stream), like its timestep and noise: the same
// whichever process, batch or thread handles it.
#pragma once

#include "graph/node.hpp"

#include <cstdint>
#include <string>

namespace diffuflow {

class LabelDropout : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, model, "", "the class-conditional model being trained (its null class is dropped to)",
                    .resource("model"));
    DIFFUFLOW_PARAM(double, p, 0.1, "probability of replacing a label by the null class", .range(0.0, 1.0));
  };

  static NodeContract contract();
  LabelDropout(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

  int32_t null_class() const { return null_class_; }

 private:
  Params params_;
  int32_t null_class_ = 0;
};

}  // namespace diffuflow
