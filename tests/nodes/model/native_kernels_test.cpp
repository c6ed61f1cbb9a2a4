// The native kernels (the CPU's own: group norm, few-channel convolutions)
// against the same layers built from oneDNN primitives (what other engines
// run), forward and backward, and the group norm against a double-precision
// reference where f32 sums would cancel.
#include "nodes/model/few_channel_conv_kernel.hpp"
#include "nodes/model/group_norm_kernel.hpp"
#include "nodes/model/layers.hpp"
#include "nodes/model/softmax_kernel.hpp"
#include "compute/program.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>
#include <type_traits>
#include <vector>

#include <omp.h>

using namespace diffuflow;

namespace {

struct Case {
  dims shape;
  int64_t groups;
  std::optional<Activation> act;  // none: plain group_norm
  bool shift;                     // shifted_group_norm_act (with act)
};

// Everything a pass computes, in plain layouts.
struct Results {
  std::vector<float> y, dx, dshift, dparams;
};

std::vector<float> to_plain(const dnnl::memory& m, const dims& shape, dnnl::stream& stream) {
  std::vector<float> out(static_cast<size_t>(shape_numel(Shape(shape.begin(), shape.end()))));
  dnnl::memory from = m, to(plain_f32(shape), m.get_engine(), out.data());
  dnnl::reorder(from, to).execute(stream, from, to);
  stream.wait();
  return out;
}

void from_plain(const std::vector<float>& values, const dnnl::memory& m, const dims& shape, dnnl::stream& stream) {
  dnnl::memory from(plain_f32(shape), m.get_engine(), const_cast<float*>(values.data())), to = m;
  dnnl::reorder(from, to).execute(stream, from, to);
  stream.wait();
}

Results run(const Case& c, bool native) {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const int64_t n = c.shape[0], channels = c.shape[1], count = 2 * channels;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.4f, 1.5f);
  auto draw = [&](size_t size) {
    std::vector<float> v(size);
    for (auto& e : v) e = normal(rng);
    return v;
  };
  const size_t elements = static_cast<size_t>(shape_numel(Shape(c.shape.begin(), c.shape.end())));
  const std::vector<float> x_values = draw(elements), shift_values = draw(static_cast<size_t>(n * channels)),
                           dy_values = draw(elements), param_values = draw(static_cast<size_t>(count));

  dnnl::memory params(plain_f32({count}), engine);
  std::copy(param_values.begin(), param_values.end(), static_cast<float*>(params.get_data_handle()));
  PrimitiveCache cache;
  Program p(engine, cache, params, count, /*training=*/true);
  p.set_native_kernels(native);
  REQUIRE(p.native_kernels() == native);
  // Channel counts that are multiples of 16 take nChw16c, others plain.
  const ValueId x = p.new_value(activation_desc(c.shape), true);
  const ValueId shift = p.new_value(plain_f32({n, channels}), true);
  p.pin(x);
  p.pin(shift);
  const ParamRef gamma{0, {channels}}, beta{channels, {channels}};
  const ValueId y = c.shift ? shifted_group_norm_act(p, x, shift, gamma, beta, c.groups, 1e-5f, *c.act)
                    : c.act ? group_norm_act(p, x, gamma, beta, c.groups, 1e-5f, *c.act)
                            : group_norm(p, x, gamma, beta, c.groups, 1e-5f);
  p.pin(y);
  p.finalize(y, true);
  from_plain(x_values, p.data(x), c.shape, stream);
  std::copy(shift_values.begin(), shift_values.end(), static_cast<float*>(p.data(shift).get_data_handle()));
  p.prepare(stream, 0);
  p.run_forward(stream);
  from_plain(dy_values, p.grad(y), c.shape, stream);
  p.run_backward(stream);
  stream.wait();

  Results r;
  r.y = to_plain(p.data(y), c.shape, stream);
  r.dx = to_plain(p.grad(x), c.shape, stream);
  if (c.shift) r.dshift = to_plain(p.grad(shift), {n, channels}, stream);
  const float* staging = static_cast<const float*>(p.grad_staging().get_data_handle());
  r.dparams.assign(staging, staging + count);
  return r;
}

// max |a - b| / max(1, |b|)
double worst(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double w = 0;
  for (size_t i = 0; i < a.size(); ++i)
    w = std::max(w, std::fabs(double(a[i]) - b[i]) / std::max(1.0, std::fabs(double(b[i]))));
  return w;
}

// The kernel's forward arguments (f32, no shift, no activation).
group_norm_kernel::Forward forward_args(const group_norm_kernel::Shape& shape, const void* x, void* y,
                                        const std::vector<float>& gamma, const std::vector<float>& beta,
                                        std::vector<float>& mean, std::vector<float>& rstd) {
  group_norm_kernel::Forward f;
  f.shape = shape;
  f.x = x;
  f.y = y;
  f.gamma = gamma.data();
  f.beta = beta.data();
  f.mean = mean.data();
  f.rstd = rstd.data();
  return f;
}

}  // namespace

TEST_CASE("native group norm matches the primitive-built one: outputs and every gradient") {
  const std::vector<Case> cases = {
      {{2, 6, 3, 3}, 3, std::nullopt, false},           // plain, 9 positions: a 16-lane tail
      {{2, 6, 3, 3}, 3, Activation::silu, false},
      {{3, 32, 5, 4}, 8, Activation::silu, false},      // nChw16c, groups of 4 within a block
      {{2, 48, 4, 4}, 4, std::nullopt, false},          // nChw16c, groups of 12 across blocks
      {{1, 32, 12, 12}, 4, Activation::silu, false},    // a batch of one: each block split in chunks
      {{2, 20, 7, 7}, 5, Activation::mish, false},      // plain; mish as its own step after the norm
      {{2, 6, 3, 3}, 3, Activation::silu, true},        // with a [N,C] shift
      {{2, 32, 6, 6}, 4, Activation::silu, true},
  };
  for (const Case& c : cases) {
    CAPTURE(c.shape[0]);
    CAPTURE(c.shape[1]);
    CAPTURE(c.shape[2]);
    CAPTURE(c.groups);
    CAPTURE(c.act.has_value());
    CAPTURE(c.shift);
    const Results native = run(c, true), primitives = run(c, false);
    CHECK(worst(native.y, primitives.y) < 2e-5);
    CHECK(worst(native.dx, primitives.dx) < 2e-5);
    CHECK(worst(native.dshift, primitives.dshift) < 5e-5);
    CHECK(worst(native.dparams, primitives.dparams) < 5e-5);
  }
}

TEST_CASE("native group norm: inputs far from zero keep their precision (the one-pass variance sums in double)") {
  // 300 + N(0, 1): in f32, mean(x^2) - mean(x)^2 would lose about 17 bits.
  using namespace group_norm_kernel;
  const int64_t n = 2, c = 4, spatial = 50, groups = 2, cg = c / groups;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n * c * spatial)), y(x.size());
  for (auto& v : x) v = 300.0f + normal(rng);
  const std::vector<float> gamma(c, 1.0f), beta(c, 0.0f);
  std::vector<float> mean(n * groups), rstd(n * groups);
  forward(forward_args({n, c, spatial, groups, Layout::plain}, x.data(), y.data(), gamma, beta, mean, rstd));
  double worst = 0;
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* group = x.data() + (s * c + g * cg) * spatial;
      const int64_t m = cg * spatial;
      double mu = 0, var = 0;
      for (int64_t i = 0; i < m; ++i) mu += group[i];
      mu /= static_cast<double>(m);
      for (int64_t i = 0; i < m; ++i) var += (group[i] - mu) * (group[i] - mu);
      var /= static_cast<double>(m);
      for (int64_t i = 0; i < m; ++i) {
        const double expected = (group[i] - mu) / std::sqrt(var + 1e-5);
        worst = std::max(worst, std::fabs(y[static_cast<size_t>(group - x.data() + i)] - expected));
      }
    }
  }
  MESSAGE("worst |y - reference| " << worst);
  CHECK(worst < 1e-4);
}

TEST_CASE("native group norm writes bf16 rounded to nearest even, NaN kept, and zeros in nChw16c padding") {
  using namespace group_norm_kernel;
  // 20 channels in nChw16c: two blocks, the second with 12 padding lanes.
  const int64_t n = 1, c = 20, spatial = 3, blocks = 2;
  std::vector<float> x(static_cast<size_t>(n * blocks * spatial * 16), 0.0f);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t s = 0; s < spatial; ++s)
      for (int64_t l = 0; l < 16; ++l)
        if (b * 16 + l < c) x[static_cast<size_t>((b * spatial + s) * 16 + l)] = static_cast<float>(s + l % 3);
  std::vector<float> y(x.size(), 7.0f), mean(1), rstd(1);
  const std::vector<float> gamma(c, 2.0f), beta(c, 0.5f);
  forward(forward_args({n, c, spatial, 1, Layout::blocked16}, x.data(), y.data(), gamma, beta, mean, rstd));
  for (int64_t s = 0; s < spatial; ++s)
    for (int64_t l = c - 16; l < 16; ++l) CHECK(y[static_cast<size_t>((spatial + s) * 16 + l)] == 0.0f);

  // bf16: every value is a * x + b with a = 1, b = 0 after normalising a
  // group of two values {-1, 1}; check the rounding of the store on values
  // whose f32 forms sit between two bf16 numbers.
  const uint16_t one = 0x3f80, minus_one = 0xbf80;
  std::vector<uint16_t> xb = {minus_one, one, minus_one, one}, yb(4);
  const float g1 = 1.0f + 1.0f / 256.0f;  // 1 + 2^-8: halfway between bf16 1 and 1 + 2^-7
  const std::vector<float> gamma_b = {g1, 1.0f}, beta_b = {0.0f, std::nanf("")};
  std::vector<float> mb(2), rb(2);
  Forward fb = forward_args({1, 2, 2, 2, Layout::plain}, xb.data(), yb.data(), gamma_b, beta_b, mb, rb);
  fb.eps = 0.0f;
  fb.type = DataType::bf16;
  // Converted by the CPU's bf16 instructions where it has them, and by the
  // integer arithmetic used elsewhere: the same bits.
  for (const bool instructions : {true, false}) {
    CAPTURE(set_bf16_instructions(instructions));
    std::fill(yb.begin(), yb.end(), uint16_t{0});
    forward(fb);
    CHECK(yb[0] == 0xbf80);  // -(1 + 2^-8): ties to even, -1
    CHECK(yb[1] == 0x3f80);
    CHECK((yb[2] & 0x7f80) == 0x7f80);  // NaN stays NaN
    CHECK((yb[2] & 0x007f) != 0);
  }
  set_bf16_instructions(true);
}

namespace {

// Random data for the group norm kernel called directly: x as bf16 values
// (and the same values in f32), dz, a shift and the parameters; forward and
// backward on it with either type of x.
struct KernelData {
  group_norm_kernel::Shape shape;
  bool silu;
  size_t size, nc;
  std::vector<uint16_t> xb;
  std::vector<float> xf, dz, shift, gamma, beta;

  KernelData(const group_norm_kernel::Shape& s, bool with_silu, unsigned seed)
      : shape(s), silu(with_silu), size(static_cast<size_t>(s.n * s.spatial *
                                                            (s.layout == group_norm_kernel::Layout::blocked16
                                                                 ? (s.c + 15) / 16 * 16 : s.c))),
        nc(static_cast<size_t>(s.n * s.c)), xb(size), xf(size), dz(size), shift(nc), gamma(s.c), beta(s.c) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.3f, 1.2f);
    for (size_t i = 0; i < size; ++i) {
      float v = normal(rng);
      uint32_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      xb[i] = static_cast<uint16_t>(bits >> 16);  // truncated: any bf16 value will do
      bits = static_cast<uint32_t>(xb[i]) << 16;
      std::memcpy(&xf[i], &bits, sizeof bits);
      dz[i] = normal(rng);
    }
    for (auto& v : shift) v = normal(rng);
    for (auto& v : gamma) v = normal(rng);
    for (auto& v : beta) v = normal(rng);
  }
  const void* x(group_norm_kernel::DataType type) const {
    return type == group_norm_kernel::DataType::bf16 ? static_cast<const void*>(xb.data()) : xf.data();
  }

  struct Outputs {
    std::vector<float> y, mean, rstd;  // y in f32 (bf16 widened)
  };
  Outputs forward(group_norm_kernel::DataType type) const { return forward(type, shape, x(type), nullptr); }
  // The forward with x from `x1` and, when `x2` is given, the channels past
  // s.c_first from it.
  Outputs forward(group_norm_kernel::DataType type, const group_norm_kernel::Shape& s, const void* x1,
                  const void* x2) const {
    using namespace group_norm_kernel;
    Outputs o{std::vector<float>(size), std::vector<float>(static_cast<size_t>(shape.n * shape.groups)),
              std::vector<float>(static_cast<size_t>(shape.n * shape.groups))};
    std::vector<uint16_t> yb(size);
    Forward f = forward_args(s, x1, type == DataType::bf16 ? static_cast<void*>(yb.data()) : o.y.data(), gamma, beta,
                             o.mean, o.rstd);
    f.x2 = x2;
    f.shift = shift.data();
    f.silu = silu;
    f.type = type;
    group_norm_kernel::forward(f);
    if (type == DataType::bf16)
      for (size_t i = 0; i < size; ++i) {
        const uint32_t bits = static_cast<uint32_t>(yb[i]) << 16;
        std::memcpy(&o.y[i], &bits, sizeof bits);
      }
    return o;
  }

  struct Grads {
    std::vector<float> dx, dgamma, dbeta, dshift, dz;
  };
  // Adds into dx and dshift (both start at 0.5); dz is the step's to
  // overwrite (with SiLU, by the gradient before it). Without `want_dx` the
  // step gets no dx (the input needs no gradient) and g.dx stays empty.
  Grads backward(group_norm_kernel::DataType type, const Outputs& fwd, bool want_dx = true) const {
    Grads g = grads();
    group_norm_kernel::Backward b = backward_step(type, fwd, g);
    if (!want_dx) {
      g.dx.clear();
      b.dx = nullptr;
    }
    group_norm_kernel::backward(b);
    return g;
  }
  // The gradients' buffers before a backward step, and the step's arguments
  // writing them.
  Grads grads() const {
    return {std::vector<float>(size, 0.5f), std::vector<float>(static_cast<size_t>(shape.c)),
            std::vector<float>(static_cast<size_t>(shape.c)), std::vector<float>(nc, 0.5f), dz};
  }
  group_norm_kernel::Backward backward_step(group_norm_kernel::DataType type, const Outputs& fwd, Grads& g) const {
    group_norm_kernel::Backward b;
    b.shape = shape;
    b.silu = silu;
    b.type = type;
    b.x = x(type);
    b.dz = g.dz.data();
    b.gamma = gamma.data();
    b.beta = beta.data();
    b.shift = shift.data();
    b.mean = fwd.mean.data();
    b.rstd = fwd.rstd.data();
    b.dx = g.dx.data();
    b.dx_add = true;
    b.dgamma = g.dgamma.data();
    b.dbeta = g.dbeta.data();
    b.dshift = g.dshift.data();
    b.dshift_add = true;
    return b;
  }

  // Forward and backward with x given as two sources, its first c_first
  // channels and the rest, as `split` (a tensor of this shape -> the pair)
  // cuts them; dx comes back cut the same way (each part added into from 0.5).
  struct TwoSources {
    Outputs out;
    Grads grads;
    std::pair<std::vector<float>, std::vector<float>> dx;
  };
  template <typename Split>
  TwoSources two_sources(group_norm_kernel::DataType type, int64_t c_first, const Split& split) const {
    using namespace group_norm_kernel;
    const auto xf_parts = split(xf);
    const auto xb_parts = split(xb);
    const bool bf16 = type == DataType::bf16;
    const void* x1 = bf16 ? static_cast<const void*>(xb_parts.first.data()) : xf_parts.first.data();
    const void* x2 = bf16 ? static_cast<const void*>(xb_parts.second.data()) : xf_parts.second.data();
    group_norm_kernel::Shape two = shape;
    two.c_first = c_first;
    TwoSources r{forward(type, two, x1, x2), grads(), split(std::vector<float>(size, 0.5f))};
    Backward b = backward_step(type, r.out, r.grads);
    b.shape = two;
    b.x = x1;
    b.x2 = x2;
    b.dx = r.dx.first.data();
    b.dx2 = r.dx.second.data();
    b.dx2_add = true;
    group_norm_kernel::backward(b);
    return r;
  }
};

}  // namespace

TEST_CASE("native group norm backward on bf16 data equals it on the same values in f32, tails and shifts included") {
  // bf16 -> f32 is exact, so both versions compute the same numbers: the
  // gradients must agree bitwise, in both layouts, with SiLU and a shift.
  using namespace group_norm_kernel;
  for (const Layout layout : {Layout::plain, Layout::blocked16}) {
    for (const bool silu : {false, true}) {
      CAPTURE(layout == Layout::plain);
      CAPTURE(silu);
      // 21 positions: a 16-lane tail in plain
      const KernelData data({2, 32, 21, 8, layout}, silu, 9);
      const KernelData::Outputs fwd = data.forward(DataType::f32);
      const KernelData::Grads from_f32 = data.backward(DataType::f32, fwd);
      if (!silu) CHECK(from_f32.dz == data.dz);
      // bf16 data read with the CPU's bf16 instructions and without; the
      // forward's bf16 output from both, the same bits.
      std::vector<std::vector<float>> outputs;
      for (const bool instructions : {true, false}) {
        CAPTURE(set_bf16_instructions(instructions));
        const KernelData::Grads from_bf16 = data.backward(DataType::bf16, fwd);
        CHECK(from_bf16.dx == from_f32.dx);
        CHECK(from_bf16.dgamma == from_f32.dgamma);
        CHECK(from_bf16.dbeta == from_f32.dbeta);
        CHECK(from_bf16.dshift == from_f32.dshift);
        CHECK(from_bf16.dz == from_f32.dz);
        const KernelData::Outputs fb = data.forward(DataType::bf16);
        CHECK(fb.mean == fwd.mean);
        CHECK(fb.rstd == fwd.rstd);
        outputs.push_back(fb.y);
      }
      set_bf16_instructions(true);
      CHECK(outputs[0] == outputs[1]);
      CHECK(std::any_of(from_f32.dx.begin(), from_f32.dx.end(), [](float v) { return v != 0.5f; }));
    }
  }
}

TEST_CASE("native group norm: the per-sample and whole-tensor schedules give the same bits") {
  // Per sample, a thread runs both passes over one sample at a time (the
  // second reading it from its cache); whole-tensor, each pass runs over
  // every sample in parallel. Each channel's sums gather the same items in
  // the same order, so every output must agree to the bit: both layouts
  // (with padding lanes), units split into chunks, tails, SiLU, a shift, and
  // batches smaller than the thread count.
  using namespace group_norm_kernel;
  struct ShapeCase {
    int64_t n, c, spatial, groups;
  };
  const std::vector<ShapeCase> shapes = {
      {3, 20, 50, 5},   // plain: 4 vectors a row, 2 chunks a unit; nChw16c: 12 padding lanes
      {1, 32, 37, 4},   // one sample: chunks of whole vectors and a tail
      {5, 48, 9, 6},    // more samples than items a thread takes in the whole-tensor passes
  };
  int compared = 0;
  for (const ShapeCase& sc : shapes)
    for (const Layout layout : {Layout::plain, Layout::blocked16})
      for (const bool silu : {false, true})
        for (const DataType type : {DataType::f32, DataType::bf16}) {
          CAPTURE(sc.n);
          CAPTURE(sc.c);
          CAPTURE(layout == Layout::plain);
          CAPTURE(silu);
          CAPTURE(type == DataType::bf16);
          const KernelData data({sc.n, sc.c, sc.spatial, sc.groups, layout}, silu, 21);
          std::vector<KernelData::Outputs> fwd;
          std::vector<KernelData::Grads> grads, without_dx;
          for (const Schedule schedule : {Schedule::whole_tensor, Schedule::per_sample}) {
            set_schedule(schedule);
            fwd.push_back(data.forward(type));
            grads.push_back(data.backward(type, fwd.back()));
            without_dx.push_back(data.backward(type, fwd.back(), false));
          }
          set_schedule(Schedule::by_size);
          // Without dx the parameter and shift gradients are the same.
          for (const KernelData::Grads& g : without_dx) {
            CHECK(g.dgamma == grads[0].dgamma);
            CHECK(g.dbeta == grads[0].dbeta);
            CHECK(g.dshift == grads[0].dshift);
          }
          CHECK(fwd[0].y == fwd[1].y);
          CHECK(fwd[0].mean == fwd[1].mean);
          CHECK(fwd[0].rstd == fwd[1].rstd);
          CHECK(grads[0].dx == grads[1].dx);
          CHECK(grads[0].dgamma == grads[1].dgamma);
          CHECK(grads[0].dbeta == grads[1].dbeta);
          CHECK(grads[0].dshift == grads[1].dshift);
          // Not a vacuous comparison: the outputs were written.
          CHECK(std::none_of(grads[1].dx.begin(), grads[1].dx.end(), [](float v) { return std::isnan(v); }));
          CHECK(std::count(grads[1].dx.begin(), grads[1].dx.end(), 0.5f) < static_cast<long>(data.size / 2));
          ++compared;
        }
  CHECK(compared == 24);
}

TEST_CASE("native group norm of two sources equals it of their concatenation, to the bit") {
  // x holds the first c_first channels and x2 the rest: what the U-Net's up
  // path norms instead of writing the concatenation of its two inputs.
  using namespace group_norm_kernel;
  for (const Layout layout : {Layout::plain, Layout::blocked16})
    for (const Schedule schedule : {Schedule::whole_tensor, Schedule::per_sample})
      for (const DataType type : {DataType::f32, DataType::bf16}) {
        CAPTURE(layout == Layout::plain);
        CAPTURE(schedule == Schedule::per_sample);
        CAPTURE(type == DataType::bf16);
        set_schedule(schedule);
        const int64_t n = 3, c = 48, c_first = 32, spatial = 21, groups = 6;  // a group across the two sources
        const KernelData data({n, c, spatial, groups, layout}, true, 5);
        const KernelData::Outputs whole = data.forward(type);
        const KernelData::Grads whole_grads = data.backward(type, whole);
        // The per-sample split of a tensor of this shape into its first
        // c_first channels and the rest (both layouts keep a sample's first
        // channels first: blocks of 16, or rows).
        const size_t per_sample = data.size / static_cast<size_t>(n),
                     first = per_sample * static_cast<size_t>(c_first) / static_cast<size_t>(c);
        auto split = [&](const auto& v) {
          std::remove_cv_t<std::remove_reference_t<decltype(v)>> a, b;
          for (size_t s = 0; s < static_cast<size_t>(n); ++s) {
            a.insert(a.end(), v.begin() + s * per_sample, v.begin() + s * per_sample + first);
            b.insert(b.end(), v.begin() + s * per_sample + first, v.begin() + (s + 1) * per_sample);
          }
          return std::make_pair(a, b);
        };
        const KernelData::TwoSources two = data.two_sources(type, c_first, split);
        CHECK(two.out.y == whole.y);
        CHECK(two.out.mean == whole.mean);
        CHECK(two.out.rstd == whole.rstd);
        CHECK(two.dx == split(whole_grads.dx));
        CHECK(two.grads.dgamma == whole_grads.dgamma);
        CHECK(two.grads.dbeta == whole_grads.dbeta);
        CHECK(two.grads.dshift == whole_grads.dshift);
      }
  set_schedule(Schedule::by_size);
}

namespace {

// [N, C/16, S, 16] (nChw16c) -> [N, S, C] (nhwc), or back (`to_blocked`);
// C a multiple of 16.
template <typename T>
std::vector<T> transpose_blocks(const std::vector<T>& v, int64_t n, int64_t c, int64_t spatial, bool to_blocked) {
  std::vector<T> out(v.size());
  for (int64_t s = 0; s < n; ++s)
    for (int64_t b = 0; b < c / 16; ++b)
      for (int64_t p = 0; p < spatial; ++p)
        for (int64_t l = 0; l < 16; ++l) {
          const size_t blocked = static_cast<size_t>(((s * (c / 16) + b) * spatial + p) * 16 + l);
          const size_t last = static_cast<size_t>((s * spatial + p) * c + b * 16 + l);
          if (to_blocked)
            out[blocked] = v[last];
          else
            out[last] = v[blocked];
        }
  return out;
}

// The first c_first channels of each position of an nhwc tensor [N, S, C], and the rest.
template <typename T>
std::pair<std::vector<T>, std::vector<T>> split_channels_last(const std::vector<T>& v, int64_t c, int64_t c_first) {
  std::pair<std::vector<T>, std::vector<T>> parts;
  for (size_t at = 0; at < v.size(); at += static_cast<size_t>(c)) {
    parts.first.insert(parts.first.end(), v.begin() + at, v.begin() + at + c_first);
    parts.second.insert(parts.second.end(), v.begin() + at + c_first, v.begin() + at + c);
  }
  return parts;
}

}  // namespace

TEST_CASE("native group norm in nhwc equals it in nChw16c to the bit, one source or two") {
  // The two 16-channel layouts split the work into the same items and sum
  // them in the same order (nhwc reads a row's blocks together, each block
  // summed in its own order), so every output must agree bitwise once
  // transposed: both schedules, both types, SiLU and a shift, several
  // blocks (up to the 4 read together, and more), chunks, and the norm of
  // two sources (32 channels and 16; 64 and 32).
  using namespace group_norm_kernel;
  struct Case {
    int64_t n, c, spatial, groups, c_first;
  };
  int compared = 0;
  for (const Case cs : {Case{3, 48, 21, 6, 32}, Case{2, 96, 13, 8, 64}})
    for (const Schedule schedule : {Schedule::whole_tensor, Schedule::per_sample})
      for (const DataType type : {DataType::f32, DataType::bf16})
        for (const bool silu : {false, true})
          for (const bool two : {false, true}) {
            CAPTURE(cs.c);
            CAPTURE(schedule == Schedule::per_sample);
            CAPTURE(type == DataType::bf16);
            CAPTURE(silu);
            CAPTURE(two);
            set_schedule(schedule);
            const int64_t n = cs.n, c = cs.c, spatial = cs.spatial, groups = cs.groups, c_first = cs.c_first;
            const KernelData blocked({n, c, spatial, groups, Layout::blocked16}, silu, 13);
            const KernelData::Outputs bo = blocked.forward(type);
            const KernelData::Grads bg = blocked.backward(type, bo);

            KernelData last = blocked;
            last.shape.layout = Layout::channels_last16;
            auto to_last = [&](const auto& v) { return transpose_blocks(v, n, c, spatial, false); };
            auto to_blocked = [&](const auto& v) { return transpose_blocks(v, n, c, spatial, true); };
            last.xf = to_last(blocked.xf);
            last.xb = to_last(blocked.xb);
            last.dz = to_last(blocked.dz);
            if (!two) {
              const KernelData::Outputs lo = last.forward(type);
              const KernelData::Grads lg = last.backward(type, lo);
              CHECK(to_blocked(lo.y) == bo.y);
              CHECK(lo.mean == bo.mean);
              CHECK(lo.rstd == bo.rstd);
              CHECK(to_blocked(lg.dx) == bg.dx);
              CHECK(to_blocked(lg.dz) == bg.dz);
              CHECK(lg.dgamma == bg.dgamma);
              CHECK(lg.dbeta == bg.dbeta);
              CHECK(lg.dshift == bg.dshift);
            } else {
              const auto split = [&](const auto& v) { return split_channels_last(v, c, c_first); };
              const KernelData::TwoSources two = last.two_sources(type, c_first, split);
              CHECK(to_blocked(two.out.y) == bo.y);
              CHECK(two.out.mean == bo.mean);
              CHECK(two.out.rstd == bo.rstd);
              CHECK(two.dx == split(to_last(bg.dx)));
              CHECK(two.grads.dgamma == bg.dgamma);
              CHECK(two.grads.dbeta == bg.dbeta);
              CHECK(two.grads.dshift == bg.dshift);
            }
            CHECK(std::count(bg.dx.begin(), bg.dx.end(), 0.5f) < static_cast<long>(blocked.size / 2));
            ++compared;
          }
  set_schedule(Schedule::by_size);
  CHECK(compared == 32);
}

TEST_CASE("native group norm refuses a shape its layout cannot hold, before touching memory") {
  using namespace group_norm_kernel;
  struct Bad {
    group_norm_kernel::Shape shape;
    const char* why;
  };
  for (const Bad& bad : {Bad{{2, 20, 9, 5, Layout::channels_last16}, "nhwc channels not whole blocks"},
                         Bad{{2, 48, 9, 6, Layout::channels_last16, 24}, "nhwc first source not whole blocks"},
                         Bad{{2, 48, 9, 6, Layout::blocked16, 40}, "nChw16c first source not whole blocks"},
                         Bad{{2, 48, 9, 5, Layout::plain}, "groups not dividing the channels"},
                         Bad{{2, 48, 9, 6, Layout::plain, 48}, "no channels left for the second source"}}) {
    CAPTURE(bad.why);
    // No buffers: a shape that got past the check would write through null.
    std::vector<float> none;
    CHECK_THROWS_AS(forward(forward_args(bad.shape, nullptr, nullptr, none, none, none, none)), std::invalid_argument);
    Backward b;
    b.shape = bad.shape;
    CHECK_THROWS_AS(backward(b), std::invalid_argument);
  }
}

TEST_CASE("native group norm: by_size runs per sample when every thread has a sample that fits its cache") {
  using namespace group_norm_kernel;
  const int threads = omp_get_max_threads();
  using KShape = group_norm_kernel::Shape;
  const KShape small{std::max(threads, 4), 32, 7 * 7, 8, Layout::blocked16};  // 6 KiB of x a sample
  KShape few = small;
  few.n = threads - 1;                                                      // a thread without a sample
  const KShape huge{64, 64, 4096 * 4096, 8, Layout::plain};                 // 4 GiB of x a sample
  for (const bool backward : {false, true}) {
    CAPTURE(backward);
    CHECK(picks_per_sample(small, DataType::f32, backward, true));
    CHECK(picks_per_sample(small, DataType::bf16, backward, false));
    CHECK_FALSE(picks_per_sample(huge, DataType::bf16, backward, false));
    if (few.n >= 1) CHECK_FALSE(picks_per_sample(few, DataType::f32, backward, true));
    set_schedule(Schedule::whole_tensor);
    CHECK_FALSE(picks_per_sample(small, DataType::f32, backward, true));
    set_schedule(Schedule::per_sample);
    CHECK(picks_per_sample(huge, DataType::f32, backward, true));
    CHECK(set_schedule(Schedule::by_size) == Schedule::per_sample);
  }
}

namespace {

struct ConvCase {
  int64_t n, ci, co, h, w, k, pad;
};

// y, dx, and the parameter gradients (weights then bias) of conv2d, plain.
Results run_conv(const ConvCase& c, bool native) {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const dims xs{c.n, c.ci, c.h, c.w};
  const int64_t ho = c.h + 2 * c.pad - c.k + 1, wo = c.w + 2 * c.pad - c.k + 1;
  const dims ys{c.n, c.co, ho, wo};
  const int64_t weights = c.co * c.ci * c.k * c.k, count = weights + c.co;
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.1f, 1.0f);
  auto draw = [&](const dims& shape) {
    std::vector<float> v(static_cast<size_t>(shape_numel(Shape(shape.begin(), shape.end()))));
    for (auto& e : v) e = normal(rng);
    return v;
  };
  const std::vector<float> x_values = draw(xs), dy_values = draw(ys), param_values = draw({count});
  dnnl::memory params(plain_f32({count}), engine);
  std::copy(param_values.begin(), param_values.end(), static_cast<float*>(params.get_data_handle()));
  PrimitiveCache cache;
  Program p(engine, cache, params, count, /*training=*/true);
  p.set_native_kernels(native);
  const ValueId x = p.new_value(activation_desc(xs), true);  // nChw16c for 16k channels, else plain
  p.pin(x);
  const ValueId y = conv2d(p, x, ParamRef{0, {c.co, c.ci, c.k, c.k}}, ParamRef{weights, {c.co}}, 1, c.pad);
  p.pin(y);
  p.finalize(y, true);
  from_plain(x_values, p.data(x), xs, stream);
  p.prepare(stream, 0);
  p.run_forward(stream);
  from_plain(dy_values, p.grad(y), ys, stream);
  p.run_backward(stream);
  stream.wait();
  Results r;
  r.y = to_plain(p.data(y), ys, stream);
  r.dx = to_plain(p.grad(x), xs, stream);
  const float* staging = static_cast<const float*>(p.grad_staging().get_data_handle());
  r.dparams.assign(staging, staging + count);
  return r;
}

}  // namespace

TEST_CASE("native few-channel convolutions match oneDNN's: output, input gradient, weight and bias gradients") {
  const std::vector<ConvCase> cases = {
      {2, 1, 32, 5, 5, 3, 1},   // widening: an image's one channel in (the first convolution)
      {3, 3, 16, 6, 4, 3, 1},   // three channels in
      {2, 2, 32, 5, 3, 1, 0},   // 1x1
      {2, 32, 1, 5, 5, 3, 1},   // narrowing: one channel out (the last convolution)
      {1, 48, 3, 7, 6, 3, 0},   // three out, no padding: the output is smaller
      {2, 16, 2, 6, 6, 5, 2},   // 5x5
  };
  for (const ConvCase& c : cases) {
    CAPTURE(c.ci);
    CAPTURE(c.co);
    CAPTURE(c.k);
    CAPTURE(c.pad);
    const Results native = run_conv(c, true), primitives = run_conv(c, false);
    CHECK(worst(native.y, primitives.y) < 2e-5);
    CHECK(worst(native.dx, primitives.dx) < 2e-5);
    CHECK(worst(native.dparams, primitives.dparams) < 5e-5);
  }
}

TEST_CASE("the first and last convolutions of a U-Net run as native steps on the CPU, others as oneDNN's") {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const int64_t count = 32 * 1 * 9 + 32 + 32 * 32 * 9 + 32 + 1 * 32 * 9 + 1;
  dnnl::memory params(plain_f32({count}), engine);
  PrimitiveCache cache;
  Program p(engine, cache, params, count, /*training=*/true);
  const ValueId x = p.new_value(plain_f32({2, 1, 8, 8}), true);
  p.pin(x);
  int64_t at = 0;
  auto param = [&](const Shape& shape) {
    const ParamRef r{at, shape};
    at += shape_numel(shape);
    return r;
  };
  const ValueId a = conv2d(p, x, param({32, 1, 3, 3}), param({32}), 1, 1);
  const ValueId b = conv2d(p, a, param({32, 32, 3, 3}), param({32}), 1, 1);
  const ValueId y = conv2d(p, b, param({1, 32, 3, 3}), param({1}), 1, 1);
  p.finalize(y, true);
  p.prepare(stream, 0);
  PassProfile forward;
  p.run_forward(stream, &forward);
  stream.wait();
  std::vector<std::string> kinds;
  for (const StepTime& step : forward)
    if (std::string(step.layer) == "convolution" && std::string(step.primitive) != "reorder")
      kinds.push_back(step.primitive);
  CHECK(kinds == std::vector<std::string>{"native", "convolution", "native"});
  CHECK(p.desc(y) == plain_f32({2, 1, 8, 8}));
}

TEST_CASE("a narrowing few-channel convolution reads a bf16 input as it is: the same results as from its f32 values") {
  // bf16 -> f32 is exact, so the bf16 kernels compute what the f32 ones do
  // on the widened values, bitwise: forward, and the weight and bias gradients.
  const few_channel_conv::Geometry g{2, 7, 9, 3, 1};
  const int64_t few = 3, wide = 32, size = g.n * wide * g.h * g.w;
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> xb(static_cast<size_t>(size));
  std::vector<float> xf(xb.size()), weight(static_cast<size_t>(few * wide * 9)), bias(few),
      dy(static_cast<size_t>(g.n * few * g.ho() * g.wo()));
  for (size_t i = 0; i < xb.size(); ++i) {
    float v = normal(rng);
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    xb[i] = static_cast<uint16_t>(bits >> 16);
    bits = static_cast<uint32_t>(xb[i]) << 16;
    std::memcpy(&xf[i], &bits, sizeof bits);
  }
  for (auto* v : {&weight, &bias, &dy})
    for (auto& e : *v) e = normal(rng);
  std::vector<float> y_f32(dy.size()), y_bf16(dy.size()), dw_f32(weight.size()), dw_bf16(weight.size()),
      db_f32(bias.size()), db_bf16(bias.size());
  few_channel_conv::narrow(g, few, wide, xf.data(), weight.data(), bias.data(), y_f32.data(), false, false);
  few_channel_conv::narrow(g, few, wide, xb.data(), weight.data(), bias.data(), y_bf16.data());
  few_channel_conv::weight_grad(g, few, wide, true, xf.data(), dy.data(), dw_f32.data(), db_f32.data());
  few_channel_conv::weight_grad(g, few, wide, xb.data(), dy.data(), dw_bf16.data(), db_bf16.data());
  CHECK(y_bf16 == y_f32);
  CHECK(dw_bf16 == dw_f32);
  CHECK(db_bf16 == db_f32);
  CHECK(std::any_of(y_f32.begin(), y_f32.end(), [](float v) { return v != 0.0f; }));

  // In a bf16 program the layer reads its bf16 input with no conversion step.
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  PrimitiveCache cache;
  const int64_t count = few * wide * 9 + few;
  dnnl::memory params(plain_f32({count}), engine);
  Program p(engine, cache, params, count, /*training=*/true, Precision::bf16);
  const ValueId x = p.new_value(activation_desc({g.n, wide, g.h, g.w}, dnnl::memory::data_type::bf16), true);
  const ValueId y = conv2d(p, x, ParamRef{0, {few, wide, 3, 3}}, ParamRef{few * wide * 9, {few}}, 1, 1);
  CHECK(p.forward_steps() == 1);
  CHECK(p.desc(y) == plain_f32({g.n, few, g.ho(), g.wo()}));
}

TEST_CASE("native softmax matches oneDNN's forward and backward, short rows, tails and in place included") {
  // Rows of 4 (shorter than a vector), 16, 49 (unet-s's 7x7 tokens: three
  // vectors and a tail), 64 and 196; forward in place as attention runs it.
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  for (const int64_t length : {4, 16, 49, 64, 196}) {
    CAPTURE(length);
    const int64_t rows = 3 * length + 5;
    const auto md = plain_f32({rows, length});
    std::mt19937 rng(static_cast<unsigned>(length));
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::vector<float> x(static_cast<size_t>(rows * length)), dy(x.size());
    for (auto& v : x) v = normal(rng);
    for (auto& v : dy) v = normal(rng);
    x[7] = 60.0f;  // a row where the others' exponentials are tiny

    std::vector<float> y_ref(x.size()), dx_ref(x.size());
    dnnl::memory x_m(md, engine, x.data()), y_m(md, engine, y_ref.data()), dy_m(md, engine, dy.data()),
        dx_m(md, engine, dx_ref.data());
    const dnnl::softmax_forward::primitive_desc fwd(
        dnnl::softmax_forward::desc(dnnl::prop_kind::forward_training, md, 1), engine);
    dnnl::softmax_forward(fwd).execute(stream, {{DNNL_ARG_SRC, x_m}, {DNNL_ARG_DST, y_m}});
    const dnnl::softmax_backward::primitive_desc bwd(dnnl::softmax_backward::desc(md, md, 1), engine, fwd);
    dnnl::softmax_backward(bwd).execute(stream,
                                        {{DNNL_ARG_DST, y_m}, {DNNL_ARG_DIFF_DST, dy_m}, {DNNL_ARG_DIFF_SRC, dx_m}});
    stream.wait();

    std::vector<float> y = x;  // in place
    softmax_kernel::forward(y.data(), y.data(), rows, length);
    CHECK(worst(y, y_ref) < 1e-6);
    std::vector<float> dx(x.size(), 9.0f);
    softmax_kernel::backward(y_ref.data(), dy.data(), dx.data(), rows, length);
    CHECK(worst(dx, dx_ref) < 1e-5);
    std::vector<float> dx_over_dy = dy;  // dx written over dy
    softmax_kernel::backward(y_ref.data(), dx_over_dy.data(), dx_over_dy.data(), rows, length);
    CHECK(dx_over_dy == dx);
    // Each row sums to one.
    for (int64_t r = 0; r < rows; ++r) {
      double total = 0;
      for (int64_t j = 0; j < length; ++j) total += y[static_cast<size_t>(r * length + j)];
      CHECK(std::fabs(total - 1.0) < 1e-5);
    }
  }
}

TEST_CASE("attention's softmax is a native step on the CPU and oneDNN's primitive without native kernels") {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  std::vector<size_t> steps;
  for (const bool native : {true, false}) {
    CAPTURE(native);
    PrimitiveCache cache;
    dnnl::memory params(plain_f32({1}), engine);
    Program p(engine, cache, params, 1, /*training=*/true);
    p.set_native_kernels(native);
    const ValueId q = p.new_value(plain_f32({2, 49, 16}), true), k = p.new_value(plain_f32({2, 49, 16}), true),
                  v = p.new_value(plain_f32({2, 49, 16}), true);
    const ValueId out = attention_core(p, q, k, v, 2, 8);
    p.pin(out);
    p.finalize(out, true);
    // implementations() lists the primitive steps only; the two lists differ
    // by the native ones, the softmax forward and backward, which take the
    // place of the primitives one for one.
    const size_t native_steps = p.forward_steps() - p.implementations(false).size() + p.backward_steps() -
                                p.implementations(true).size();
    CHECK(native_steps == (native ? 2u : 0u));
    steps.push_back(p.forward_steps() + p.backward_steps());
  }
  CHECK(steps[0] == steps[1]);
}
