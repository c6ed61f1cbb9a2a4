// guidance: the class labels of sampling chains and classifier-free guidance,
// shared by the in-graph sampler and the training-time sample_preview.
//
//   struct Params {
//     DIFFUFLOW_PARAMS(Params);
//     DIFFUFLOW_PARAM_GROUP(GuidanceOptions, guidance, GuidanceOptions{});  // classes, guidance_scale
//   };
//   ClassGuidance guidance(p.guidance, num_class_embeds, "model 'unet'");     // ConfigErrors up front
//   GuidedBatch in = guidance.model_inputs(x_t, t, guidance.labels(n));      // x, t, labels: 2N when doubled
//   Tensor eps = guidance.combine(model(in.x, in.t, in.labels));             // back to N
//
// With guidance scale w the model output is
//   eps = eps_uncond + w * (eps_cond - eps_uncond)
// from ONE model call on 2N images: the N images with their classes first,
// then the same N images with the null class (nodes/common/class_labels.hpp).
// w = 1 is the conditional prediction alone and w = 0 the unconditional one:
// neither doubles the batch. The combination is applied to whatever the model
// predicts (epsilon, v or x_0: it is linear), before any scheduler step, so
// every sampler method takes it.
#pragma once

#include "graph/param_table.hpp"
#include "graph/tensor.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace diffuflow {

// How the chosen classes are given to the images: `blocks` splits each packet
// into one block per class (a grid row per class when nrow = packet size /
// classes); `cycle` gives image i of the run classes[i % classes.size()], with
// i counted from noise_source's first_image, so an image's class does not
// depend on the batch size (diffuflow sample sorts such images into rows).
DIFFUFLOW_ENUM(ClassOrder, blocks, cycle);

struct GuidanceOptions {
  DIFFUFLOW_PARAMS(GuidanceOptions);
  DIFFUFLOW_PARAM(std::string, classes, "",
                  "class of the chains: 'all' (one block of each packet per class: one grid row each when "
                  "nrow = packet size / classes), one class ('7') or a list ('1,4,7'); empty: unconditional");
  DIFFUFLOW_PARAM(double, guidance_scale, 1.0,
                  "classifier-free guidance w: eps_uncond + w (eps_cond - eps_uncond), both from one model "
                  "call on 2N images; 1: the conditional prediction alone (no doubled batch)",
                  .range(0.0, 100.0));
  DIFFUFLOW_PARAM(ClassOrder, class_order, ClassOrder::blocks,
                  "blocks: each packet split into one block per class; cycle: image i of the run (counted from "
                  "noise_source's first_image) takes the (i mod count)-th class, whatever the batch size");
};

// What one guided model call takes.
struct GuidedBatch {
  Tensor x;       // [N or 2N, C,H,W] f32
  Tensor t;       // [N or 2N] s32 host
  Tensor labels;  // [N or 2N] s32 host; empty for unconditional chains
};

class ClassGuidance {
 public:
  ClassGuidance() = default;  // unconditional: no labels, no guidance
  // Checks the options against a model with `num_class_embeds` rows (0: an
  // unconditional model), naming it as `model_name` in the ConfigErrors: a
  // class out of range, classes or guidance for an unconditional model,
  // guidance without classes, a conditional model without classes.
  ClassGuidance(const GuidanceOptions& options, int64_t num_class_embeds, const std::string& model_name);

  bool conditional() const { return !classes_.empty(); }
  // Whether each model call runs 2N images (conditional and w not 0 or 1).
  bool doubled() const { return conditional() && scale_ != 1.0 && scale_ != 0.0; }
  double scale() const { return scale_; }
  const std::vector<int32_t>& classes() const { return classes_; }
  int32_t null_class() const { return null_class_; }

  // The classes of a chain of n images [n] s32 host, the first being image
  // `first_image` of the run (block_labels or cycle_labels as class_order says);
  // empty when unconditional.
  Tensor labels(int64_t n, int64_t first_image = 0) const;
  // The model's inputs for chains x [N,...] at t [N] with labels [N] (empty when unconditional).
  GuidedBatch model_inputs(const Tensor& x, const Tensor& t, const Tensor& labels) const;
  // The guided model output [N,...] from the output for model_inputs() [N or 2N,...].
  Tensor combine(const Tensor& prediction) const;

 private:
  std::vector<int32_t> classes_;
  double scale_ = 1.0;
  int32_t null_class_ = -1;
  ClassOrder order_ = ClassOrder::blocks;
};

// [N,...] -> [2N,...]: x twice, on x's engine.
Tensor repeat_batch(const Tensor& x);
// The first `n` rows of x [M,...] (a copy on x's engine).
Tensor leading_rows(const Tensor& x, int64_t n);
// both [2N,...] f32 (conditional rows first) -> [N,...]: u + w (c - u), on both's engine.
Tensor guide(const Tensor& both, double w);

}  // namespace diffuflow
