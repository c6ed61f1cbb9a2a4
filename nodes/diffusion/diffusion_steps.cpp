#include "nodes/diffusion/diffusion_steps.hpp"

#include "graph/errors.hpp"

#include <algorithm>
#include <cmath>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <unordered_map>

namespace diffuflow {

using dnnl::algorithm;
using dnnl::memory;

namespace {

memory::desc plain_f32(const Shape& shape) {
  return memory::desc(shape, memory::data_type::f32, plain_format(shape.size()));
}

// The primitives see an [N, ...] tensor as [1, N, M] (the same plain memory) and
// the per-sample coefficients as [1, N, 1]: a per-channel broadcast, which
// oneDNN's jit binary kernels handle, where an [N,1,1,1] broadcast over the
// batch dimension would fall back to the slow reference kernel.
memory::desc flat_full(const Shape& shape) {
  const int64_t n = shape[0];
  return memory::desc({1, n, shape_numel(shape) / n}, memory::data_type::f32, memory::format_tag::abc);
}

memory::desc flat_rows(const Shape& shape) {
  return memory::desc({1, shape[0], 1}, memory::data_type::f32, memory::format_tag::abc);
}

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

// One oneDNN primitive for one (operation, shape), with its scratchpad size.
struct DiffusionSteps::Kernel {
  dnnl::primitive primitive;
  memory::desc src0, src1, dst;  // the [1, N, M] / [1, N, 1] views
  memory::desc scratchpad;
  bool has_addend = false;
};

DiffusionSteps::DiffusionSteps(const NoiseSchedule& schedule, Device& device) : schedule_(schedule), device_(device) {}

DiffusionSteps::~DiffusionSteps() = default;

DiffusionSteps::Kernel& DiffusionSteps::kernel(Op op, const Shape& shape) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto key = std::make_tuple(op, shape);
  auto it = kernels_.find(key);
  if (it != kernels_.end()) return *it->second;

  const memory::desc full = flat_full(shape);
  const memory::desc rows = flat_rows(shape);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::post_ops post_ops;
  algorithm alg = algorithm::binary_mul;
  memory::desc src1 = rows;
  auto kernel = std::make_unique<Kernel>();
  switch (op) {
    case Op::mul_rows: alg = algorithm::binary_mul; break;
    case Op::mul_rows_add:
      alg = algorithm::binary_mul;
      post_ops.append_binary(algorithm::binary_add, full);
      kernel->has_addend = true;
      break;
    case Op::div_rows: alg = algorithm::binary_div; break;
    case Op::div_rows_clip:
      alg = algorithm::binary_div;
      post_ops.append_eltwise(1.0f, algorithm::eltwise_clip, -1.0f, 1.0f);
      break;
    case Op::sub:
      alg = algorithm::binary_sub;
      src1 = full;
      break;
    case Op::add:
      alg = algorithm::binary_add;
      src1 = full;
      break;
  }
  attr.set_post_ops(post_ops);
  dnnl::binary::desc desc(alg, full, src1, full);
  dnnl::binary::primitive_desc pd(desc, attr, device_.engine());
  kernel->primitive = dnnl::binary(pd);
  kernel->src0 = full;
  kernel->src1 = src1;
  kernel->dst = full;
  kernel->scratchpad = pd.scratchpad_desc();
  auto& stored = kernels_[key];
  stored = std::move(kernel);
  return *stored;
}

void DiffusionSteps::run(Kernel& kernel, const Tensor& dst, const Tensor& src0, const Tensor& src1,
                         const Tensor* addend) {
  // Views of the plain tensors with the kernel's flattened descriptors (no copies).
  const dnnl::engine& engine = device_.engine();
  auto view = [&](const Tensor& t, const memory::desc& md) { return memory(md, engine, t.memory().get_data_handle()); };
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC_0, view(src0, kernel.src0)},
                                          {DNNL_ARG_SRC_1, view(src1, kernel.src1)},
                                          {DNNL_ARG_DST, view(dst, kernel.dst)}};
  if (kernel.has_addend) {
    if (!addend) throw std::logic_error("DiffusionSteps: a fused add needs its addend");
    args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = view(*addend, kernel.dst);
  }
  // Elementwise binaries need no scratchpad today; should one ever ask for it,
  // it gets memory of its own per call, so concurrent calls never share it.
  if (kernel.scratchpad.get_size() > 0) args[DNNL_ARG_SCRATCHPAD] = memory(kernel.scratchpad, device_.engine());
  kernel.primitive.execute(device_.stream(), args);
}

Tensor DiffusionSteps::on_device(const Tensor& x) {
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
  // of x lives only while the reorder runs.
  memory source = x.engine() == engine ? x.memory() : memory(x.desc(), engine, x.memory().get_data_handle());
  Tensor out(x.shape(), DType::f32, engine);
  memory target = out.memory();
  dnnl::reorder(source, target).execute(device_.stream(), source, target);
  device_.stream().wait();
  return out;
}

Tensor DiffusionSteps::row_coefficients(const std::vector<float>& values, size_t rank) {
  if (values.empty()) throw std::invalid_argument("DiffusionSteps: no per-sample coefficients");
  Shape shape(rank, 1);
  shape[0] = static_cast<int64_t>(values.size());
  Tensor coef(shape, DType::f32, device_.engine());
  auto host = coef.map<float>();
  std::memcpy(host.data(), values.data(), values.size() * sizeof(float));
  return coef;
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

Tensor DiffusionSteps::mul_rows(const Tensor& x, const std::vector<float>& c) {
  Tensor src = on_device(x);
  check_batch(src, c.size(), "a tensor");
  Tensor coef = row_coefficients(c, src.rank());
  Tensor out(src.shape(), DType::f32, device_.engine());
  run(kernel(Op::mul_rows, src.shape()), out, src, coef);
  device_.stream().wait();
  return out;
}

Tensor DiffusionSteps::add(const Tensor& a, const Tensor& b) {
  Tensor lhs = on_device(a);
  Tensor rhs = on_device(b);
  if (lhs.shape() != rhs.shape()) {
    throw std::invalid_argument("DiffusionSteps: cannot add " + shape_str(lhs.shape()) + " and " +
                                shape_str(rhs.shape()));
  }
  Tensor out(lhs.shape(), DType::f32, device_.engine());
  run(kernel(Op::add, lhs.shape()), out, lhs, rhs);
  device_.stream().wait();
  return out;
}

Tensor DiffusionSteps::combine(const std::vector<float>& a, const Tensor& x, const std::vector<float>& b,
                               const Tensor& y) {
  Tensor xs = on_device(x);
  Tensor ys = on_device(y);
  if (xs.shape() != ys.shape()) {
    throw std::invalid_argument("DiffusionSteps: cannot combine " + shape_str(xs.shape()) + " with " +
                                shape_str(ys.shape()));
  }
  check_batch(xs, a.size(), "x");
  check_batch(ys, b.size(), "y");
  const size_t rank = xs.rank();
  Tensor coef_a = row_coefficients(a, rank);
  Tensor coef_b = row_coefficients(b, rank);
  // [N,...]: scaled_y = b * y; out = a * x + scaled_y (binary mul with a fused add).
  Tensor scaled_y(ys.shape(), DType::f32, device_.engine());
  run(kernel(Op::mul_rows, ys.shape()), scaled_y, ys, coef_b);
  Tensor out(xs.shape(), DType::f32, device_.engine());
  run(kernel(Op::mul_rows_add, xs.shape()), out, xs, coef_a, &scaled_y);
  device_.stream().wait();
  return out;
}

Tensor DiffusionSteps::scale_add(const std::vector<float>& a, const Tensor& x, const Tensor& addend) {
  Tensor xs = on_device(x);
  Tensor add_to = on_device(addend);
  if (xs.shape() != add_to.shape()) {
    throw std::invalid_argument("DiffusionSteps: cannot add " + shape_str(add_to.shape()) + " to " +
                                shape_str(xs.shape()));
  }
  check_batch(xs, a.size(), "x");
  Tensor coef = row_coefficients(a, xs.rank());
  Tensor out(xs.shape(), DType::f32, device_.engine());
  run(kernel(Op::mul_rows_add, xs.shape()), out, xs, coef, &add_to);
  device_.stream().wait();
  return out;
}

Tensor DiffusionSteps::sub_scaled_div(const Tensor& x, const std::vector<float>& c1, const Tensor& y,
                                      const std::vector<float>& c2, bool clip) {
  Tensor xs = on_device(x);
  Tensor ys = on_device(y);
  if (xs.shape() != ys.shape()) {
    throw std::invalid_argument("DiffusionSteps: shapes " + shape_str(xs.shape()) + " and " + shape_str(ys.shape()) +
                                " differ");
  }
  check_batch(xs, c1.size(), "x_t");
  const Shape& shape = xs.shape();
  Tensor coef1 = row_coefficients(c1, shape.size());
  Tensor coef2 = row_coefficients(c2, shape.size());
  // [N,...]: scaled = c1 * y; diff = x - scaled; out = clip(diff / c2).
  Tensor scaled(shape, DType::f32, device_.engine());
  run(kernel(Op::mul_rows, shape), scaled, ys, coef1);
  Tensor diff(shape, DType::f32, device_.engine());
  run(kernel(Op::sub, shape), diff, xs, scaled);
  Tensor out(shape, DType::f32, device_.engine());
  run(kernel(clip ? Op::div_rows_clip : Op::div_rows, shape), out, diff, coef2);
  device_.stream().wait();
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

Tensor DiffusionSteps::ddpm_step(const Tensor& x_t, const Tensor& eps_pred, const Tensor& z, const Tensor& t,
                                 bool clip) {
  const std::vector<int> steps = read_timesteps(t);
  const size_t n = steps.size();
  std::vector<float> coef_x0(n), coef_xt(n), sigma(n);
  bool any_noise = false;
  for (size_t i = 0; i < n; ++i) {
    const NoiseSchedule::Posterior p = schedule_.posterior(steps[i]);
    coef_x0[i] = p.coef_x0;
    coef_xt[i] = p.coef_xt;
    sigma[i] = steps[i] > 0 ? std::sqrt(p.variance) : 0.0f;
    any_noise = any_noise || steps[i] > 0;
  }
  Tensor x0 = predict_x0(x_t, eps_pred, t, clip);
  // mean = coef_x0 x0 + coef_xt x_t  (diffusers' order: both products, then the sum)
  Tensor mean = combine(coef_x0, x0, coef_xt, x_t);
  if (!any_noise) return mean;
  if (z.empty()) throw std::invalid_argument("ddpm_step: noise z is needed where t > 0");
  return add(mean, mul_rows(z, sigma));
}

Tensor DiffusionSteps::ddim_step(const Tensor& x_t, const Tensor& eps_pred, const Tensor& t, const Tensor& t_prev,
                                 float eta, const Tensor& z, bool clip) {
  if (!(eta >= 0.0f && eta <= 1.0f)) throw std::invalid_argument("ddim_step: eta must be in [0, 1]");
  const std::vector<int> steps = read_timesteps(t);
  const std::vector<int> prev = read_timesteps(t_prev, true);
  if (prev.size() != steps.size()) {
    throw std::invalid_argument("ddim_step: t has " + std::to_string(steps.size()) + " values but t_prev has " +
                                std::to_string(prev.size()));
  }
  const size_t n = steps.size();
  std::vector<float> coef_x0(n), coef_eps(n), sigma(n);
  bool any_noise = false;
  for (size_t i = 0; i < n; ++i) {
    if (prev[i] >= steps[i]) {
      throw std::invalid_argument("ddim_step: t_prev (" + std::to_string(prev[i]) + ") must be below t (" +
                                  std::to_string(steps[i]) + ")");
    }
    const float ab_t = schedule_.alpha_bar(steps[i]);
    const float ab_prev = schedule_.alpha_bar_or_one(prev[i]);
    const float beta_prod_t = 1.0f - ab_t;
    const float beta_prod_prev = 1.0f - ab_prev;
    const float variance = (beta_prod_prev / beta_prod_t) * (1.0f - ab_t / ab_prev);
    const float std_dev = eta * std::sqrt(variance);
    coef_x0[i] = std::sqrt(ab_prev);
    coef_eps[i] = std::sqrt(1.0f - ab_prev - std_dev * std_dev);
    sigma[i] = std_dev;
    any_noise = any_noise || std_dev > 0.0f;
  }
  Tensor x0 = predict_x0(x_t, eps_pred, t, clip);
  Tensor out = combine(coef_x0, x0, coef_eps, eps_pred);
  if (!any_noise) return out;
  if (z.empty()) throw std::invalid_argument("ddim_step: noise z is needed when eta > 0");
  return add(out, mul_rows(z, sigma));
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
  const std::vector<int> steps = read_timesteps(t);
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
