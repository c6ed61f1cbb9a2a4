#include "nodes/diffusion/diffusion_steps.hpp"

#include "graph/errors.hpp"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <climits>
#include <stdexcept>

namespace diffuflow {

using dnnl::algorithm;
using dnnl::memory;

namespace {

// The primitives see an [N, ...] tensor as [1, N, M] (the same plain memory) and
// the per-sample coefficients as [1, N, 1]: a per-channel broadcast, which
// oneDNN's jit binary kernels handle, where an [N,1,1,1] broadcast over the
// batch dimension would fall back to the slow reference kernel.
memory::desc flat_full(const Shape& shape) {
  const int64_t n = shape[0];
  return plain_f32({1, n, shape_numel(shape) / n});
}

memory::desc flat_rows(const Shape& shape) { return plain_f32({1, shape[0], 1}); }

constexpr double kTwoPi = 6.283185307179586476925286766559;

// A uniform double in (0, 1] from the top 53 bits (never 0, so log() is finite).
double uniform_open_zero(std::mt19937_64& rng) {
  return (static_cast<double>(rng() >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

}  // namespace

Tensor standard_normal(const Shape& shape, std::mt19937_64& rng, Device& device, float scale) {
  // Mapping is free on a CPU engine and an explicit host<->device transfer on a GPU.
  Tensor out(shape, DType::f32, device.engine());
  {
    auto values = out.map<float>();
    const size_t n = values.size();
    for (size_t i = 0; i < n; i += 2) {
      const double radius = scale * std::sqrt(-2.0 * std::log(uniform_open_zero(rng)));
      const double angle = kTwoPi * uniform_open_zero(rng);
      values[i] = static_cast<float>(radius * std::cos(angle));
      if (i + 1 < n) values[i + 1] = static_cast<float>(radius * std::sin(angle));
    }
  }
  return out;
}

Tensor standard_normal_per_image(const Shape& shape, const std::function<std::mt19937_64(int64_t)>& rng_of,
                                 Device& device) {
  Tensor out(shape, DType::f32, device.engine());
  {
    auto values = out.map<float>();
    const int64_t images = shape.at(0);
    const size_t per_image = images > 0 ? values.size() / static_cast<size_t>(images) : 0;
    float* data = values.data();
    // Each image its own stream: drawn on the graph's threads at once, the
    // same values as one after another.
    tbb::parallel_for(int64_t{0}, images, [&](int64_t k) {
      std::mt19937_64 rng = rng_of(k);
      float* image = data + static_cast<size_t>(k) * per_image;
      for (size_t i = 0; i < per_image; i += 2) {
        const double radius = std::sqrt(-2.0 * std::log(uniform_open_zero(rng)));
        const double angle = kTwoPi * uniform_open_zero(rng);
        image[i] = static_cast<float>(radius * std::cos(angle));
        if (i + 1 < per_image) image[i + 1] = static_cast<float>(radius * std::sin(angle));
      }
    });
  }
  return out;
}

PredictionTarget prediction_target(PredictionType type) {
  switch (type) {
    case PredictionType::epsilon: return PredictionTarget::epsilon;
    case PredictionType::v_prediction: return PredictionTarget::v;
    case PredictionType::sample: return PredictionTarget::x0;
  }
  throw std::logic_error("unknown prediction type");
}

PredictionType prediction_type(PredictionTarget target) {
  switch (target) {
    case PredictionTarget::epsilon: return PredictionType::epsilon;
    case PredictionTarget::v: return PredictionType::v_prediction;
    case PredictionTarget::x0: return PredictionType::sample;
  }
  throw std::logic_error("unknown prediction target");
}

Tensor timestep_tensor(const std::vector<int>& values) {
  Tensor t({static_cast<int64_t>(values.size())}, DType::s32, Device::host()->engine());
  auto host = t.map<int32_t>();
  std::copy(values.begin(), values.end(), host.begin());
  return t;
}

DiffusionSteps::DiffusionSteps(const NoiseSchedule& schedule, Device& device)
    : schedule_(schedule), device_(device), kernels_(device.engine()), column_copies_(device.engine()) {}

DiffusionSteps::~DiffusionSteps() = default;

dnnl::memory DiffusionSteps::Coefficients::row(size_t j) const {
  return flat_slice(values.memory(), static_cast<int64_t>(j) * shape[0], flat_rows(shape));
}

DiffusionSteps::Coefficients DiffusionSteps::coefficients(Pending& pending, const Shape& shape,
                                                          const std::vector<std::vector<float>>& rows) {
  const size_t n = static_cast<size_t>(shape.at(0));
  for (const auto& values : rows) {
    if (values.empty()) throw std::invalid_argument("DiffusionSteps: no per-sample coefficients");
    if (values.size() != n) throw std::logic_error("DiffusionSteps: a coefficient vector does not match the batch");
  }
  Tensor values({static_cast<int64_t>(rows.size()), static_cast<int64_t>(n)}, DType::f32, device_.engine());
  {
    auto host = values.map<float>();
    for (size_t j = 0; j < rows.size(); ++j) std::copy(rows[j].begin(), rows[j].end(), host.begin() + j * n);
  }
  return {pending.keep(values), shape};
}

memory DiffusionSteps::whole(const Tensor& x) { return view(x.memory(), flat_full(x.shape())); }

void DiffusionSteps::run(Op op, const Tensor& dst, const Tensor& src0, const memory& src1, const Tensor* addend,
                         float bound, const memory* upper) {
  const Shape& shape = dst.shape();
  const Kernel& kernel = kernels_.get({op, shape, bound}, [&]() -> dnnl::primitive_desc_base {
    const memory::desc full = flat_full(shape);
    dnnl::primitive_attr attr = user_scratchpad_attr();
    if (op == Op::clip || op == Op::abs) {
      const auto desc = op == Op::clip ? dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_inference,
                                                                     algorithm::eltwise_clip, full, -bound, bound)
                                       : dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_inference,
                                                                     algorithm::eltwise_abs, full);
      return dnnl::eltwise_forward::primitive_desc(desc, attr, device_.engine());
    }
    memory::desc operand = flat_rows(shape);
    algorithm alg = algorithm::binary_mul;
    dnnl::post_ops post_ops;
    switch (op) {
      case Op::mul_rows: alg = algorithm::binary_mul; break;
      case Op::mul_rows_add:
        alg = algorithm::binary_mul;
        post_ops.append_binary(algorithm::binary_add, full);
        break;
      case Op::div_rows: alg = algorithm::binary_div; break;
      case Op::div_rows_clip:
        alg = algorithm::binary_div;
        post_ops.append_eltwise(1.0f, algorithm::eltwise_clip, -bound, bound);
        break;
      case Op::sub:
        alg = algorithm::binary_sub;
        operand = full;
        break;
      case Op::add:
        alg = algorithm::binary_add;
        operand = full;
        break;
      case Op::clamp_rows_div:
        // max(x, lower row), then min with the upper row and a division by it.
        alg = algorithm::binary_max;
        post_ops.append_binary(algorithm::binary_min, flat_rows(shape));
        post_ops.append_binary(algorithm::binary_div, flat_rows(shape));
        break;
      case Op::clip:
      case Op::abs: break;
    }
    attr.set_post_ops(post_ops);
    return dnnl::binary::primitive_desc(dnnl::binary::desc(alg, full, operand, full), attr, device_.engine());
  });
  Args args{{DNNL_ARG_SRC_0, whole(src0)}, {DNNL_ARG_DST, whole(dst)}};
  if (op == Op::clip || op == Op::abs) {
    args = {{DNNL_ARG_SRC, whole(src0)}, {DNNL_ARG_DST, whole(dst)}};
  } else {
    args[DNNL_ARG_SRC_1] = src1;
  }
  if (op == Op::mul_rows_add) {
    if (!addend) throw std::logic_error("DiffusionSteps: a fused add needs its addend");
    args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = whole(*addend);
  }
  if (op == Op::clamp_rows_div) {
    if (!upper) throw std::logic_error("DiffusionSteps: a clamp needs its upper bounds");
    args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = *upper;
    args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(1) | DNNL_ARG_SRC_1] = *upper;
  }
  kernel.run(device_.stream(), std::move(args));
}

DiffusionSteps::Pending::~Pending() {
  if (tensors_.empty()) return;
  try {
    stream_.wait();
  } catch (...) {
    // Leaving on an error already: that error is the one to report.
  }
}

const Tensor& DiffusionSteps::Pending::keep(const Tensor& t) {
  tensors_.push_back(t);
  return t;
}

void DiffusionSteps::Pending::wait() {
  if (tensors_.empty()) return;
  stream_.wait();
  tensors_.clear();
}

Tensor DiffusionSteps::on_device(const Tensor& x) {
  Pending pending(device_.stream());
  Tensor out = queue_on_device(pending, x);
  pending.wait();
  return out;
}

Tensor DiffusionSteps::queue_on_device(Pending& pending, const Tensor& x) {
  if (x.empty()) throw std::invalid_argument("DiffusionSteps: an input tensor is empty");
  if (x.dtype() != DType::f32) {
    throw std::invalid_argument("DiffusionSteps: expected an f32 tensor, got " + dtype_name(x.dtype()) + " " +
                                shape_str(x.shape()));
  }
  const dnnl::engine& engine = device_.engine();
  const bool plain = x.desc() == plain_f32(x.shape());
  if (plain && x.engine() == engine) return x;
  const bool both_cpu =
      x.engine().get_kind() == dnnl::engine::kind::cpu && engine.get_kind() == dnnl::engine::kind::cpu;
  if (x.engine() != engine && !both_cpu) return x.copy_to(engine);  // host <-> device: an explicit transfer
  // Same engine but a blocked layout, or another CPU engine (host memory either
  // way): one reorder into plain memory, run on this device's stream. The view
  // of x is kept with the queued reorder.
  memory source = x.engine() == engine ? x.memory() : memory(x.desc(), engine, x.memory().get_data_handle());
  Tensor out(x.shape(), DType::f32, engine);
  memory target = out.memory();
  dnnl::reorder(source, target).execute(device_.stream(), source, target);
  pending.keep(Tensor(x.shape(), DType::f32, source));
  return pending.keep(out);
}

void DiffusionSteps::write_column(const Tensor& chain, int64_t k, const Tensor& x) {
  // chain [N, K, M] and x [N, 1, M], with M the element count of one image.
  const Tensor src = on_device(x);
  const Shape& shape = chain.shape();
  if (shape.size() < 2 || k < 0 || k >= shape[1] || src.numel() * shape[1] != chain.numel() || src.dim(0) != shape[0]) {
    throw std::invalid_argument("DiffusionSteps: cannot write " + shape_str(src.shape()) + " into column " +
                                std::to_string(k) + " of " + shape_str(shape));
  }
  const int64_t n = shape[0], columns = shape[1], m = src.numel() / n;
  const memory::desc chain_md = plain_f32({n, columns, m});
  const memory::desc column_md = chain_md.submemory_desc({n, 1, m}, {0, k, 0});
  const memory::desc src_md = plain_f32({n, 1, m});
  const Kernel& copy = column_copies_.get({shape, k}, [&] {
    return dnnl::reorder::primitive_desc(device_.engine(), src_md, device_.engine(), column_md,
                                         user_scratchpad_attr());
  });
  copy.run(device_.stream(), {{DNNL_ARG_FROM, view(src.memory(), src_md)}, {DNNL_ARG_TO, view(chain.memory(), column_md)}});
}

std::vector<int> DiffusionSteps::read_timesteps(const Tensor& t, bool allow_negative) const {
  if (t.empty() || t.rank() != 1) {
    throw std::invalid_argument("timesteps must be a [N] tensor, got " + (t.empty() ? "none" : shape_str(t.shape())));
  }
  std::vector<int> values(static_cast<size_t>(t.dim(0)));
  if (t.dtype() == DType::s32) {
    auto host = t.map<int32_t>();
    for (size_t i = 0; i < values.size(); ++i) values[i] = host[i];
  } else if (t.dtype() == DType::s64) {
    auto host = t.map<int64_t>();
    for (size_t i = 0; i < values.size(); ++i) {
      if (host[i] < INT32_MIN || host[i] > INT32_MAX) schedule_.check_timestep(host[i]);
      values[i] = static_cast<int>(host[i]);
    }
  } else {
    throw std::invalid_argument("timesteps must be s32 or s64, got " + dtype_name(t.dtype()));
  }
  for (int v : values) {
    if (allow_negative && v < 0) continue;
    schedule_.check_timestep(v);
  }
  return values;
}

void DiffusionSteps::check_batch(const Tensor& x, size_t batch, const char* what) const {
  if (x.rank() < 1 || x.dim(0) != static_cast<int64_t>(batch)) {
    throw std::invalid_argument(std::string("DiffusionSteps: ") + what + " has shape " + shape_str(x.shape()) +
                                " but there are " + std::to_string(batch) + " timesteps");
  }
}

void DiffusionSteps::check_same_shape(const Tensor& x, const Tensor& y) const {
  if (x.shape() != y.shape()) {
    throw std::invalid_argument("DiffusionSteps: shapes " + shape_str(x.shape()) + " and " + shape_str(y.shape()) +
                                " differ");
  }
}

Tensor DiffusionSteps::queue_mul_rows(Pending& pending, const Tensor& x, const memory& c) {
  Tensor out(x.shape(), DType::f32, device_.engine());
  run(Op::mul_rows, out, x, c);
  pending.keep(out);
  return out;
}

Tensor DiffusionSteps::queue_add(Pending& pending, const Tensor& a, const Tensor& b) {
  Tensor out(a.shape(), DType::f32, device_.engine());
  run(Op::add, out, a, whole(b));
  pending.keep(out);
  return out;
}

Tensor DiffusionSteps::queue_combine(Pending& pending, const memory& a, const Tensor& x, const memory& b,
                                     const Tensor& y) {
  // [N,...]: scaled_y = b * y; out = a * x + scaled_y (binary mul with a fused add).
  const Tensor scaled_y = queue_mul_rows(pending, y, b);
  Tensor out(x.shape(), DType::f32, device_.engine());
  run(Op::mul_rows_add, out, x, a, &scaled_y);
  pending.keep(out);
  return out;
}

Tensor DiffusionSteps::queue_sub_scaled_div(Pending& pending, const Tensor& x, const memory& c1,
                                            const Tensor& y, const memory& c2, float bound) {
  // [N,...]: scaled = c1 * y; diff = x - scaled; out = clip(diff / c2).
  const Tensor scaled = queue_mul_rows(pending, y, c1);
  Tensor diff(x.shape(), DType::f32, device_.engine());
  run(Op::sub, diff, x, whole(scaled));
  Tensor out(x.shape(), DType::f32, device_.engine());
  run(bound > 0.0f ? Op::div_rows_clip : Op::div_rows, out, diff, c2, nullptr, bound);
  pending.keep(diff);
  pending.keep(out);
  return out;
}

Tensor DiffusionSteps::queue_eltwise(Pending& pending, Op op, const Tensor& x, float bound) {
  Tensor out(x.shape(), DType::f32, device_.engine());
  run(op, out, x, memory(), nullptr, bound);
  return pending.keep(out);
}

Tensor DiffusionSteps::combine(const std::vector<float>& a, const Tensor& x, const std::vector<float>& b,
                               const Tensor& y) {
  Pending pending(device_.stream());
  const Tensor xs = queue_on_device(pending, x);
  const Tensor ys = queue_on_device(pending, y);
  if (xs.shape() != ys.shape()) {
    throw std::invalid_argument("DiffusionSteps: cannot combine " + shape_str(xs.shape()) + " with " +
                                shape_str(ys.shape()));
  }
  check_batch(xs, a.size(), "x");
  check_batch(ys, b.size(), "y");
  const Coefficients c = coefficients(pending, xs.shape(), {a, b});
  Tensor out = queue_combine(pending, c.row(0), xs, c.row(1), ys);
  pending.wait();
  return out;
}

Tensor DiffusionSteps::scale_add(const std::vector<float>& a, const Tensor& x, const Tensor& addend) {
  Pending pending(device_.stream());
  const Tensor xs = queue_on_device(pending, x);
  const Tensor add_to = queue_on_device(pending, addend);
  if (xs.shape() != add_to.shape()) {
    throw std::invalid_argument("DiffusionSteps: cannot add " + shape_str(add_to.shape()) + " to " +
                                shape_str(xs.shape()));
  }
  check_batch(xs, a.size(), "x");
  const Coefficients c = coefficients(pending, xs.shape(), {a});
  Tensor out(xs.shape(), DType::f32, device_.engine());
  run(Op::mul_rows_add, pending.keep(out), xs, c.row(0), &add_to);
  pending.wait();
  return out;
}

Tensor DiffusionSteps::q_sample(const Tensor& x0, const Tensor& eps, const Tensor& t) {
  const std::vector<int> steps = read_timesteps(t);
  std::vector<float> a(steps.size()), b(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    a[i] = schedule_.sqrt_alpha_bar(steps[i]);
    b[i] = schedule_.sqrt_one_minus_alpha_bar(steps[i]);
  }
  return combine(a, x0, b, eps);
}

Tensor DiffusionSteps::predict_x0(const Tensor& x_t, const Tensor& eps, const Tensor& t, bool clip) {
  const std::vector<int> steps = read_timesteps(t);
  std::vector<float> c1(steps.size()), c2(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    c1[i] = schedule_.sqrt_one_minus_alpha_bar(steps[i]);
    c2[i] = schedule_.sqrt_alpha_bar(steps[i]);
  }
  return sub_scaled_div(x_t, c1, eps, c2, clip);
}

Tensor DiffusionSteps::sub_scaled_div(const Tensor& x, const std::vector<float>& c1, const Tensor& y,
                                      const std::vector<float>& c2, bool clip) {
  Pending pending(device_.stream());
  const Tensor xs = queue_on_device(pending, x);
  const Tensor ys = queue_on_device(pending, y);
  check_same_shape(xs, ys);
  check_batch(xs, c1.size(), "x_t");
  const Coefficients c = coefficients(pending, xs.shape(), {c1, c2});
  Tensor out = queue_sub_scaled_div(pending, xs, c.row(0), ys, c.row(1), clip ? 1.0f : 0.0f);
  pending.wait();
  return out;
}

// The per-sample coefficients of one reverse step, computed on the host in
// float32 in diffusers' order. With x the sample and m the model output:
//   x0 = (x - x0_a m) / x0_b  (epsilon),  x0_a x + x0_b m  (v_prediction),  m  (sample);
//   then clipped to [-clip, clip] or thresholded;
//   eps (DDIM only) = m,  eps_a m + eps_b x  (v),  (x - eps_a m) / eps_b  (sample);
//   prev = mean_a x0 + mean_b (x for DDPM, eps for DDIM) + sigma z.
struct DiffusionSteps::ReverseCoefficients {
  std::vector<float> x0_a, x0_b, eps_a, eps_b, mean_a, mean_b, sigma;
  bool ddim = false;       // mean_b multiplies eps (DDIM) rather than x (DDPM)
  bool add_noise = false;  // sigma z is added (DDPM: some t > 0; DDIM: eta > 0)

  explicit ReverseCoefficients(size_t n)
      : x0_a(n), x0_b(n), eps_a(n), eps_b(n), mean_a(n), mean_b(n), sigma(n) {}

  // x0 and eps coefficients of sample i for abar_t.
  void set_prediction(size_t i, PredictionType type, float ab_t) {
    const float sqrt_ab = std::sqrt(ab_t), sqrt_bp = std::sqrt(1.0f - ab_t);
    switch (type) {
      case PredictionType::epsilon: x0_a[i] = sqrt_bp, x0_b[i] = sqrt_ab; break;
      case PredictionType::v_prediction:
        x0_a[i] = sqrt_ab, x0_b[i] = -sqrt_bp;
        eps_a[i] = sqrt_ab, eps_b[i] = sqrt_bp;
        break;
      case PredictionType::sample: eps_a[i] = sqrt_ab, eps_b[i] = sqrt_bp; break;
    }
  }
};

DiffusionSteps::StepResult DiffusionSteps::ddpm_step(const Tensor& sample, const Tensor& model_output,
                                                     const Tensor& z, const std::vector<int>& t,
                                                     const std::vector<int>& t_prev, const SchedulerConfig& config) {
  if (t.size() != t_prev.size()) {
    throw std::invalid_argument("ddpm_step: " + std::to_string(t.size()) + " timesteps but " +
                                std::to_string(t_prev.size()) + " previous timesteps");
  }
  ReverseCoefficients c(t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    schedule_.check_timestep(t[i]);
    if (t_prev[i] >= t[i] || t_prev[i] < -1) {
      throw std::invalid_argument("ddpm_step: the previous timestep (" + std::to_string(t_prev[i]) +
                                  ") must be in [-1, " + std::to_string(t[i]) + ")");
    }
    c.set_prediction(i, config.prediction_type, schedule_.alpha_bar(t[i]));
    const NoiseSchedule::Posterior p = schedule_.posterior(t[i], t_prev[i]);
    c.mean_a[i] = p.coef_x0;
    c.mean_b[i] = p.coef_xt;
    // diffusers adds noise wherever t > 0, also on a last step to t_prev = -1.
    const float variance = config.variance_type == VarianceType::fixed_large ? p.beta : p.variance;
    c.sigma[i] = t[i] > 0 ? std::sqrt(variance) : 0.0f;
    c.add_noise = c.add_noise || t[i] > 0;
  }
  return reverse_step("ddpm_step: noise z is needed where t > 0", sample, model_output, z, c, config);
}

DiffusionSteps::StepResult DiffusionSteps::ddim_step(const Tensor& sample, const Tensor& model_output,
                                                     const std::vector<int>& t, const std::vector<int>& t_prev,
                                                     float eta, const Tensor& z, const SchedulerConfig& config) {
  if (!(eta >= 0.0f && eta <= 1.0f)) throw std::invalid_argument("ddim_step: eta must be in [0, 1]");
  if (t.size() != t_prev.size()) {
    throw std::invalid_argument("ddim_step: t has " + std::to_string(t.size()) + " values but t_prev has " +
                                std::to_string(t_prev.size()));
  }
  ReverseCoefficients c(t.size());
  c.ddim = true;
  c.add_noise = eta > 0.0f;
  const float final_alpha_bar = config.set_alpha_to_one ? 1.0f : schedule_.alpha_bar(0);
  for (size_t i = 0; i < t.size(); ++i) {
    schedule_.check_timestep(t[i]);
    if (t_prev[i] >= t[i]) {
      throw std::invalid_argument("ddim_step: t_prev (" + std::to_string(t_prev[i]) + ") must be below t (" +
                                  std::to_string(t[i]) + ")");
    }
    const float ab_t = schedule_.alpha_bar(t[i]);
    const float ab_prev = t_prev[i] >= 0 ? schedule_.alpha_bar(t_prev[i]) : final_alpha_bar;
    c.set_prediction(i, config.prediction_type, ab_t);
    const float beta_prod_t = 1.0f - ab_t;
    const float beta_prod_prev = 1.0f - ab_prev;
    const float variance = (beta_prod_prev / beta_prod_t) * (1.0f - ab_t / ab_prev);
    const float std_dev = eta * std::sqrt(variance);
    c.mean_a[i] = std::sqrt(ab_prev);
    c.mean_b[i] = std::sqrt(1.0f - ab_prev - std_dev * std_dev);
    c.sigma[i] = std_dev;
  }
  return reverse_step("ddim_step: noise z is needed when eta > 0", sample, model_output, z, c, config);
}

DiffusionSteps::StepResult DiffusionSteps::reverse_step(const char* missing_noise, const Tensor& sample,
                                                        const Tensor& model_output, const Tensor& z,
                                                        const ReverseCoefficients& rc, const SchedulerConfig& config) {
  const size_t n = rc.sigma.size();
  Pending pending(device_.stream());
  const Tensor xs = queue_on_device(pending, sample);
  const Tensor ms = queue_on_device(pending, model_output);
  check_same_shape(xs, ms);
  check_batch(xs, n, "the sample");
  Tensor zs;
  if (rc.add_noise) {
    if (z.empty()) throw std::invalid_argument(missing_noise);
    zs = queue_on_device(pending, z);
    check_same_shape(xs, zs);
  }
  const Coefficients c =
      coefficients(pending, xs.shape(), {rc.x0_a, rc.x0_b, rc.eps_a, rc.eps_b, rc.mean_a, rc.mean_b, rc.sigma});
  enum Row { x0_a, x0_b, eps_a, eps_b, mean_a, mean_b, sigma };
  const PredictionType type = config.prediction_type;
  // Clipping fuses into the division of an epsilon prediction; otherwise it is its own primitive.
  const float bound = config.clip_sample && !config.thresholding ? static_cast<float>(config.clip_sample_range) : 0.0f;
  const bool fused_clip = type == PredictionType::epsilon && bound > 0.0f;

  // The predicted x_0 [N,...].
  Tensor x0;
  switch (type) {
    case PredictionType::epsilon:
      x0 = queue_sub_scaled_div(pending, xs, c.row(x0_a), ms, c.row(x0_b), bound);
      break;
    case PredictionType::v_prediction: x0 = queue_combine(pending, c.row(x0_a), xs, c.row(x0_b), ms); break;
    case PredictionType::sample: x0 = ms; break;
  }
  // The predicted noise [N,...] (DDIM), from the x_0 before clipping.
  Tensor eps;
  if (rc.ddim) {
    switch (type) {
      case PredictionType::epsilon: eps = ms; break;
      case PredictionType::v_prediction: eps = queue_combine(pending, c.row(eps_a), ms, c.row(eps_b), xs); break;
      case PredictionType::sample:
        eps = queue_sub_scaled_div(pending, xs, c.row(eps_a), ms, c.row(eps_b));
        break;
    }
  }
  if (config.thresholding) {
    x0 = queue_threshold(pending, x0, config.dynamic_thresholding_ratio, config.sample_max_value);
  } else if (bound > 0.0f && !fused_clip) {
    x0 = queue_eltwise(pending, Op::clip, x0, bound);
  }
  // prev = mean_a x0 + mean_b (x or eps)  (diffusers' order: both products, then the sum)
  Tensor prev = queue_combine(pending, c.row(mean_a), x0, c.row(mean_b), rc.ddim ? eps : xs);
  if (rc.add_noise) prev = queue_add(pending, prev, queue_mul_rows(pending, zs, c.row(sigma)));
  pending.wait();
  return {prev, x0};
}

Tensor DiffusionSteps::threshold(const Tensor& x0, double ratio, double max_value) {
  Pending pending(device_.stream());
  const Tensor xs = queue_on_device(pending, x0);
  Tensor out = queue_threshold(pending, xs, ratio, max_value);
  pending.wait();
  return out;
}

Tensor DiffusionSteps::queue_threshold(Pending& pending, const Tensor& x0, double ratio, double max_value) {
  if (!(ratio >= 0.0 && ratio <= 1.0)) throw std::invalid_argument("threshold: the quantile must be in [0, 1]");
  const Shape& shape = x0.shape();
  const size_t n = static_cast<size_t>(shape.at(0));
  const int64_t m = x0.numel() / shape[0];
  // |x0| [N,...] on the device; the host then needs it: the one wait inside an operation.
  const Tensor magnitudes = queue_eltwise(pending, Op::abs, x0);
  device_.stream().wait();
  // torch.quantile, linear: rank = q (m - 1) in float32; the values at floor and
  // ceil of the rank, interpolated as torch.lerp does.
  const float rank = static_cast<float>(ratio) * static_cast<float>(m - 1);
  const int64_t below = static_cast<int64_t>(rank);
  const int64_t above = static_cast<int64_t>(std::ceil(rank));
  const float weight = rank - static_cast<float>(below);
  std::vector<float> lower(n), upper(n);
  {
    const auto host = magnitudes.map<float>();
    std::vector<float> values(static_cast<size_t>(m));
    for (size_t i = 0; i < n; ++i) {
      std::copy(host.begin() + i * m, host.begin() + (i + 1) * m, values.begin());
      std::nth_element(values.begin(), values.begin() + above, values.end());
      const float hi = values[static_cast<size_t>(above)];
      std::nth_element(values.begin(), values.begin() + below, values.begin() + above + 1);
      const float lo = values[static_cast<size_t>(below)];
      const float q = weight < 0.5f ? lo + weight * (hi - lo) : hi - (hi - lo) * (1.0f - weight);
      // torch.clamp(s, min=1, max=sample_max_value)
      const float s = std::min(std::max(q, 1.0f), static_cast<float>(max_value));
      lower[i] = -s;
      upper[i] = s;
    }
  }
  const Coefficients c = coefficients(pending, shape, {lower, upper});
  const memory upper_row = c.row(1);
  Tensor out(shape, DType::f32, device_.engine());
  run(Op::clamp_rows_div, out, x0, c.row(0), nullptr, 0.0f, &upper_row);
  return pending.keep(out);
}

Tensor DiffusionSteps::ddpm_step(const Tensor& x_t, const Tensor& eps_pred, const Tensor& z, const Tensor& t,
                                 bool clip) {
  const std::vector<int> steps = read_timesteps(t);
  std::vector<int> prev(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) prev[i] = steps[i] - 1;
  SchedulerConfig config;
  config.clip_sample = clip;
  return ddpm_step(x_t, eps_pred, z, steps, prev, config).prev_sample;
}

Tensor DiffusionSteps::ddim_step(const Tensor& x_t, const Tensor& eps_pred, const Tensor& t, const Tensor& t_prev,
                                 float eta, const Tensor& z, bool clip) {
  if (!(eta >= 0.0f && eta <= 1.0f)) throw std::invalid_argument("ddim_step: eta must be in [0, 1]");
  const std::vector<int> steps = read_timesteps(t);
  const std::vector<int> prev = read_timesteps(t_prev, true);
  SchedulerConfig config;
  config.clip_sample = clip;
  return ddim_step(x_t, eps_pred, steps, prev, eta, z, config).prev_sample;
}

std::vector<int> DiffusionSteps::ddim_timesteps(int timesteps, int steps) {
  if (steps < 1 || steps > timesteps) {
    throw ConfigError(SourceLocation{}, "DDIM steps must be in [1, " + std::to_string(timesteps) + "], got " +
                                            std::to_string(steps));
  }
  const int ratio = timesteps / steps;
  std::vector<int> out;
  out.reserve(static_cast<size_t>(steps));
  for (int k = steps - 1; k >= 0; --k) out.push_back(k * ratio);
  return out;
}

Tensor DiffusionSteps::training_target(PredictionTarget target, const Tensor& x0, const Tensor& eps,
                                       const Tensor& t) {
  switch (target) {
    case PredictionTarget::epsilon: return on_device(eps);
    case PredictionTarget::x0: return on_device(x0);
    case PredictionTarget::v: {
      // diffusers get_velocity: sqrt(abar) eps - sqrt(1 - abar) x0
      const std::vector<int> steps = read_timesteps(t);
      std::vector<float> a(steps.size()), b(steps.size());
      for (size_t i = 0; i < steps.size(); ++i) {
        a[i] = schedule_.sqrt_alpha_bar(steps[i]);
        b[i] = -schedule_.sqrt_one_minus_alpha_bar(steps[i]);
      }
      return combine(a, eps, b, x0);
    }
  }
  throw std::logic_error("unknown prediction target");
}

Tensor DiffusionSteps::epsilon_from(PredictionTarget target, const Tensor& x_t, const Tensor& prediction,
                                    const Tensor& t) {
  switch (target) {
    case PredictionTarget::epsilon: return on_device(prediction);
    case PredictionTarget::v: {
      const std::vector<int> steps = read_timesteps(t);
      std::vector<float> a(steps.size()), b(steps.size());
      for (size_t i = 0; i < steps.size(); ++i) {
        a[i] = schedule_.sqrt_alpha_bar(steps[i]);
        b[i] = schedule_.sqrt_one_minus_alpha_bar(steps[i]);
      }
      return combine(a, prediction, b, x_t);
    }
    case PredictionTarget::x0: {
      const std::vector<int> steps = read_timesteps(t);
      std::vector<float> c1(steps.size()), c2(steps.size());
      for (size_t i = 0; i < steps.size(); ++i) {
        c1[i] = schedule_.sqrt_alpha_bar(steps[i]);
        c2[i] = schedule_.sqrt_one_minus_alpha_bar(steps[i]);
      }
      return sub_scaled_div(x_t, c1, prediction, c2, false);
    }
  }
  throw std::logic_error("unknown prediction target");
}

std::vector<float> DiffusionSteps::min_snr_weights(PredictionTarget target, const Tensor& t, float gamma) const {
  if (!(gamma > 0.0f)) throw std::invalid_argument("min-SNR gamma must be positive");
  return min_snr_weights(target, read_timesteps(t), gamma);
}

std::vector<float> DiffusionSteps::min_snr_weights(PredictionTarget target, const std::vector<int>& steps,
                                                   float gamma) const {
  if (!(gamma > 0.0f)) throw std::invalid_argument("min-SNR gamma must be positive");
  std::vector<float> weights(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const float snr = schedule_.snr(steps[i]);
    const float clipped = std::min(snr, gamma);
    switch (target) {
      case PredictionTarget::epsilon: weights[i] = clipped / snr; break;
      case PredictionTarget::v: weights[i] = clipped / (snr + 1.0f); break;
      case PredictionTarget::x0: weights[i] = clipped; break;
    }
  }
  return weights;
}

}  // namespace diffuflow
