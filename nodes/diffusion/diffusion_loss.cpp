#include "nodes/diffusion/diffusion_loss.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "compute/program.hpp"
#include "nodes/common/fields.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace diffuflow {

// The primitives for one (N, D = C*H*W), with their buffers:
//   diff [N,D] = prediction - target;  sums [N,1] = sum_d diff^2;  grad [N,D] = diff * coef [N,1]
struct DiffusionLoss::Kernel {
  dnnl::primitive sub, sum_squares, scale;
  dnnl::memory diff, sums, coef, scratchpad;

  Kernel(const dnnl::engine& engine, int64_t batch, int64_t per_sample) {
    const auto rows = plain_f32({batch, per_sample});
    const auto column = plain_f32({batch, 1});
    const auto attr = user_scratchpad_attr();
    dnnl::binary::primitive_desc sub_pd(dnnl::binary::desc(dnnl::algorithm::binary_sub, rows, rows, rows), attr,
                                        engine);
    dnnl::reduction::primitive_desc sum_pd(
        dnnl::reduction::desc(dnnl::algorithm::reduction_norm_lp_power_p_sum, rows, column, 2.f, 0.f), attr, engine);
    dnnl::binary::primitive_desc mul_pd(dnnl::binary::desc(dnnl::algorithm::binary_mul, rows, column, rows), attr,
                                        engine);
    sub = dnnl::binary(sub_pd);
    sum_squares = dnnl::reduction(sum_pd);
    scale = dnnl::binary(mul_pd);
    diff = dnnl::memory(rows, engine);
    sums = dnnl::memory(column, engine);
    coef = dnnl::memory(column, engine);
    const size_t scratch = std::max({sub_pd.scratchpad_desc().get_size(), sum_pd.scratchpad_desc().get_size(),
                                     mul_pd.scratchpad_desc().get_size(), size_t{1}});
    scratchpad = dnnl::memory(
        dnnl::memory::desc({static_cast<int64_t>(scratch)}, dnnl::memory::data_type::u8, tag::a), engine);
  }
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
      steps_(*schedule_, ctx.device()) {
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

DiffusionLoss::Kernel& DiffusionLoss::kernel(int64_t batch, int64_t per_sample) {
  auto& slot = kernels_[{batch, per_sample}];
  if (!slot) slot = std::make_unique<Kernel>(ctx().device().engine(), batch, per_sample);
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
  Kernel& k = kernel(batch, per_sample);
  const Shape rows{batch, per_sample};
  const Tensor pred_rows = prediction.reshaped(rows);
  const Tensor target_rows = target.reshaped(rows);

  // diff = prediction - target;  sums_i = sum_d diff_id^2          [N,D] -> [N,1]
  k.sub.execute(stream, {{DNNL_ARG_SRC_0, pred_rows.memory()},
                         {DNNL_ARG_SRC_1, target_rows.memory()},
                         {DNNL_ARG_DST, k.diff},
                         {DNNL_ARG_SCRATCHPAD, k.scratchpad}});
  k.sum_squares.execute(stream, {{DNNL_ARG_SRC, k.diff}, {DNNL_ARG_DST, k.sums}, {DNNL_ARG_SCRATCHPAD, k.scratchpad}});
  stream.wait();
  std::vector<double> sums(static_cast<size_t>(batch));
  {
    auto* host = static_cast<float*>(k.sums.map_data());
    for (int64_t i = 0; i < batch; ++i) sums[i] = host[i];
    k.sums.unmap_data(host);
  }
  std::vector<float> weights(static_cast<size_t>(batch), 1.0f);
  if (params_.min_snr_gamma > 0)
    weights = steps_.min_snr_weights(params_.prediction, t, static_cast<float>(params_.min_snr_gamma));
  const double count = static_cast<double>(batch) * static_cast<double>(per_sample);
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
  {
    auto* host = static_cast<float*>(k.coef.map_data());
    for (int64_t i = 0; i < batch; ++i) host[i] = static_cast<float>(2.0 * weights[i] / count);
    k.coef.unmap_data(host);
  }
  // grad owns its memory; grad_rows is a [N,D] view of it (Tensor::reshaped does not own).
  Tensor grad(shape, DType::f32, device.engine());
  const Tensor grad_rows = grad.reshaped(rows);
  k.scale.execute(stream, {{DNNL_ARG_SRC_0, k.diff},
                           {DNNL_ARG_SRC_1, k.coef},
                           {DNNL_ARG_DST, grad_rows.memory()},
                           {DNNL_ARG_SCRATCHPAD, k.scratchpad}});
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
