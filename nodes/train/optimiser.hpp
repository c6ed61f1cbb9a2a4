// optimiser: Adam / AdamW over the model's flat parameter buffer, with
// learning-rate warm-up and cosine decay, gradient clipping by global L2 norm,
// gradient accumulation, an EMA of the weights and checkpoints.
//
// Example config:
//   - name: optimiser
//     type: optimiser
//     params: {model: model, algorithm: adamw, lr: 2e-4, weight_decay: 0.01, warmup_steps: 500,
//              schedule: cosine, total_steps: 8000, clip_grad_norm: 1.0, ema_decay: 0.999,
//              checkpoint_every: 1000, keep_last: 3}
//   edges:
//     - backward -> optimiser
//     - optimiser -> gate.decrement
//
// in:  grads_ready (the model's gradients hold this packet's batch), loss (double, logged)
// out: step (int64): the optimiser steps taken so far (1-based after the first step);
//      one packet per input packet, so a limiter fed by it frees one slot per batch
//
// The math is torch.optim.Adam / AdamW (amsgrad off), on the flat buffers
// params [P], grads [P], exp_avg [P], exp_avg_sq [P] of the model's engine:
//   g  = grads / accumulate * clip_coef     (clip_coef = min(1, max_norm / (||g|| + 1e-6)))
//   g += weight_decay * p                   (adam: L2)   |  p *= 1 - lr * weight_decay  (adamw)
//   m  = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
//   p -= lr / (1 - beta1^k) * m / (sqrt(v / (1 - beta2^k)) + eps)
//   ema = d ema + (1 - d) p,  d = 0 at update 1, else min(ema_decay, (1 + s) / (10 + s)), s = k - 1
// Every operation over [P] is a oneDNN primitive created once; values that
// change per step (scale, lr, bias corrections, EMA decay) are elements of one
// small buffer broadcast as src1. Only scalars reach the host: one mapping of
// that buffer per step reads the gradient norm and writes the step's values.
//
// Learning rate at optimiser step k (1-based): lr * k / warmup_steps while
// k < warmup_steps; then constant, or a cosine from lr down to min_lr:
//   lr(p) = min_lr + (lr - min_lr) (1 + cos(pi p)) / 2,   p in [0, 1]
// The cosine's progress p runs over steps, (k - warmup_steps) / (total_steps -
// warmup_steps), with total_steps 0 meaning the run's --max-steps; or, when
// neither is given and the run has a --max-time budget, over time: from the
// step the warm-up ends at to the end of the budget, p is the fraction of that
// time elapsed (the run clock; equal on every process of a data-parallel run),
// so the decay ends when the run does on any machine. A resumed run continues
// from the checkpoint's progress (metadata lr_progress) over its own budget.
// With none of the three (a run stopped by hand) there is no end to decay to:
// the rate stays where it is, lr after the warm-up of a fresh run, or the
// rate a resumed run had come to, and the node says so.
//
// Checkpoints (host I/O): <out_dir>/<checkpoint_dir>/step_000123.safetensors,
// written atomically, plus latest.safetensors with the same contents:
//   <diffusers name>          the raw weights          (F32, the parameter's shape)
//   ema.<diffusers name>      the EMA weights          (only when ema_decay > 0)
//   optimiser.exp_avg         Adam's first moment      (F32 [P])
//   optimiser.exp_avg_sq      Adam's second moment     (F32 [P])
//   __metadata__: format "diffuflow-checkpoint", format_version "1", step (training
//   steps = packets consumed), optimiser_step, samples (images consumed over all
//   processes: the data position), world_size, seed, model_kind, model_config (JSON),
//   and the run's metadata (RunContext::run_metadata(): the training loss adds
//   scheduler_config, diffusers' JSON, and prediction_type).
// Only the newest keep_last step files are kept. finish() writes the final one.
// With RunContext::resume_path set, the constructor restores weights, EMA,
// moments and counters, so the resumed run continues bit for bit.
#pragma once

#include "graph/node.hpp"
#include "nodes/model/model_resource.hpp"

#include <dnnl.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace diffuflow {

class SafetensorsFile;

class Optimiser : public Node {
 public:
  DIFFUFLOW_NESTED_ENUM(Algorithm, adam, adamw);
  DIFFUFLOW_NESTED_ENUM(LrSchedule, constant, cosine);
  DIFFUFLOW_NESTED_ENUM(OnNonfinite, stop, skip);

  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, model, "", "the model whose parameters are updated", .resource(kModelResourceKind));
    DIFFUFLOW_PARAM(Algorithm, algorithm, Algorithm::adam, "adam (L2 weight decay) or adamw (decoupled)");
    DIFFUFLOW_PARAM(double, lr, 2e-4, "peak learning rate", .range(0.0, 10.0));
    DIFFUFLOW_PARAM(double, beta1, 0.9, "Adam beta1", .range(0.0, 0.999999));
    DIFFUFLOW_PARAM(double, beta2, 0.999, "Adam beta2", .range(0.0, 0.999999999));
    DIFFUFLOW_PARAM(double, eps, 1e-8, "Adam epsilon, added to the denominator", .range(0.0, 1.0));
    DIFFUFLOW_PARAM(double, weight_decay, 0.0, "weight decay (adamw: decoupled)", .range(0.0, 1.0));
    DIFFUFLOW_PARAM(int64_t, warmup_steps, 0, "linear warm-up of the learning rate from 0 over this many steps",
                    .at_least(0));
    DIFFUFLOW_PARAM(LrSchedule, schedule, LrSchedule::constant, "learning rate after the warm-up");
    DIFFUFLOW_PARAM(int64_t, total_steps, 0,
                    "cosine: the step where min_lr is reached (0: the run's --max-steps, else the end of --max-time)",
                    .at_least(0));
    DIFFUFLOW_PARAM(double, min_lr, 0.0, "cosine: the final learning rate", .range(0.0, 10.0));
    DIFFUFLOW_PARAM(double, clip_grad_norm, 0.0, "clip the gradient's global L2 norm to this (0: off)",
                    .at_least(0.0));
    DIFFUFLOW_PARAM(int64_t, accumulate, 1, "step every k packets on the averaged gradient", .range(1, 100000));
    DIFFUFLOW_PARAM(double, ema_decay, 0.999, "EMA decay with diffusers' warm-up (0: no EMA)", .range(0.0, 1.0));
    DIFFUFLOW_PARAM(int64_t, checkpoint_every, 0, "write a checkpoint every n training steps (0: only at the end)",
                    .at_least(0));
    DIFFUFLOW_PARAM(int64_t, keep_last, 3, "step checkpoints kept (0: all)", .at_least(0));
    DIFFUFLOW_PARAM(std::string, checkpoint_dir, "checkpoints", "folder under the run's output folder", .path());
    DIFFUFLOW_PARAM(OnNonfinite, on_nonfinite, OnNonfinite::stop,
                    "a NaN/inf gradient norm: stop the run or skip the step");
  };

  static constexpr const char* kCheckpointFormat = "diffuflow-checkpoint";
  static constexpr int kCheckpointVersion = 1;

  static NodeContract contract();
  Optimiser(const NodeConfig& config, RunContext& ctx);
  ~Optimiser() override;
  void process(const NodeInput& in, Emitter& out) override;
  void finish() override;

  // The learning rate of optimiser step `step` (1-based), the cosine's progress over steps.
  static double learning_rate(const Params& params, int64_t step);
  // The cosine's progress over steps at optimiser step `step`, in [0, 1].
  static double step_progress(const Params& params, int64_t step);
  // The cosine's learning rate at progress p in [0, 1].
  static double cosine_rate(const Params& params, double progress);
  // Progress over time: `start` (resumed from) plus the rest in proportion to
  // the time elapsed since `anchor_s` of the time left from it to `end_s`.
  static double time_progress(double start, double anchor_s, double now_s, double end_s);
  // The EMA decay of update `update` (1-based), diffusers' EMAModel warm-up.
  static double ema_decay_at(double ema_decay, int64_t update);
  // The training step a checkpoint was written at (its metadata "step"). DataError on a bad file.
  static int64_t checkpoint_step(const std::filesystem::path& path);
  // "step_000123.safetensors"
  static std::string checkpoint_file_name(int64_t step);

  const Params& params() const { return params_; }
  int64_t step() const { return step_; }          // optimiser steps taken
  int64_t packets() const { return packets_; }    // training steps (packets) consumed
  double last_grad_norm() const { return last_grad_norm_; }
  // The EMA weights, flat f32 [P] on the model's engine (null when ema_decay is 0).
  const dnnl::memory* ema() const;
  const dnnl::memory& exp_avg() const;
  const dnnl::memory& exp_avg_sq() const;
  // Where checkpoints go; empty when the run writes nothing.
  std::filesystem::path checkpoint_folder() const;
  // Writes a checkpoint of the current state to `path` (atomically).
  void write_checkpoint(const std::filesystem::path& path) const;

 private:
  struct State;

  bool take_step(int64_t seq, double loss);
  double next_learning_rate();
  void save_checkpoint();
  void restore(const SafetensorsFile& file);
  void prune_checkpoints(const std::filesystem::path& folder) const;

  Params params_;
  std::shared_ptr<ModelResource> resource_;
  DenoiserModel& model_;
  std::unique_ptr<State> state_;
  int64_t step_ = 0;
  int64_t packets_ = 0;
  int64_t window_ = 0;  // packets accumulated since the last step
  int64_t last_checkpoint_packets_ = -1;
  int64_t items_ = 0;  // images consumed over all processes (-1: unknown, resumed from an old checkpoint)
  std::chrono::steady_clock::time_point last_packet_time_{};
  double last_grad_norm_ = 0;
  // The cosine over the --max-time budget: its progress at the latest step,
  // where it started (a resumed run: the checkpoint's) and the run clock at
  // the first step of the decay (-1: not reached).
  bool decay_over_time_ = false;
  bool hold_progress_ = false;  // no end to decay to: the rate stays at the progress resumed from
  double lr_progress_ = 0;
  double start_progress_ = 0;
  double anchor_s_ = -1;
};

}  // namespace diffuflow
