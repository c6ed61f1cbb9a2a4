// classifier_train: one training step's worth of work for a classifier_model
// on a labelled batch: the forward pass, the softmax cross-entropy loss
// (log-sum-exp) and its gradient, and the backward pass into the model's
// gradients, which the optimiser then applies. It also measures the accuracy
// on a whole labelled image set (every `test_every` steps and at the end) and
// exports the final weights.
//
// Example config:
//   - name: train
//     type: classifier_train
//     params: {model: classifier, test_set: test_set, test_every: 1000, export_file: mnist_classifier.safetensors}
//   edges:
//     - gate -> train
//     - train -> optimiser
//     - optimiser -> gate.decrement
//
// in:  x0 [N,C,H,W] f32 in [-1,1], labels [N] s32 in [0, classes)
// out: grads_ready (the model's gradients hold this batch), loss (double: the
//      batch's mean cross-entropy), as model_backward and diffusion_loss give them
//
// Metrics: loss (every batch), train_accuracy (over the last `log_every`
// batches), test_accuracy and test_loss (on the test set). With use_ema and an optimiser
// that keeps an EMA of the weights, the test set is scored and the weights
// exported with the EMA weights.
//
// Export (at the end, <out_dir>/<export>): the weights under their parameter
// names, and metadata format "diffuflow-classifier", model_config (JSON),
// test_accuracy, test_images, test_set, steps.
#pragma once

#include "graph/node.hpp"
#include "nodes/common/image_set.hpp"
#include "nodes/model/classifier.hpp"

#include <memory>
#include <string>

namespace diffuflow {

class ClassifierTrain : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, model, "", "the classifier_model being trained", .resource(kModelResourceKind));
    DIFFUFLOW_PARAM(std::string, test_set, "", "labelled images to measure the accuracy on (mnist_images)",
                    .resource(kImageSetResourceKind));
    DIFFUFLOW_PARAM(int64_t, test_every, 0, "measure the test accuracy every N steps (0: only at the end)",
                    .at_least(0));
    DIFFUFLOW_PARAM(int64_t, test_batch, 500, "images per forward pass when measuring", .range(1, 1e6));
    DIFFUFLOW_PARAM(int64_t, log_every, 50, "log the training accuracy of this many batches", .range(1, 1e9));
    DIFFUFLOW_PARAM(bool, use_ema, true, "measure and export the optimiser's EMA weights when it keeps them");
    DIFFUFLOW_PARAM(std::string, export_file, "classifier.safetensors",
                    "file in the output folder for the final weights (\"\": none)", .path());
  };

  static NodeContract contract();
  ClassifierTrain(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;
  void finish() override;

  // Accuracy and loss on the test set with the current (EMA, when use_ema) weights.
  ClassifierScore test();
  const ClassifierScore& last_test() const { return last_test_; }

 private:
  void report(int64_t step, const ClassifierScore& score);
  void check_relative_file(const std::string& file) const;

  Params params_;
  std::shared_ptr<ClassifierResource> resource_;
  std::shared_ptr<ImageSet> test_set_;
  int64_t steps_ = 0;  // batches processed
  int64_t window_right_ = 0, window_images_ = 0, window_batches_ = 0;
  ClassifierScore last_test_;
};

}  // namespace diffuflow
