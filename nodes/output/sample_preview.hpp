// sample_preview: watches a model learn. Every `every` optimiser steps (and
// once more when the run ends) it draws `count` samples from the current
// weights with DDIM (or DDPM) and writes them as a picture, always from the
// SAME initial noise x_T (seeded by the pipeline seed and the node name), so
// the pictures of different steps compare at a glance.
//
// Example config:
//   - name: preview
//     type: sample_preview
//     params: {model: model, schedule: schedule, shape: [2, 1, 1], count: 1000, every: 500,
//              method: ddim, steps: 50, layout: points, reverse_chain: 6}
//   edges:
//     - optimiser -> preview
//     - preview -> gate.decrement
//
// in:  step (int64): the optimiser steps taken so far (the optimiser's `out`)
// out: the input packet unchanged. Placed between the optimiser and the
//      limiter's decrement, the next training step starts only after a preview
//      is drawn, so preview_<k> shows exactly the weights after step k.
//
// Files, under <out_dir>/<subdir> (nothing is written without an out_dir):
//   preview_<step, 6 digits>.png   when step % every == 0 (every > 0)
//   final.png                      at finish(), from the final weights
//   reverse_chain.png              at finish() when reverse_chain = K > 0: K
//                                  evenly spaced states x_T ... x_0 of the chain
//   layout grid:   samples [N,C,H,W] (C = 1 or 3), nrow per row; the chain as
//                  one row per sample (at most nrow rows), K columns
//   layout points: samples [N,2,1,1] as a scatter plot on [-limit, limit]^2;
//                  the chain as a row of K scatter panels (axes at least [-3, 3])
//
// Classes: a class-conditional model needs `classes` (e.g. all, with nrow =
// count / 10 for one row per digit) and may take a guidance_scale, as the
// sampler (nodes/diffusion/guidance.hpp).
//
// Weights: with use_ema (default) and an optimiser that keeps an EMA (the
// model resource publishes it), a preview samples from the EMA weights: the
// raw weights are saved to a scratch buffer, the EMA copied over them, the
// chain sampled, and the raw weights copied back, each copy the model's flat
// copy on its engine (DenoiserModel::copy_flat). The node is a device node: it runs on the compute
// thread, so no other model call sees the swapped weights.
#pragma once

#include "graph/node.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"
#include "nodes/diffusion/guidance.hpp"
#include "nodes/diffusion/reverse_chain.hpp"
#include "nodes/model/model_resource.hpp"

#include <dnnl.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

// One reverse chain as a preview draws it: the sampler's options, the number
// of evenly spaced states x_T ... x_0 to keep (0: none), and the seed of the
// step noise (the noise of step k is drawn from (noise_seed, k)), and the
// chains' classes and guidance (none by default).
struct ReverseChainDraw {
  ReverseChainOptions options;
  int64_t snapshots = 0;
  uint64_t noise_seed = 0;
  ClassGuidance guidance;
  int64_t first_image = 0;  // the index of x_T's first image in the run (class_order: cycle)
};

// Runs the reverse chain from x_T [N,C,H,W] f32 to x_0 with `model`, the step
// arithmetic done by `steps` (oneDNN primitives on its device), at the
// timesteps plan_reverse_chain() picks, so previews match the sampler node's
// samples (with classes and guidance as the sampler applies them: one model
// call on 2N images per step when guided). With draw.snapshots = K > 0, `snapshots` receives K states
// [N,C,H,W] (x_T first, x_0 last). The same x_T, weights and noise_seed give
// the same x_0.
Tensor sample_reverse_chain(DenoiserModel& model, DiffusionSteps& steps, const Tensor& x_T,
                            const ReverseChainDraw& draw, std::vector<Tensor>* snapshots = nullptr);

// Copies the optimiser's EMA weights over the model's parameters for as long as
// it lives, and restores the raw weights (bitwise) when it goes. All copies are
// DenoiserModel::copy_flat, waited for. With a null `ema` it does nothing.
class EmaWeightSwap {
 public:
  EmaWeightSwap(DenoiserModel& model, const dnnl::memory* ema);
  ~EmaWeightSwap();
  EmaWeightSwap(const EmaWeightSwap&) = delete;
  EmaWeightSwap& operator=(const EmaWeightSwap&) = delete;
  bool active() const { return active_; }

 private:
  DenoiserModel& model_;
  bool active_ = false;
  dnnl::memory saved_;  // the raw weights while the EMA is in place
};

class SamplePreview : public Node {
 public:
  DIFFUFLOW_NESTED_ENUM(Layout, grid, points);

  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, model, "", "the model being trained (unet_model, mlp_model)",
                    .resource(kModelResourceKind));
    DIFFUFLOW_PARAM(std::string, schedule, "", "the noise schedule the model is trained with",
                    .resource("noise_schedule"));
    DIFFUFLOW_PARAM(Shape, shape, (Shape{1, 28, 28}), "[C, H, W] of one sample ([2, 1, 1] for 2-D points)",
                    .range(1, 65536));
    DIFFUFLOW_PARAM(int64_t, count, 64, "samples per preview", .range(1, 1e6));
    DIFFUFLOW_PARAM(int64_t, every, 500, "preview every N optimiser steps (0: only at the end)", .range(0, 1e9));
    // method, steps (50 here), eta, clip, prediction
    DIFFUFLOW_PARAM_GROUP(ReverseChainOptions, chain, ReverseChainOptions::with_steps(50));
    DIFFUFLOW_PARAM(bool, use_ema, true, "sample from the optimiser's EMA weights when it keeps them");
    DIFFUFLOW_PARAM(Layout, layout, Layout::grid, "grid: images [N,C,H,W]; points: 2-D [N,2,1,1]");
    DIFFUFLOW_PARAM(int64_t, reverse_chain, 0, "at the end, also draw K evenly spaced states x_T ... x_0 (0: none)",
                    .range(0, 1000));
    DIFFUFLOW_PARAM(std::string, subdir, "samples", "folder inside the output folder");
    DIFFUFLOW_PARAM(int64_t, nrow, 8, "grid: images per row", .range(1, 4096));
    DIFFUFLOW_PARAM(int64_t, scale, 2, "grid: pixel enlargement", .range(1, 64));
    DIFFUFLOW_PARAM(double, limit, 1.5, "points: axes span [-limit, limit]", .range(1e-6, 1e6));
    DIFFUFLOW_PARAM_GROUP(GuidanceOptions, guidance, GuidanceOptions{});  // classes, guidance_scale
  };

  static NodeContract contract();
  SamplePreview(const NodeConfig& config, RunContext& ctx);
  ~SamplePreview() override;
  void process(const NodeInput& in, Emitter& out) override;
  void finish() override;

  // Samples `count` points or images from the current weights (EMA when
  // use_ema and published), from the node's fixed x_T. `snapshots` as for
  // sample_reverse_chain (with K = reverse_chain).
  Tensor draw(std::vector<Tensor>* snapshots = nullptr);

  const Params& params() const { return params_; }
  const Tensor& initial_noise() const { return x_T_; }
  // The optimiser steps at which previews were written, in order.
  const std::vector<int64_t>& previewed_steps() const { return previewed_; }
  // <out_dir>/<subdir>/preview_<step>.png; empty without an out_dir.
  std::filesystem::path preview_file(int64_t step);
  std::filesystem::path output_file(const std::string& file_name);

 private:
  void write_samples(const Tensor& samples, const std::filesystem::path& file, const std::string& title);
  void write_chain(const std::vector<Tensor>& snapshots, const std::filesystem::path& file);

  Params params_;
  std::shared_ptr<ModelResource> resource_;
  std::shared_ptr<NoiseSchedule> schedule_;
  std::unique_ptr<DiffusionSteps> steps_;
  Tensor x_T_;                  // [count, C, H, W] f32 on the device, fixed for the run
  uint64_t noise_seed_ = 0;     // the step noise, fixed for the run
  ClassGuidance guidance_;      // the chains' classes (a class-conditional model needs them)
  int64_t last_step_ = -1;      // the last optimiser step seen
  std::vector<int64_t> previewed_;
};

}  // namespace diffuflow
