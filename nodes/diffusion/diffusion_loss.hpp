// diffusion_loss: the denoising loss and its gradient with respect to the
// model's prediction.
//
// Example config:
//   - name: loss
//     type: diffusion_loss
//     params: {schedule: schedule, prediction: epsilon, min_snr_gamma: 5, buckets: 10}
//
// in:  prediction [N,C,H,W] f32 (the model's output, on the device)
//      x0         [N,C,H,W] f32 in [-1,1];  noise [N,C,H,W] f32 (the eps of the noiser)
//      t          [N] s32 host
// out: loss            double: (1 / (N*C*H*W)) * sum_i w_i * sum_chw (prediction - target)^2
//                      (plain MSE when unweighted)
//      grad_prediction [N,C,H,W] f32 on the device: 2 w_i / (N*C*H*W) * (prediction - target)
//
// target is eps, v = sqrt(abar) eps - sqrt(1-abar) x0, or x0 (parameter `prediction`);
// w_i = 1, or the min-SNR-gamma weight of sample i when min_snr_gamma > 0.
// The tensor work is three oneDNN primitives per shape, created once:
// binary sub (diff), reduction_norm_lp_power_p_sum over C*H*W (per-sample sums
// of squares, the only values read on the host), binary mul by a [N,1] column
// of per-sample coefficients; the sums come out and the coefficients go in
// with one host mapping. Metrics: "loss" every step; "loss_t<lo>_<hi>"
// (the unweighted MSE of the samples whose t fell in that bucket, averaged
// since the last report) every `log_every` steps and at the end.
// A non-finite loss stops the run (NodeError naming node, step and value), or
// with on_nonfinite: skip emits the packet with a zero grad_prediction (and
// the non-finite loss, which tells the optimiser to skip the step).
#pragma once

#include "compute/kernels.hpp"
#include "graph/node.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace diffuflow {

class DiffusionLoss : public Node {
 public:
  DIFFUFLOW_NESTED_ENUM(OnNonfinite, stop, skip);

  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, schedule, "", "the noise schedule the noiser used", .resource("noise_schedule"));
    DIFFUFLOW_PARAM(PredictionTarget, prediction, PredictionTarget::epsilon, "what the model predicts");
    DIFFUFLOW_PARAM(double, min_snr_gamma, 0.0, "min-SNR weighting gamma (0: off, 5 is usual)", .at_least(0.0));
    DIFFUFLOW_PARAM(int64_t, buckets, 10, "timestep buckets for the per-bucket loss metrics (0: none)",
                    .range(0, 100000));
    DIFFUFLOW_PARAM(int64_t, log_every, 100, "steps between per-bucket loss reports", .range(1, 1000000000));
    DIFFUFLOW_PARAM(OnNonfinite, on_nonfinite, OnNonfinite::stop,
                    "a NaN/inf loss: stop the run, or emit a zero gradient so the step is skipped");
  };

  static NodeContract contract();
  DiffusionLoss(const NodeConfig& config, RunContext& ctx);
  ~DiffusionLoss() override;
  void process(const NodeInput& in, Emitter& out) override;
  void finish() override;

  // The bucket [lo, hi] of timestep t when T timesteps are split in `buckets`.
  static std::pair<int, int> bucket_range(int bucket, int buckets, int timesteps);
  static int bucket_of(int t, int buckets, int timesteps);

 private:
  enum class Op { sub, sum_squares, scale };
  struct Buffers;
  Buffers& buffers(int64_t batch, int64_t per_sample);
  void log_buckets(int64_t step);

  Params params_;
  std::shared_ptr<NoiseSchedule> schedule_;
  int buckets_ = 0;  // the `buckets` parameter, at most T
  DiffusionSteps steps_;
  std::mutex mutex_;
  KernelSet<std::tuple<Op, int64_t, int64_t>> kernels_;  // (operation, N, D)
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Buffers>> buffers_;  // (N, D)
  std::vector<double> bucket_sum_;
  std::vector<int64_t> bucket_count_;
  int64_t last_step_ = -1;
  int64_t since_report_ = 0;
};

}  // namespace diffuflow
