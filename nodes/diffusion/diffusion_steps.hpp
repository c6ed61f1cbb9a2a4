// DiffusionSteps: the arithmetic of the forward process and of one reverse
// step (DDPM ancestral, DDIM), shared by the noiser, the loss, the sampler,
// the noising chain and the training-time preview.
//
// Every operation on image-sized tensors runs as a oneDNN primitive on the
// device's engine and stream (binary ops against per-sample [N,1,..,1]
// coefficients, eltwise clip as a post-op). Only the per-sample coefficients
// are computed on the host, from the schedule's float32 tables, in the same
// order as diffusers, so a step matches the PyTorch reference to ~1e-6; the
// coefficient vectors one operation needs go to the device together, in one
// host mapping. Primitives are created once per (operation, shape) and reused
// (compute/kernels.hpp).
//
// Shapes: images are [N, ...] f32 (usually [N,C,H,W]); timesteps are [N] s32
// (or s64) host tensors, one per sample, and must lie in [0, T).
//
//   DiffusionSteps steps(schedule, ctx().device());
//   Tensor x_t = steps.q_sample(x0, eps, t);
//   Tensor x_prev = steps.ddpm_step(x_t, eps_pred, z, t);     // t -> t-1 per sample
//   auto out = steps.ddim_step(x_t, model_output, t, t_prev, eta, z, schedule.config());
//   out.prev_sample, out.pred_original_sample              // diffusers' step() outputs
//
// Each operation queues its primitives on the device's stream and waits once,
// at its end, so its result is ready when it returns. Dynamic thresholding
// waits once more in the middle: its per-sample quantile of |x0| is a selection
// on the host (oneDNN has no sort or selection primitive), between the
// primitives that take the absolute values and apply the thresholds.
//
// Thread safety: kernel lookups are guarded and runs serialised; calls may come
// from several threads, their work going to the device's one stream.
#pragma once

#include "compute/kernels.hpp"
#include "graph/device.hpp"
#include "graph/enum_names.hpp"
#include "graph/tensor.hpp"
#include "nodes/diffusion/noise_schedule.hpp"
#include "nodes/diffusion/scheduler_config.hpp"

#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace diffuflow {

// What a model is trained to predict; spelled epsilon | v | x0 in YAML.
DIFFUFLOW_ENUM(PredictionTarget, epsilon, v, x0);

// The same in diffusers' spelling (epsilon | v_prediction | sample) and back.
PredictionTarget prediction_target(PredictionType type);
PredictionType prediction_type(PredictionTarget target);

// A tensor of independent N(0, 1) samples (times `scale`) on the device. Drawn on
// the host with Box-Muller over 53-bit uniforms from `rng` (the same numbers on
// every platform for the same seed) and written through one explicit host mapping.
Tensor standard_normal(const Shape& shape, std::mt19937_64& rng, Device& device, float scale = 1.0f);

// The same per image: image i of the N draws from rng_of(i) alone, so an
// image's values do not depend on which others share its batch. The images
// are drawn on oneTBB's threads at once: rng_of is called concurrently.
Tensor standard_normal_per_image(const Shape& shape, const std::function<std::mt19937_64(int64_t)>& rng_of,
                                 Device& device);

// A [N] s32 host tensor holding one timestep per sample.
Tensor timestep_tensor(const std::vector<int>& values);

class DiffusionSteps {
 public:
  DiffusionSteps(const NoiseSchedule& schedule, Device& device);
  ~DiffusionSteps();
  DiffusionSteps(const DiffusionSteps&) = delete;
  DiffusionSteps& operator=(const DiffusionSteps&) = delete;

  const NoiseSchedule& schedule() const { return schedule_; }
  Device& device() { return device_; }

  // (x - c1 y) / c2 per sample on tensors from anywhere, optionally clipped to [-1, 1].
  Tensor sub_scaled_div(const Tensor& x, const std::vector<float>& c1, const Tensor& y, const std::vector<float>& c2,
                        bool clip);

  // Forward process, closed form: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
  Tensor q_sample(const Tensor& x0, const Tensor& eps, const Tensor& t);

  // out[i] = a[i] * x[i] + b[i] * y[i], with one coefficient per sample (rounded as
  // fl(fl(a x) + fl(b y))). The building block of q_sample and the Markov chain.
  Tensor combine(const std::vector<float>& a, const Tensor& x, const std::vector<float>& b, const Tensor& y);

  // out[i] = a[i] * x[i] + addend[i]: one primitive (a binary mul with a fused add).
  Tensor scale_add(const std::vector<float>& a, const Tensor& x, const Tensor& addend);

  // x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped to [-1, 1] when `clip`.
  Tensor predict_x0(const Tensor& x_t, const Tensor& eps, const Tensor& t, bool clip = true);

  // diffusers' step() outputs.
  struct StepResult {
    Tensor prev_sample;           // [N,...] x at the previous timestep
    Tensor pred_original_sample;  // [N,...] the predicted x_0, clipped or thresholded
  };

  // One step of diffusers' DDPMScheduler.step per sample, t[i] -> t_prev[i] (t - 1
  // over every timestep, the next timestep of a shorter schedule, -1 after the
  // last: abar 1), as `config` says: prediction_type, clip_sample (to
  // clip_sample_range) or thresholding, variance_type. The model output is
  // read as config.prediction_type. Noise sigma z is added where t > 0, so z
  // [N,...] ~ N(0, I) may be empty only when every t is 0.
  StepResult ddpm_step(const Tensor& sample, const Tensor& model_output, const Tensor& z, const std::vector<int>& t,
                       const std::vector<int>& t_prev, const SchedulerConfig& config);

  // One step of diffusers' DDIMScheduler.step per sample (use_clipped_model_output
  // false), t[i] -> t_prev[i] (t - T / steps; where negative, abar is 1 with
  // config.set_alpha_to_one, else abar_0), with prediction_type, clip_sample or
  // thresholding as for ddpm_step. eta in [0, 1]; with eta > 0 the noise
  // sigma z is added, so z may be empty only when eta is 0.
  StepResult ddim_step(const Tensor& sample, const Tensor& model_output, const std::vector<int>& t,
                       const std::vector<int>& t_prev, float eta, const Tensor& z, const SchedulerConfig& config);

  // diffusers' dynamic thresholding of x0 [N,...], per sample: s = the `ratio`
  // quantile of |x0| (torch.quantile, linear interpolation), clamped to
  // [1, max_value]; then clamp(x0, -s, s) / s.
  Tensor threshold(const Tensor& x0, double ratio, double max_value);

  // One ancestral DDPM step t -> t-1 per sample (diffusers DDPMScheduler.step,
  // variance fixed_small, x0 clipped when `clip`):
  //   x_prev = coef_x0 x0_hat + coef_xt x_t + sqrt(var) z, with no noise where t = 0.
  // z [N,...] ~ N(0, I); it may be empty when every t is 0.
  Tensor ddpm_step(const Tensor& x_t, const Tensor& eps_pred, const Tensor& z, const Tensor& t, bool clip = true);

  // One DDIM step t -> t_prev per sample (diffusers DDIMScheduler.step, set_alpha_to_one,
  // use_clipped_model_output = false):
  //   x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps_pred + s z,
  //   s = eta sqrt((1 - abar_prev)/(1 - abar_t) (1 - abar_t/abar_prev)); abar_prev = 1 where t_prev < 0.
  // eta in [0, 1]; z may be empty when eta = 0.
  Tensor ddim_step(const Tensor& x_t, const Tensor& eps_pred, const Tensor& t, const Tensor& t_prev, float eta,
                   const Tensor& z, bool clip = true);

  // DDIM timesteps with 'leading' spacing (steps_offset 0), from the noisiest:
  // k * (T / steps) for k = steps-1 .. 0; 980, 960, ..., 0 for 50 of 1000.
  // The step after t is t - T / steps (negative after the last: abar = 1).
  // SchedulerConfig::inference_timesteps gives every spacing.
  static std::vector<int> ddim_timesteps(int timesteps, int steps);

  // The training target for a prediction type: eps, v = sqrt(abar) eps - sqrt(1-abar) x0, or x0.
  // (For epsilon and x0 the given tensor is returned, moved to the engine if needed.)
  Tensor training_target(PredictionTarget target, const Tensor& x0, const Tensor& eps, const Tensor& t);

  // Converts a model output of the given type to an epsilon prediction:
  //   v:  eps = sqrt(abar) v + sqrt(1-abar) x_t;   x0: eps = (x_t - sqrt(abar) x0) / sqrt(1-abar).
  Tensor epsilon_from(PredictionTarget target, const Tensor& x_t, const Tensor& prediction, const Tensor& t);

  // Min-SNR-gamma loss weights per sample (Hang et al. 2023), snr = abar / (1 - abar):
  // epsilon: min(snr, gamma) / snr; v: min(snr, gamma) / (snr + 1); x0: min(snr, gamma).
  std::vector<float> min_snr_weights(PredictionTarget target, const Tensor& t, float gamma) const;
  // The same for timesteps already read (read_timesteps).
  std::vector<float> min_snr_weights(PredictionTarget target, const std::vector<int>& steps, float gamma) const;

  // Reads a [N] s32/s64 timestep tensor on the host; checks every value is in [0, T)
  // unless `allow_negative` (then -1 .. T-1, for t_prev).
  std::vector<int> read_timesteps(const Tensor& t, bool allow_negative = false) const;

  // Plain f32 on this device's engine: returned as is when already there,
  // otherwise reordered (an explicit transfer when the engines differ).
  // Waits for the reorder.
  Tensor on_device(const Tensor& x);

  // Copies x [N, ...] into column k of chain [N, K, ...] (both plain f32 on
  // this device): one reorder into a strided view of the chain, created once
  // per (chain shape, column). Queued on the device's stream: wait on it
  // before the chain is read (as the copy runs, x is read in place).
  void write_column(const Tensor& chain, int64_t k, const Tensor& x);

 private:
  enum class Op { mul_rows, mul_rows_add, div_rows, div_rows_clip, sub, add, clip, abs, clamp_rows_div };
  // A kernel: the operation, the tensor shape, and the bound of a clip (0 for the others).
  using KernelKey = std::tuple<Op, Shape, float>;

  // The tensors that work queued on the device's stream reads or writes, held
  // until wait(). Each public operation queues its work through one Pending
  // and waits once, at its end; should an error leave first, the destructor
  // waits, so that no queued work outlives the memory it uses.
  class Pending {
   public:
    explicit Pending(dnnl::stream& stream) : stream_(stream) {}
    ~Pending();
    Pending(const Pending&) = delete;
    Pending& operator=(const Pending&) = delete;
    const Tensor& keep(const Tensor& t);
    // Waits for the work queued so far (no wait when nothing was).
    void wait();

   private:
    dnnl::stream& stream_;
    std::vector<Tensor> tensors_;
  };

  // Per-sample coefficient vectors (N values each) for tensors of `shape`,
  // written to the device together, with one host mapping.
  struct Coefficients {
    Tensor values;  // [K, N] f32 on the device
    Shape shape;
    // Vector j as the [1, N, 1] operand of the kernels.
    dnnl::memory row(size_t j) const;
  };
  Coefficients coefficients(Pending& pending, const Shape& shape, const std::vector<std::vector<float>>& rows);

  // dst = op(src0, src1) [+ addend], over [N, ...] tensors seen as [1, N, M];
  // src1 is a coefficient row or a whole tensor (whole()). `bound`: the clip of
  // div_rows_clip and clip. clamp_rows_div: dst = min(max(src0, src1), src2) / src2
  // with src2 = `upper` (a row).
  void run(Op op, const Tensor& dst, const Tensor& src0, const dnnl::memory& src1, const Tensor* addend = nullptr,
           float bound = 0.0f, const dnnl::memory* upper = nullptr);
  // A whole tensor as the [1, N, M] operand.
  static dnnl::memory whole(const Tensor& x);

  // on_device() with its reorder, if any, queued.
  Tensor queue_on_device(Pending& pending, const Tensor& x);
  // The arithmetic on tensors already on the device with checked shapes:
  // queued, returning at once.
  Tensor queue_mul_rows(Pending& pending, const Tensor& x, const dnnl::memory& c);
  Tensor queue_add(Pending& pending, const Tensor& a, const Tensor& b);
  // a x + b y, rounded as fl(fl(a x) + fl(b y)).
  Tensor queue_combine(Pending& pending, const dnnl::memory& a, const Tensor& x, const dnnl::memory& b,
                       const Tensor& y);
  // (x - c1 y) / c2, clipped to [-bound, bound] when bound > 0.
  Tensor queue_sub_scaled_div(Pending& pending, const Tensor& x, const dnnl::memory& c1, const Tensor& y,
                              const dnnl::memory& c2, float bound = 0.0f);
  // Eltwise over a whole tensor: clip to [-bound, bound], or abs.
  Tensor queue_eltwise(Pending& pending, Op op, const Tensor& x, float bound = 0.0f);
  // Thresholds x0 (on the device): abs, one wait, the quantiles on the host, then the clamp.
  Tensor queue_threshold(Pending& pending, const Tensor& x0, double ratio, double max_value);

  // The step DDPM and DDIM share, from per-sample coefficient vectors (see reverse_step in the .cpp).
  struct ReverseCoefficients;
  StepResult reverse_step(const char* missing_noise, const Tensor& sample, const Tensor& model_output, const Tensor& z,
                          const ReverseCoefficients& c, const SchedulerConfig& config);
  void check_same_shape(const Tensor& x, const Tensor& y) const;
  void check_batch(const Tensor& x, size_t batch, const char* what) const;

  const NoiseSchedule& schedule_;
  Device& device_;
  KernelSet<KernelKey> kernels_;                      // (operation, shape, bound) -> binary or eltwise
  KernelSet<std::pair<Shape, int64_t>> column_copies_;  // (chain shape, column) -> reorder
};

}  // namespace diffuflow
