#include "nodes/diffusion/diffusion_loss.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/diffusion/trained_settings.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace diffuflow {

// The buffers of one (N, D = C*H*W): diff [N,D] = prediction - target, and
// stats [2,N]: row 0 the per-sample sums of squares (written by the device,
// read on the host), row 1 the per-sample gradient coefficients (written on
// the host), so that the host reads one and writes the other in one mapping.
struct DiffusionLoss::Buffers {
  dnnl::memory diff, stats;
};

NodeContract DiffusionLoss::contract() {
  NodeContract c;
  c.doc = "Denoising loss (MSE to eps, v or x0; optional min-SNR-gamma weights) and its gradient "
          "dL/dprediction; per-timestep-bucket loss metrics.";
  c.example = "{name: loss, type: diffusion_loss, params: {schedule: schedule, prediction: epsilon}}";
  c.inputs = {{"in", {fields::kPrediction, fields::kX0, fields::kNoise, fields::kT},
               "prediction, x0, noise [N,C,H,W] f32; t [N] s32 host"}};
  c.outputs = {{"out", {fields::kLoss, fields::kGradPrediction}, "loss (double); grad_prediction [N,C,H,W] f32 on the device"}};
  c.host_only = false;
  c.max_concurrency = 1;  // the per-shape buffers are reused every step
  return c;
}

DiffusionLoss::DiffusionLoss(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx),
      params_(config.params_as<Params>()),
      schedule_(ctx.resource_as<NoiseSchedule>(params_.schedule)),
      buckets_(static_cast<int>(std::min<int64_t>(params_.buckets, schedule_->timesteps()))),
      steps_(*schedule_, ctx.device()),
      kernels_(ctx.device().engine()) {
  // What the model learns to predict, on which schedule: recorded in checkpoints.
  record_trained_settings(ctx, schedule_->config(), prediction_type(params_.prediction));
  bucket_sum_.assign(static_cast<size_t>(buckets_), 0.0);
  bucket_count_.assign(static_cast<size_t>(buckets_), 0);
}

DiffusionLoss::~DiffusionLoss() = default;

std::pair<int, int> DiffusionLoss::bucket_range(int bucket, int buckets, int timesteps) {
  auto lo = [&](int b) { return static_cast<int>((int64_t(b) * timesteps + buckets - 1) / buckets); };
  return {lo(bucket), lo(bucket + 1) - 1};
}

int DiffusionLoss::bucket_of(int t, int buckets, int timesteps) {
  return static_cast<int>(int64_t(t) * buckets / timesteps);
}

DiffusionLoss::Buffers& DiffusionLoss::buffers(int64_t batch, int64_t per_sample) {
  auto& slot = buffers_[{batch, per_sample}];
  if (!slot) {
    const dnnl::engine& engine = ctx().device().engine();
    slot = std::make_unique<Buffers>(
        Buffers{dnnl::memory(plain_f32({batch, per_sample}), engine), dnnl::memory(plain_f32({2, batch}), engine)});
  }
  return *slot;
}

void DiffusionLoss::process(const NodeInput& in, Emitter& out) {
  std::lock_guard<std::mutex> lock(mutex_);
  const Packet& packet = in.packet();
  const int64_t seq = packet.seq();
  const Tensor prediction = steps_.on_device(packet.get(fields::kPrediction));
  const Tensor& t = packet.get(fields::kT);
  const Shape shape = prediction.shape();
  const int64_t batch = shape.at(0);
  const int64_t per_sample = prediction.numel() / std::max<int64_t>(batch, 1);
  const std::vector<int> ts = steps_.read_timesteps(t);
  if (static_cast<int64_t>(ts.size()) != batch) {
    throw std::runtime_error("diffusion_loss: t has " + std::to_string(ts.size()) + " entries, prediction " +
                             shape_str(shape) + " has " + std::to_string(batch) + " samples");
  }
  const Tensor target = steps_.training_target(params_.prediction, packet.get(fields::kX0), packet.get(fields::kNoise), t);
  if (target.shape() != shape) {
    throw std::runtime_error("diffusion_loss: prediction " + shape_str(shape) + " and target " +
                             shape_str(target.shape()) + " differ in shape");
  }
  Device& device = ctx().device();
  dnnl::stream& stream = device.stream();
  const dnnl::engine& engine = device.engine();
  const auto rows = plain_f32({batch, per_sample});
  const auto column = plain_f32({batch, 1});
  const Shape rows_shape{batch, per_sample};
  const Tensor pred_rows = prediction.reshaped(rows_shape);
  const Tensor target_rows = target.reshaped(rows_shape);
  Buffers& b = buffers(batch, per_sample);
  const dnnl::memory sums_device = flat_slice(b.stats, 0, column);
  const dnnl::memory coef_device = flat_slice(b.stats, batch, column);

  // diff = prediction - target;  sums_i = sum_d diff_id^2          [N,D] -> [N,1]
  const Kernel& sub = kernels_.get({Op::sub, batch, per_sample}, [&] {
    return dnnl::binary::primitive_desc(dnnl::binary::desc(dnnl::algorithm::binary_sub, rows, rows, rows),
                                        user_scratchpad_attr(), engine);
  });
  const Kernel& sum_squares = kernels_.get({Op::sum_squares, batch, per_sample}, [&] {
    return dnnl::reduction::primitive_desc(
        dnnl::reduction::desc(dnnl::algorithm::reduction_norm_lp_power_p_sum, rows, column, 2.f, 0.f),
        user_scratchpad_attr(), engine);
  });
  sub.run(stream, {{DNNL_ARG_SRC_0, pred_rows.memory()}, {DNNL_ARG_SRC_1, target_rows.memory()}, {DNNL_ARG_DST, b.diff}});
  sum_squares.run(stream, {{DNNL_ARG_SRC, b.diff}, {DNNL_ARG_DST, sums_device}});
  stream.wait();

  std::vector<float> weights(static_cast<size_t>(batch), 1.0f);
  if (params_.min_snr_gamma > 0)
    weights = steps_.min_snr_weights(params_.prediction, ts, static_cast<float>(params_.min_snr_gamma));
  const double count = static_cast<double>(batch) * static_cast<double>(per_sample);
  std::vector<double> sums(static_cast<size_t>(batch));
  {
    // One mapping of stats [2,N]: the sums out; the coefficients 2 w_i / (N*D) of the gradient in.
    HostMap<float> stats(b.stats);
    for (int64_t i = 0; i < batch; ++i) sums[i] = stats[i];
    for (int64_t i = 0; i < batch; ++i) stats[batch + i] = static_cast<float>(2.0 * weights[i] / count);
  }
  double weighted = 0;
  for (int64_t i = 0; i < batch; ++i) weighted += double(weights[i]) * sums[i];
  const double loss = weighted / count;

  last_step_ = std::max(last_step_, seq);
  if (!std::isfinite(loss)) {
    std::ostringstream value;
    value << loss;
    if (params_.on_nonfinite == OnNonfinite::stop) {
      throw NodeError(name(), seq, "the loss is " + value.str() +
                                       " (non-finite prediction or input; set on_nonfinite: skip to skip such steps)");
    }
    ctx().metrics().log(seq, name(), "nonfinite_loss", 1.0);
    ctx().info(name() + ": skipped training step " + std::to_string(seq) + ": loss " + value.str());
    out.emit(packet.with(fields::kLoss, loss)
                 .with(fields::kGradPrediction, Tensor::zeros(shape, DType::f32, device.engine())));
    return;
  }

  // grad = diff * (2 w_i / (N*D))                                  [N,D] x [N,1] -> [N,D]
  // grad owns its memory; grad_rows is a [N,D] view of it (Tensor::reshaped does not own).
  Tensor grad(shape, DType::f32, device.engine());
  const Tensor grad_rows = grad.reshaped(rows_shape);
  const Kernel& scale = kernels_.get({Op::scale, batch, per_sample}, [&] {
    return dnnl::binary::primitive_desc(dnnl::binary::desc(dnnl::algorithm::binary_mul, rows, column, rows),
                                        user_scratchpad_attr(), engine);
  });
  scale.run(stream, {{DNNL_ARG_SRC_0, b.diff}, {DNNL_ARG_SRC_1, coef_device}, {DNNL_ARG_DST, grad_rows.memory()}});
  stream.wait();

  ctx().metrics().log(seq, name(), "loss", loss);
  if (buckets_ > 0) {
    for (int64_t i = 0; i < batch; ++i) {
      const int b = bucket_of(ts[i], buckets_, schedule_->timesteps());
      bucket_sum_[b] += sums[i] / static_cast<double>(per_sample);
      ++bucket_count_[b];
    }
    if (++since_report_ >= params_.log_every) log_buckets(seq);
  }
  out.emit(packet.with(fields::kLoss, loss).with(fields::kGradPrediction, grad));
}

void DiffusionLoss::log_buckets(int64_t step) {
  const int buckets = buckets_;
  for (int b = 0; b < buckets; ++b) {
    if (bucket_count_[b] == 0) continue;
    const auto [lo, hi] = bucket_range(b, buckets, schedule_->timesteps());
    ctx().metrics().log(step, name(), "loss_t" + std::to_string(lo) + "_" + std::to_string(hi),
                        bucket_sum_[b] / static_cast<double>(bucket_count_[b]));
    bucket_sum_[b] = 0;
    bucket_count_[b] = 0;
  }
  since_report_ = 0;
}

void DiffusionLoss::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (since_report_ > 0 && last_step_ >= 0) log_buckets(last_step_);
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(diffusion_loss, diffuflow::DiffusionLoss);
