// sample_quality: measures sample quality while a model trains. Every
// `every` optimiser steps (and at the end, with at_end) it draws `count`
// samples from the EMA weights, always from the SAME noise (seeded by the
// pipeline seed and the node name), and scores them with a trained classifier
// (nodes/model/quality_meter.hpp): FID and KID against the real set's
// features, the classifier's mean confidence, the class histogram and its
// entropy.
//
// Example config:
//   resources:
//     - {name: classifier, type: classifier_model, params: {weights: data/mnist_classifier.safetensors}}
//     - {name: real, type: mnist_images, params: {path: data/mnist, split: test}}
//   nodes:
//     - name: quality
//       type: sample_quality
//       params: {model: model, schedule: schedule, classifier: classifier, reference: real,
//                count: 1000, every: 1000, steps: 50}
//   edges:
//     - optimiser -> quality
//     - quality -> gate.decrement
//
// in:  step (int64): the optimiser steps taken so far (the optimiser's `out`)
// out: the input packet unchanged; placed before the limiter's decrement, the
//      next training step waits for the measurement, so it scores exactly the
//      weights after step k.
//
// Reports: metrics.jsonl (fid, kid, kid_std, confidence, class_entropy and
// class_<k> for each class's share), a line on the console, and with an
// out_dir <out_dir>/<curve> (FID against step) and <out_dir>/quality.jsonl
// (one JSON object per measurement, with the step and the histogram).
// The real features are computed once per (classifier, real set) and cached
// (cache_dir). The samples have the real images' [C,H,W].
#pragma once

#include "graph/node.hpp"
#include "nodes/common/image_set.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"
#include "nodes/diffusion/guidance.hpp"
#include "nodes/diffusion/reverse_chain.hpp"
#include "nodes/model/model_resource.hpp"
#include "nodes/model/quality_meter.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace diffuflow {

class ClassifierResource;

class SampleQuality : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, model, "", "the model being trained", .resource(kModelResourceKind));
    DIFFUFLOW_PARAM(std::string, schedule, "", "the noise schedule the model is trained with",
                    .resource("noise_schedule"));
    DIFFUFLOW_PARAM(std::string, classifier, "", "the trained classifier_model whose features are compared",
                    .resource(kModelResourceKind));
    DIFFUFLOW_PARAM(std::string, reference, "", "the real images (mnist_images)", .resource(kImageSetResourceKind));
    DIFFUFLOW_PARAM(int64_t, count, 1000, "samples per measurement", .range(2, 1e6));
    DIFFUFLOW_PARAM(int64_t, batch, 250, "samples drawn (and classified) at a time", .range(1, 1e6));
    DIFFUFLOW_PARAM(int64_t, every, 0, "measure every N optimiser steps (0: not during training)", .range(0, 1e9));
    DIFFUFLOW_PARAM(bool, at_end, true, "measure the final weights when the run ends");
    // method, steps (50 here), eta, clip, prediction
    DIFFUFLOW_PARAM_GROUP(ReverseChainOptions, chain, ReverseChainOptions::with_steps(50));
    DIFFUFLOW_PARAM(bool, use_ema, true, "sample from the optimiser's EMA weights when it keeps them");
    // A class-conditional model needs classes (all: balanced samples); see nodes/diffusion/guidance.hpp.
    DIFFUFLOW_PARAM_GROUP(GuidanceOptions, guidance, GuidanceOptions{});  // classes, guidance_scale
    DIFFUFLOW_PARAM(int64_t, kid_subsets, 20, "KID: random subset pairs averaged", .range(1, 100000));
    DIFFUFLOW_PARAM(int64_t, kid_subset_size, 1000, "KID: images per subset (capped at the smaller set)",
                    .range(2, 1e7));
    DIFFUFLOW_PARAM(std::string, cache_dir, "",
                    "folder caching the real set's features (\"\": $XDG_CACHE_HOME/diffuflow or ~/.cache/diffuflow)",
                    .path());
    DIFFUFLOW_PARAM(std::string, curve, "quality_curve.png", "FID-against-step plot in the output folder (\"\": none)",
                    .path());
  };

  static NodeContract contract();
  SampleQuality(const NodeConfig& config, RunContext& ctx);
  ~SampleQuality() override;
  void process(const NodeInput& in, Emitter& out) override;
  void finish() override;

  // Draws the node's `count` samples from the current (EMA) weights and fixed noise: [count,C,H,W] on the host.
  Tensor draw();
  // Draws, scores and reports at optimiser step `step`.
  QualityReport measure(int64_t step);
  const std::vector<std::pair<int64_t, QualityReport>>& history() const { return history_; }
  // Null when the node is switched off (every 0, at_end false).
  const QualityMeter* meter() const { return meter_.get(); }

 private:
  void write_curve();

  Params params_;
  std::shared_ptr<ModelResource> resource_;
  std::shared_ptr<ClassifierResource> classifier_;
  std::shared_ptr<NoiseSchedule> schedule_;
  std::unique_ptr<DiffusionSteps> steps_;
  std::unique_ptr<QualityMeter> meter_;
  Tensor x_T_;               // [count,C,H,W] f32 on the host, fixed for the run
  uint64_t noise_seed_ = 0;  // the step noise, fixed for the run
  ClassGuidance guidance_;   // the samples' classes
  int64_t last_step_ = -1;
  int64_t last_measured_ = -1;
  std::vector<std::pair<int64_t, QualityReport>> history_;
};

}  // namespace diffuflow
