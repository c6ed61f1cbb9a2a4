// Finite-difference gradient checks for each U-Net layer on small shapes:
// L = sum(y * g) for a fixed random g; the analytic dL/dinput and dL/dparam
// from the backward program against central differences of the forward one.
#include "nodes/model/layers.hpp"
#include "compute/program.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <omp.h>
#include <random>
#include <tuple>

using namespace diffuflow;

namespace {

class LayerHarness {
 public:
  explicit LayerHarness(int64_t param_count, Precision precision = Precision::f32)
      : param_count_(std::max<int64_t>(param_count, 1)) {
    params_ = dnnl::memory(plain_f32({param_count_}), engine_);
    fill(params_, param_count_, 0.8f);
    program_ = std::make_unique<Program>(engine_, cache_, params_, param_count_, true, precision);
  }
  Program& p() { return *program_; }
  const dnnl::memory& params() const { return params_; }

  ParamRef param(Shape shape) {
    ParamRef ref{next_offset_, shape};
    next_offset_ += shape_numel(shape);
    REQUIRE(next_offset_ <= param_count_);
    return ref;
  }
  ValueId input(const dims& shape) {
    const ValueId v = p().new_value(plain_f32(shape), true);
    p().pin(v);  // written and read from outside the program's steps
    fill(p().data(v), shape_numel(shape), 1.0f);
    inputs_.push_back(v);
    return v;
  }
  void finish(ValueId out) {
    out_ = out;
    p().finalize(out, true);
    const int64_t n = shape_numel(p().shape(out));
    g_.resize(static_cast<size_t>(n));
    std::normal_distribution<float> normal;
    for (auto& v : g_) v = normal(rng_);
  }

  double loss() {
    // The parameters may have changed since the last pass (finite differences).
    p().prepare(stream_, ++passes_);
    p().run_forward(stream_);
    stream_.wait();
    const float* y = static_cast<const float*>(p().data(out_).get_data_handle());
    double sum = 0;
    for (size_t i = 0; i < g_.size(); ++i) sum += static_cast<double>(y[i]) * g_[i];
    return sum;
  }
  void backward() {
    loss();
    float* dy = static_cast<float*>(p().grad(out_).get_data_handle());
    std::copy(g_.begin(), g_.end(), dy);
    p().run_backward(stream_);
    stream_.wait();
  }

  // Compares analytic and numeric derivatives at up to `samples` entries of `data`
  // (an input or the parameter buffer), whose analytic gradient is `grad`.
  void check(float* data, const float* grad, int64_t count, const std::string& what, int samples = 24) {
    std::uniform_int_distribution<int64_t> pick(0, count - 1);
    const float eps = 1e-2f;
    for (int s = 0; s < std::min<int64_t>(samples, count); ++s) {
      const int64_t i = count <= samples ? s : pick(rng_);
      const float saved = data[i];
      data[i] = saved + eps;
      const double up = loss();
      data[i] = saved - eps;
      const double down = loss();
      data[i] = saved;
      const double numeric = (up - down) / (2.0 * eps);
      INFO(what << "[" << i << "]: analytic " << grad[i] << ", numeric " << numeric);
      CHECK(std::fabs(numeric - grad[i]) <= 1e-2 * std::max(1.0, std::fabs(numeric)) + 2e-3);
    }
  }

  // Backward, then checks every input and every parameter used.
  void check_all(const std::string& layer) {
    backward();
    // Copy the analytic gradients: the finite-difference passes rerun forward only,
    // but keep them safe from any reuse anyway.
    for (const ValueId v : inputs_) {
      const int64_t n = shape_numel(p().shape(v));
      const float* grad = static_cast<const float*>(p().grad(v).get_data_handle());
      std::vector<float> analytic(grad, grad + n);
      check(static_cast<float*>(p().data(v).get_data_handle()), analytic.data(), n,
            layer + " d/input" + std::to_string(v));
    }
    if (next_offset_ > 0) {
      const float* grad = static_cast<const float*>(p().grad_staging().get_data_handle());
      std::vector<float> analytic(grad, grad + next_offset_);
      check(static_cast<float*>(params_.get_data_handle()), analytic.data(), next_offset_, layer + " d/param");
    }
  }

 private:
  void fill(const dnnl::memory& m, int64_t n, float scale) {
    std::normal_distribution<float> normal(0.0f, scale);
    float* data = static_cast<float*>(m.get_data_handle());
    for (int64_t i = 0; i < n; ++i) data[i] = normal(rng_);
  }

  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream_{engine_};
  PrimitiveCache cache_;
  int64_t param_count_;
  int64_t next_offset_ = 0;
  dnnl::memory params_;
  std::unique_ptr<Program> program_;
  std::vector<ValueId> inputs_;
  ValueId out_ = -1;
  uint64_t passes_ = 0;
  std::vector<float> g_;
  std::mt19937 rng_{1234};
};

}  // namespace

TEST_CASE("conv2d 3x3 stride 1 gradients match finite differences") {
  LayerHarness h(4 * 3 * 9 + 4);
  const ValueId x = h.input({2, 3, 5, 5});
  const auto w = h.param({4, 3, 3, 3});
  const auto b = h.param({4});
  h.finish(conv2d(h.p(), x, w, b, 1, 1));
  h.check_all("conv3x3");
}

TEST_CASE("few-channel conv2d (native on the CPU) gradients match finite differences, widening and narrowing") {
  SUBCASE("three channels to 16") {
    LayerHarness h(16 * 3 * 9 + 16);
    const ValueId x = h.input({2, 3, 4, 5});
    const auto w = h.param({16, 3, 3, 3});
    const auto b = h.param({16});
    h.finish(conv2d(h.p(), x, w, b, 1, 1));
    h.check_all("conv 3 -> 16");
  }
  SUBCASE("16 channels to one and to two, from one input: the second input gradient adds into the first") {
    LayerHarness h(16 * 16 * 9 + 16 + 16 * 9 + 1 + 2 * 16 * 9 + 2);
    const ValueId input = h.input({2, 16, 4, 4});
    const ValueId x = conv2d(h.p(), input, h.param({16, 16, 3, 3}), h.param({16}), 1, 1);  // nChw16c
    const ValueId one = conv2d(h.p(), x, h.param({1, 16, 3, 3}), h.param({1}), 1, 1);
    const ValueId two = conv2d(h.p(), x, h.param({2, 16, 3, 3}), h.param({2}), 1, 1);
    h.finish(concat_channels(h.p(), one, two));
    h.check_all("conv 16 -> 1 and 2");
  }
}

TEST_CASE("conv2d 3x3 stride 2 (downsampling) gradients match finite differences and halve the size") {
  LayerHarness h(4 * 3 * 9 + 4);
  const ValueId x = h.input({2, 3, 6, 6});
  const auto w = h.param({4, 3, 3, 3});
  const auto b = h.param({4});
  const ValueId y = conv2d(h.p(), x, w, b, 2, 1);
  CHECK(h.p().shape(y) == dims{2, 4, 3, 3});
  h.finish(y);
  h.check_all("conv3x3s2");
}

TEST_CASE("conv2d 1x1 (shortcut) gradients match finite differences") {
  LayerHarness h(5 * 3 + 5);
  const ValueId x = h.input({2, 3, 4, 4});
  const auto w = h.param({5, 3, 1, 1});
  const auto b = h.param({5});
  h.finish(conv2d(h.p(), x, w, b, 1, 0));
  h.check_all("conv1x1");
}

TEST_CASE("linear gradients match finite differences for 2-D and token (3-D) inputs") {
  SUBCASE("2-D") {
    LayerHarness h(4 * 5 + 4);
    const ValueId x = h.input({3, 5});
    const auto w = h.param({4, 5});
    const auto b = h.param({4});
    h.finish(linear(h.p(), x, w, b));
    h.check_all("linear");
  }
  SUBCASE("3-D") {
    LayerHarness h(4 * 5 + 4);
    const ValueId x = h.input({2, 3, 5});
    const auto w = h.param({4, 5});
    const auto b = h.param({4});
    const ValueId y = linear(h.p(), x, w, b);
    CHECK(h.p().shape(y) == dims{2, 3, 4});
    h.finish(y);
    h.check_all("linear3d");
  }
  SUBCASE("many tokens: the weight and bias gradients summed in row batches") {
    REQUIRE(linear_row_batches(2 * 256) == 4);
    LayerHarness h(4 * 5 + 4);
    const ValueId x = h.input({2, 256, 5});
    const auto w = h.param({4, 5});
    const auto b = h.param({4});
    h.finish(linear(h.p(), x, w, b));
    h.backward();  // a second pass must overwrite the gradients, not add to them
    h.check_all("linear, 512 rows");
  }
}

TEST_CASE("linear's backward splits many rows into batches by the shape alone") {
  CHECK(linear_row_batches(64) == 1);          // the time embedding's rows at batch 64
  CHECK(linear_row_batches(8 * 49) == 2);      // attention tokens at batch 8
  CHECK(linear_row_batches(64 * 49) == 16);    // ... at batch 64: 196 rows each
  CHECK(linear_row_batches(257) == 1);         // a prime count of rows: no split
  for (int64_t rows : {256, 392, 1000, 3136, 6272}) {
    const int64_t b = linear_row_batches(rows);
    CHECK(rows % b == 0);
    CHECK(rows / b >= 128);
    CHECK(b <= 16);
  }
}

TEST_CASE("group_norm (layer norm over groups + affine) gradients match finite differences") {
  LayerHarness h(12);
  const ValueId x = h.input({2, 6, 3, 3});
  const auto gamma = h.param({6});
  const auto beta = h.param({6});
  h.finish(group_norm(h.p(), x, gamma, beta, 3, 1e-5f));
  h.check_all("group_norm");
}

TEST_CASE("group_norm adding its input gradient into an earlier contribution matches finite differences") {
  // x feeds the residual add and the norm: the norm's backward adds into
  // the gradient the add wrote.
  LayerHarness h(12);
  const ValueId x = h.input({2, 6, 3, 3});
  const auto gamma = h.param({6});
  const auto beta = h.param({6});
  h.finish(add(h.p(), group_norm(h.p(), x, gamma, beta, 3, 1e-5f), x));
  h.check_all("group_norm + residual");
}

TEST_CASE("group_norm with group sizes that make the group-mean matrix smaller than C, or C itself") {
  // The group statistics go through a [k, k] block-diagonal matmul: 48
  // channels in 4 groups of 12 take k = 24, 32 in 2 groups of 16 take k = 16,
  // one group takes k = C.
  struct Case {
    int64_t channels, groups;
  };
  for (const Case c : {Case{48, 4}, Case{32, 2}, Case{20, 1}}) {
    CAPTURE(c.channels);
    CAPTURE(c.groups);
    LayerHarness h(2 * c.channels);
    const ValueId x = h.input({2, c.channels, 3, 3});
    const auto gamma = h.param({c.channels});
    const auto beta = h.param({c.channels});
    h.finish(group_norm(h.p(), x, gamma, beta, c.groups, 1e-5f));
    h.check_all("group_norm " + std::to_string(c.channels) + "/" + std::to_string(c.groups));
  }
}

TEST_CASE("group_norm normalises each group to zero mean and unit variance before the affine") {
  LayerHarness h(8);
  const ValueId x = h.input({1, 4, 2, 2});
  const auto gamma = h.param({4});
  const auto beta = h.param({4});
  const ValueId y = group_norm(h.p(), x, gamma, beta, 2, 1e-5f);
  h.finish(y);
  // gamma = 1, beta = 0: the output is the normalised input.
  float* params = static_cast<float*>(h.p().param(0, plain_f32({8})).get_data_handle());
  for (int i = 0; i < 8; ++i) params[i] = i < 4 ? 1.0f : 0.0f;
  h.loss();
  const float* out = static_cast<const float*>(h.p().data(y).get_data_handle());
  for (int g = 0; g < 2; ++g) {
    double mean = 0, sq = 0;
    for (int i = 0; i < 8; ++i) mean += out[g * 8 + i];
    mean /= 8;
    for (int i = 0; i < 8; ++i) sq += (out[g * 8 + i] - mean) * (out[g * 8 + i] - mean);
    CHECK(std::fabs(mean) < 1e-5);
    CHECK(sq / 8 == doctest::Approx(1.0).epsilon(1e-3));
  }
}

TEST_CASE("group_norm_silu: fused inference pass matches silu(group_norm) of a training program") {
  // Plain and channel-blocked activations (32 channels take nChw16c).
  for (const int64_t channels : {6, 32}) {
    const dims shape{3, channels, 5, 4};
    const int64_t groups = channels == 6 ? 3 : 8;
    dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    dnnl::stream stream(engine);
    const int64_t count = 2 * channels;
    dnnl::memory params(plain_f32({count}), engine);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.5f, 1.0f);
    auto* pw = static_cast<float*>(params.get_data_handle());
    for (int64_t i = 0; i < count; ++i) pw[i] = normal(rng);
    std::vector<float> input(static_cast<size_t>(shape_numel(Shape(shape.begin(), shape.end()))));
    for (auto& v : input) v = 2.0f * normal(rng) + 1.0f;
    const ParamRef gamma{0, {channels}}, beta{channels, {channels}};
    std::vector<std::vector<float>> outputs;
    for (const bool training : {true, false}) {
      PrimitiveCache cache;
      Program p(engine, cache, params, count, training);
      const ValueId x = p.new_value(activation_desc(shape), training);
      p.pin(x);
      const ValueId y = group_norm_silu(p, x, gamma, beta, groups, 1e-5f);
      p.finalize(y, training);
      dnnl::memory plain_in(plain_f32(shape), engine, input.data());
      dnnl::memory x_mem = p.data(x);
      dnnl::reorder(plain_in, x_mem).execute(stream, plain_in, x_mem);
      p.prepare(stream, 0);
      p.run_forward(stream);
      std::vector<float> out(input.size());
      dnnl::memory plain_out(plain_f32(shape), engine, out.data());
      dnnl::memory y_mem = p.data(y);
      dnnl::reorder(y_mem, plain_out).execute(stream, y_mem, plain_out);
      stream.wait();
      outputs.push_back(out);
    }
    for (size_t i = 0; i < input.size(); ++i) {
      INFO("channels " << channels << " [" << i << "]");
      CHECK(outputs[1][i] == doctest::Approx(outputs[0][i]).epsilon(1e-4).scale(1.0));
    }
  }
}

TEST_CASE("group_norm_silu gradients match finite differences") {
  LayerHarness h(12);
  const ValueId x = h.input({2, 6, 3, 3});
  const auto gamma = h.param({6});
  const auto beta = h.param({6});
  h.finish(group_norm_silu(h.p(), x, gamma, beta, 3, 1e-5f));
  h.check_all("group_norm_silu");
}

TEST_CASE("silu gradients match finite differences") {
  LayerHarness h(0);
  const ValueId x = h.input({2, 3, 4});
  h.finish(silu(h.p(), x));
  h.check_all("silu");
}

TEST_CASE("nearest 2x upsampling gradients match finite differences") {
  LayerHarness h(0);
  const ValueId x = h.input({2, 2, 3, 3});
  const ValueId y = upsample_nearest2x(h.p(), x);
  CHECK(h.p().shape(y) == dims{2, 2, 6, 6});
  h.finish(y);
  h.check_all("upsample");
}

TEST_CASE("channel concatenation gradients split back to both inputs") {
  LayerHarness h(0);
  const ValueId a = h.input({2, 3, 2, 2});
  const ValueId b = h.input({2, 2, 2, 2});
  const ValueId y = concat_channels(h.p(), a, b);
  CHECK(h.p().shape(y) == dims{2, 5, 2, 2});
  h.finish(y);
  h.check_all("concat");
}

TEST_CASE("residual add and a value used twice accumulate their gradients") {
  LayerHarness h(0);
  const ValueId x = h.input({2, 3, 2, 2});
  h.finish(add(h.p(), silu(h.p(), x), x));
  h.check_all("add");
}

TEST_CASE("conv2d_add: a residual that is also used elsewhere gets both gradients (finite differences)") {
  // r = conv(x) [2,16,4,4] (the channel-blocked activation layout) feeds both
  // the residual and, through silu, the convolution: as a ResNet block's input.
  LayerHarness h(16 * 3 * 9 + 16 + 16 * 16 * 9 + 16);
  const ValueId x = h.input({2, 3, 4, 4});
  const ValueId r = conv2d(h.p(), x, h.param({16, 3, 3, 3}), h.param({16}), 1, 1);
  const ValueId y = conv2d_add(h.p(), silu(h.p(), r), h.param({16, 16, 3, 3}), h.param({16}), r, 1, 1);
  CHECK(h.p().shape(y) == dims{2, 16, 4, 4});
  h.finish(y);
  h.check_all("conv2d_add");
}

namespace {

int count_containing(const std::vector<std::string>& names, const std::string& part) {
  return static_cast<int>(std::count_if(names.begin(), names.end(),
                                        [&](const std::string& n) { return n.find(part) != std::string::npos; }));
}

}  // namespace

TEST_CASE("Winograd and direct convolutions against one computed in double precision") {
  const int64_t n = 4, c = 32, side = 12;
  std::vector<double> errors;
  for (const ConvAlgorithm algorithm : {ConvAlgorithm::direct, ConvAlgorithm::winograd}) {
    LayerHarness h(c * c * 9 + c + c * c + c);
    Program& p = h.p();
    p.set_conv_algorithm(algorithm);
    const ValueId x = h.input({n, c, side, side});
    // A 1x1 convolution writes the channel-blocked layout Winograd takes.
    const ParamRef w1 = h.param({c, c, 1, 1}), b1 = h.param({c});
    const ParamRef w = h.param({c, c, 3, 3}), b = h.param({c});
    const ValueId y = to_tokens(p, conv2d(p, conv2d(p, x, w1, b1, 1, 0), w, b, 1, 1));  // [n*s, c]
    h.finish(y);
    h.loss();  // one forward pass
    const float* xv = static_cast<const float*>(p.data(x).get_data_handle());  // [n, c, side, side]
    const float* yt = static_cast<const float*>(p.data(y).get_data_handle());
    const float* params = static_cast<const float*>(h.params().get_data_handle());
    const float* wv = params + w.offset;
    const float* bv = params + b.offset;
    // u = the 1x1 convolution in double, [n, side, side, c]
    std::vector<double> ut(static_cast<size_t>(n * side * side * c));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t pix = 0; pix < side * side; ++pix)
        for (int64_t o = 0; o < c; ++o) {
          double sum = params[b1.offset + o];
          for (int64_t k = 0; k < c; ++k) sum += double(xv[(i * c + k) * side * side + pix]) * params[w1.offset + o * c + k];
          ut[static_cast<size_t>((i * side * side + pix) * c + o)] = sum;
        }
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t r = 0; r < side; ++r)
        for (int64_t q = 0; q < side; ++q)
          for (int64_t o = 0; o < c; ++o) {
            double sum = bv[o];
            for (int64_t k = 0; k < c; ++k)
              for (int64_t dr = 0; dr < 3; ++dr)
                for (int64_t dq = 0; dq < 3; ++dq) {
                  const int64_t rr = r + dr - 1, qq = q + dq - 1;
                  if (rr < 0 || qq < 0 || rr >= side || qq >= side) continue;
                  sum += ut[static_cast<size_t>(((i * side + rr) * side + qq) * c + k)] * wv[((o * c + k) * 3 + dr) * 3 + dq];
                }
            const double got = yt[((i * side + r) * side + q) * c + o];
            num += (got - sum) * (got - sum);
            den += sum * sum;
          }
    errors.push_back(std::sqrt(num / den));
  }
  MESSAGE("relative L2 against double precision: direct " << errors[0] << ", Winograd " << errors[1]);
  CHECK(errors[0] < 2e-6);
  CHECK(errors[1] < 2e-6);
  if (dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core) CHECK(errors[0] != errors[1]);
}

TEST_CASE("Winograd and direct convolutions (with residuals read later or spent) agree within f32 rounding; by_shape picks by output tiles per thread") {
  CHECK(prefers_winograd(128, 2, false));
  CHECK(!prefers_winograd(127, 2, false));
  CHECK(prefers_winograd(256, 2, true));
  CHECK(!prefers_winograd(255, 2, true));
  CHECK(prefers_winograd(64, 0, false));
  CHECK(prefers_winograd(1024, 16, false));
  CHECK(!prefers_winograd(1024, 16, true));

  const bool avx512 = dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core;
  const int64_t c = 32, conv = c * c * 9 + c, count = 3 * conv + c * c + c;
  // Three 3x3 convolutions on [n, 32, 16, 16] (16 4x4 tiles per image), the
  // last two adding a residual: one read again later (the output starts as
  // a copy of it) and one spent (the output is written over it). Returns
  // the output, the input gradient and the parameter gradients, and counts
  // the Winograd steps of both passes.
  auto run = [&](ConvAlgorithm algorithm, int64_t n, int& winograd_steps) {
    LayerHarness h(count);
    Program& p = h.p();
    p.set_conv_algorithm(algorithm);
    const ValueId x = h.input({n, c, 16, 16});
    // A 1x1 convolution (never Winograd) writes the channel-blocked activation layout.
    const ValueId blocked = conv2d(p, x, h.param({c, c, 1, 1}), h.param({c}), 1, 0);
    const ValueId r = conv2d(p, blocked, h.param({c, c, 3, 3}), h.param({c}), 1, 1);
    const ValueId y1 = conv2d_add(p, silu(p, r), h.param({c, c, 3, 3}), h.param({c}), r, 1, 1);
    const ValueId y2 = conv2d_add(p, silu(p, y1), h.param({c, c, 3, 3}), h.param({c}), affine(p, y1, 0.5f, 0.0f),
                                  1, 1, /*residual_spent=*/true);
    const ValueId y = to_tokens(p, y2);
    h.finish(y);
    h.backward();
    winograd_steps = count_containing(p.implementations(false), "wino") +
                     count_containing(p.implementations(true), "wino");
    auto floats = [](const dnnl::memory& m, int64_t count) {
      const float* f = static_cast<const float*>(m.get_data_handle());
      return std::vector<float>(f, f + count);
    };
    std::vector<float> out = floats(p.data(y), shape_numel(p.shape(y)));
    for (const auto& part : {floats(p.grad(x), shape_numel(p.shape(x))), floats(p.grad_staging(), count)})
      out.insert(out.end(), part.begin(), part.end());
    return out;
  };
  int steps = 0;
  const auto direct = run(ConvAlgorithm::direct, 4, steps);
  CHECK(steps == 0);
  const auto winograd = run(ConvAlgorithm::winograd, 4, steps);
  if (avx512) CHECK(steps == 9);  // each 3x3 convolution forward, input and weight gradients
  double num = 0, den = 0;
  for (size_t i = 0; i < direct.size(); ++i) {
    num += (double(winograd[i]) - direct[i]) * (double(winograd[i]) - direct[i]);
    den += double(direct[i]) * direct[i];
  }
  const double error = std::sqrt(num / den);
  // Measured 1.3e-5 (the output alone 1.1e-6): the harness's weights (std
  // 0.8 at fan-in 288) amplify rounding layer by layer, forward and back.
  MESSAGE("Winograd against direct, relative L2 over outputs and gradients: " << error);
  CHECK(error < 1e-4);
  if (avx512) CHECK(error > 0.0);  // a different sum: the algorithm did change

  // by_shape: Winograd from 64 tiles per OpenMP thread on for the forward
  // (a Winograd forward then has direct backward passes), from 128 for the
  // backward ones.
  const int64_t threads = omp_get_max_threads();  // images of 16 tiles:
  run(ConvAlgorithm::by_shape, 4 * threads - 1, steps);
  CHECK(steps == 0);
  run(ConvAlgorithm::by_shape, 4 * threads, steps);
  if (avx512) CHECK(steps == 3);
  run(ConvAlgorithm::by_shape, 8 * threads, steps);
  if (avx512) CHECK(steps == 9);
}

TEST_CASE("bf16 training: every layer's backward takes bf16 data with f32 gradients, within rounding of f32") {
  // One chain through the layers that store image activations, run as a bf16
  // and as an f32 training program from the same parameters and inputs.
  const bool native = native_bf16(dnnl::engine(dnnl::engine::kind::cpu, 0));
  const int64_t c = 16, count = c * c * 9 + c + 2 * c;
  auto seed = std::make_shared<DropoutDraw>(DropoutDraw{7, 0});
  struct Run {
    std::vector<float> dx, dscale, dparams;
  };
  auto run = [&](Precision precision) {
    LayerHarness h(count, precision);
    Program& p = h.p();
    const ValueId x = h.input({2, c, 8, 8});
    const ValueId scale = h.input({2, c});
    const ValueId conv = conv2d(p, x, h.param({c, c, 3, 3}), h.param({c}), 1, 1);
    const ValueId norm = group_norm_act(p, conv, h.param({c}), h.param({c}), 4, 1e-5f, Activation::gelu);
    const ValueId dropped = dropout(p, norm, 0.25f, seed, 3);
    const ValueId pooled = scale_channels(p, avg_pool2x(p, dropped), scale);
    const ValueId up = activation(p, affine(p, upsample_nearest2x(p, pooled), 0.5f, 0.1f), Activation::mish);
    const ValueId joined = concat_channels(p, up, x);  // x: f32, plain
    const ValueId sum = add(p, from_tokens(p, to_tokens(p, joined), {2, 2 * c, 8, 8}), joined);
    const ValueId out = to_tokens(p, sum);  // f32 tokens: the harness reads the output as f32
    const auto expected = precision == Precision::bf16 && native ? dnnl::memory::data_type::bf16
                                                                 : dnnl::memory::data_type::f32;
    for (const ValueId v : {conv, norm, dropped, pooled, up, joined, sum}) {
      CAPTURE(v);
      CHECK(p.desc(v).data_type() == expected);
    }
    h.finish(out);
    h.backward();
    auto floats = [](const dnnl::memory& m, int64_t n) {
      const float* f = static_cast<const float*>(m.get_data_handle());
      return std::vector<float>(f, f + n);
    };
    for (const ValueId v : {conv, pooled, joined}) CHECK(p.grad_desc(v).data_type() == dnnl::memory::data_type::f32);
    return Run{floats(p.grad(x), 2 * c * 64), floats(p.grad(scale), 2 * c), floats(p.grad_staging(), count)};
  };
  const Run bf16 = run(Precision::bf16), f32 = run(Precision::f32);
  for (const auto& [name, got, want] : {std::make_tuple(std::string("x"), bf16.dx, f32.dx),
                                        std::make_tuple(std::string("scale"), bf16.dscale, f32.dscale),
                                        std::make_tuple(std::string("parameters"), bf16.dparams, f32.dparams)}) {
    CAPTURE(name);
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]), den += double(want[i]) * want[i];
    const double error = std::sqrt(num / den);
    MESSAGE("bf16 training gradient of " << name << " against f32, relative L2: " << error);
    CHECK(error < 3e-2);
    if (native) CHECK(error > 0.0);
  }
}

TEST_CASE("bf16 training: the backward convolutions run in the layout bf16_backward asks for, same gradients") {
  const bool native = native_bf16(dnnl::engine(dnnl::engine::kind::cpu, 0));
  const int64_t c = 32, count = c * c + c + 2 * (c * c * 9 + c);
  struct Run {
    std::vector<float> grads;
    std::vector<tag> forward, backward;  // the source layout of each convolution step
  };
  // A 1x1 convolution, a 3x3 and a 3x3 adding a residual, on [4, 32, 8, 8].
  auto run = [&](Bf16Backward layout) {
    LayerHarness h(count, Precision::bf16);
    Program& p = h.p();
    p.set_bf16_backward(layout);
    const ValueId x = h.input({4, c, 8, 8});
    const ValueId a = conv2d(p, x, h.param({c, c, 1, 1}), h.param({c}), 1, 0);
    const ValueId b = conv2d(p, silu(p, a), h.param({c, c, 3, 3}), h.param({c}), 1, 1);
    const ValueId y = conv2d_add(p, silu(p, b), h.param({c, c, 3, 3}), h.param({c}), a, 1, 1);
    h.finish(to_tokens(p, y));
    h.backward();
    Run r;
    for (const bool backward : {false, true}) {
      for (const Step& step : p.steps(backward)) {
        if (!step.primitive || step.primitive.get_kind() != dnnl::primitive::kind::convolution) continue;
        const int arg = backward ? DNNL_ARG_DIFF_DST : DNNL_ARG_SRC;
        const dnnl::memory::desc md = step.args.at(arg).get_desc();
        const bool last = md == dnnl::memory::desc(md.dims(), md.data_type(), tag::nhwc);
        (backward ? r.backward : r.forward).push_back(last ? tag::nhwc : tag::nChw16c);
      }
    }
    const float* g = static_cast<const float*>(p.grad_staging().get_data_handle());
    r.grads.assign(g, g + count);
    const float* dx = static_cast<const float*>(p.grad(x).get_data_handle());
    r.grads.insert(r.grads.end(), dx, dx + 4 * c * 64);
    return r;
  };
  const Run by_shape = run(Bf16Backward::by_shape), last = run(Bf16Backward::channels_last),
            blocked = run(Bf16Backward::blocked);
  if (!native) {
    // f32 convolutions: the setting changes nothing.
    CHECK(last.grads == by_shape.grads);
    CHECK(blocked.grads == by_shape.grads);
    return;
  }
  REQUIRE(by_shape.forward.size() == 3);
  REQUIRE(by_shape.backward.size() == 6);  // data and weight gradients of each
  // by_shape: the forward's layout (channels-last with AMX, else blocked).
  for (const tag t : by_shape.backward) CHECK(t == by_shape.forward[0]);
  for (const Run* r : {&last, &blocked}) CHECK(r->forward == by_shape.forward);
  for (const tag t : last.backward) CHECK(t == tag::nhwc);
  for (const tag t : blocked.backward) CHECK(t == tag::nChw16c);
  // The same bf16 operands summed in f32 in another order.
  for (const Run* r : {&last, &blocked}) {
    double num = 0, den = 0;
    for (size_t i = 0; i < by_shape.grads.size(); ++i) {
      const double d = double(r->grads[i]) - by_shape.grads[i];
      num += d * d, den += double(by_shape.grads[i]) * by_shape.grads[i];
    }
    MESSAGE("gradients against by_shape's layout, relative L2: " << std::sqrt(num / den));
    CHECK(std::sqrt(num / den) < 1e-4);
  }
}

TEST_CASE("channels-last activations: every layer kind in nhwc, convolutions without reorders, channel-blocked's results") {
  // A first few-channel convolution, GroupNorm with a shift, a convolution
  // adding a residual, GroupNorm of two sources, upsampling, a stride-2
  // convolution, per-channel scale and bias, and a last few-channel
  // convolution: with activation_layout channels_last every activation of
  // 16-channel blocks is nhwc, every oneDNN convolution writes nhwc straight
  // into it, the only layout reorders are the two few-channel kernels' (which
  // take nChw16c), the residual is added inside its convolution as in the
  // channel-blocked program, and the outputs and gradients agree with the
  // channel-blocked program's within rounding (f32, and bf16 where the CPU
  // has it natively).
  const int64_t n = 2, c = 32, count = 16 * 9 + 16 + 2 * c + c * 16 * 9 + c + c * c * 9 + c + 4 * c + 16 * 2 * c * 9 +
                                       16 + 16 * 9 + 1;
  struct Run {
    std::vector<float> out, grads;
    std::vector<bool> nhwc;  // of each intermediate activation
    size_t reorders = 0;     // forward reorder steps that change the layout
    size_t binaries = 0;     // forward binary steps (the residual add, where no convolution takes it)
    bool convolutions_nhwc = true;  // every forward convolution step writes nhwc
    bool in_place = false;   // the convolutions making a2 and d (with the residual) write their values' memory
  };
  auto run = [&](Precision precision, ActivationLayout layout, bool finite_differences) {
    LayerHarness h(count, precision);
    // Small weights keep the activations of this deep stack in a range where
    // finite differences are accurate.
    float* weights = static_cast<float*>(h.params().get_data_handle());
    for (int64_t i = 0; i < count; ++i) weights[i] *= 0.15f;
    Program& p = h.p();
    p.set_activation_layout(layout);
    const ValueId x = h.input({n, 1, 8, 8});
    const ValueId shift = h.input({n, c}), scale = h.input({n, 16}), bias = h.input({n, 16});
    const ValueId a = conv2d(p, x, h.param({16, 1, 3, 3}), h.param({16}), 1, 1);
    const ValueId a2 = conv2d(p, silu(p, a), h.param({c, 16, 3, 3}), h.param({c}), 1, 1);
    const ValueId b = shifted_group_norm_act(p, a2, shift, h.param({c}), h.param({c}), 8, 1e-5f, Activation::silu);
    const ValueId d = conv2d_add(p, b, h.param({c, c, 3, 3}), h.param({c}), a2, 1, 1);
    const ValueId e = group_norm_act_two(p, d, a2, h.param({2 * c}), h.param({2 * c}), 8, 1e-5f, Activation::silu);
    const ValueId f = conv2d(p, upsample_nearest2x(p, e), h.param({16, 2 * c, 3, 3}), h.param({16}), 2, 1);
    const ValueId g = add_channel_bias(p, scale_channels(p, f, scale), bias);
    const ValueId y = conv2d(p, g, h.param({1, 16, 3, 3}), h.param({1}), 1, 1);
    h.finish(y);
    Run r;
    for (const ValueId v : {a, a2, b, d, e, f, g})
      r.nhwc.push_back(p.desc(v) == dnnl::memory::desc(p.shape(v), p.desc(v).data_type(), tag::nhwc));
    int writers = 0;
    for (const Step& step : p.steps(false)) {
      if (!step.primitive) continue;
      if (step.primitive.get_kind() == dnnl::primitive::kind::convolution) {
        const void* dst = step.args.at(DNNL_ARG_DST).get_data_handle();
        writers += dst == p.data(a2).get_data_handle() || dst == p.data(d).get_data_handle();
      }
      // A reorder between two layouts (not a copy, nor a conversion to bf16 in one layout).
      if (step.primitive.get_kind() == dnnl::primitive::kind::reorder) {
        const dnnl::memory::desc from = step.args.at(DNNL_ARG_FROM).get_desc();
        const dnnl::memory::desc to = step.args.at(DNNL_ARG_TO).get_desc();
        if (with_type(from, to.data_type()) != to) ++r.reorders;
      }
      if (step.primitive.get_kind() == dnnl::primitive::kind::binary) ++r.binaries;
      if (step.primitive.get_kind() == dnnl::primitive::kind::convolution) {
        const dnnl::memory::desc md = step.args.at(DNNL_ARG_DST).get_desc();
        r.convolutions_nhwc = r.convolutions_nhwc && md == dnnl::memory::desc(md.dims(), md.data_type(), tag::nhwc);
      }
    }
    r.in_place = writers == 2;
    if (finite_differences) h.check_all("channels-last network");
    h.backward();  // (again after finite differences: the outputs of the unperturbed weights)
    const float* out = static_cast<const float*>(p.data(y).get_data_handle());
    r.out.assign(out, out + n * 64);
    const float* grads = static_cast<const float*>(p.grad_staging().get_data_handle());
    r.grads.assign(grads, grads + count);
    for (const ValueId v : {x, shift, scale, bias}) {
      const float* dv = static_cast<const float*>(p.grad(v).get_data_handle());
      r.grads.insert(r.grads.end(), dv, dv + shape_numel(p.shape(v)));
    }
    return r;
  };
  auto relative_l2 = [](const std::vector<float>& got, const std::vector<float>& want) {
    REQUIRE(got.size() == want.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double d = double(got[i]) - want[i];
      num += d * d, den += double(want[i]) * want[i];
    }
    return std::sqrt(num / den);
  };
  const Run f32_blocked = run(Precision::f32, ActivationLayout::blocked, false);
  const Run f32_last = run(Precision::f32, ActivationLayout::channels_last, true);
  // The few-channel first output (16 channels) is a block too.
  for (size_t i = 0; i < f32_last.nhwc.size(); ++i) {
    CAPTURE(i);
    CHECK(f32_last.nhwc[i]);
    CHECK_FALSE(f32_blocked.nhwc[i]);
  }
  CHECK(f32_last.convolutions_nhwc);
  CHECK_FALSE(f32_blocked.convolutions_nhwc);
  CHECK(f32_last.reorders == 2);
  CHECK(f32_last.in_place);
  CHECK(f32_blocked.in_place);
  // The two binary steps are the per-channel scale and bias: the residual
  // goes into its convolution (every AVX-512 kernel takes a binary or a sum
  // post-op).
  const bool avx512 = dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core;
  if (avx512) CHECK(f32_last.binaries == 2);
  CHECK(f32_last.binaries == f32_blocked.binaries);
  MESSAGE("f32 channels-last against channel-blocked, relative L2: output "
          << relative_l2(f32_last.out, f32_blocked.out) << ", gradients "
          << relative_l2(f32_last.grads, f32_blocked.grads));
  CHECK(relative_l2(f32_last.out, f32_blocked.out) < 1e-5);
  CHECK(relative_l2(f32_last.grads, f32_blocked.grads) < 1e-5);
  // by_isa: channels-last only for bf16 on AMX.
  CHECK(run(Precision::f32, ActivationLayout::by_isa, false).nhwc == f32_blocked.nhwc);
  const bool amx = amx_convolutions(dnnl::engine(dnnl::engine::kind::cpu, 0));
  for (const bool v : run(Precision::bf16, ActivationLayout::by_isa, false).nhwc) CHECK(v == amx);

  if (!native_bf16(dnnl::engine(dnnl::engine::kind::cpu, 0))) return;
  const Run bf16_blocked = run(Precision::bf16, ActivationLayout::blocked, false);
  const Run bf16_last = run(Precision::bf16, ActivationLayout::channels_last, false);
  for (const bool v : bf16_last.nhwc) CHECK(v);
  MESSAGE("bf16 forward layout reorders: channel-blocked " << bf16_blocked.reorders << ", channels-last "
                                                            << bf16_last.reorders);
  CHECK(bf16_last.convolutions_nhwc);
  CHECK(bf16_last.reorders == 2);
  CHECK(bf16_last.in_place);
  if (avx512) CHECK(bf16_last.binaries == 2);
  CHECK(bf16_last.binaries == bf16_blocked.binaries);
  // The same bf16 operands summed in another order; a rounding apart moves later bf16 roundings.
  CHECK(relative_l2(bf16_last.out, bf16_blocked.out) < 1e-2);
  CHECK(relative_l2(bf16_last.grads, bf16_blocked.grads) < 1e-2);
}

TEST_CASE("conv2d_add is one primitive fewer with the result of conv2d then add (f32; bf16 over a spent residual)") {
  for (const Precision precision : {Precision::f32, Precision::bf16}) {
    CAPTURE(enum_name(precision));
    auto build = [precision](bool fused) {
      auto harness = std::make_unique<LayerHarness>(2 * (16 * 16 * 9 + 16), precision);
      LayerHarness& h = *harness;
      const ValueId x = h.input({2, 16, 4, 4});
      // A convolution's output: the activation layout (channel-blocked), as in the U-Net.
      const ValueId r = conv2d(h.p(), x, h.param({16, 16, 3, 3}), h.param({16}), 1, 1);
      const ValueId a = silu(h.p(), r);
      const ParamRef w = h.param({16, 16, 3, 3}), b = h.param({16});
      // bf16 adds over the residual when told that nothing reads it later: r's
      // data is read by silu's backward here, so the residual is a copy of it.
      const ValueId residual = precision == Precision::bf16 ? affine(h.p(), r, 1.0f, 0.0f) : r;
      const ValueId y = fused ? conv2d_add(h.p(), a, w, b, residual, 1, 1, precision == Precision::bf16)
                              : add(h.p(), residual, conv2d(h.p(), a, w, b, 1, 1));
      h.finish(y);
      return std::make_pair(std::move(harness), y);
    };
    auto [fused, y_fused] = build(true);
    auto [plain, y_plain] = build(false);
    // Every AVX-512 jit convolution of oneDNN 2.6 takes the residual as a
    // post-op; bf16 runs where the CPU has it natively (else f32).
    const bool bf16_native = native_bf16(dnnl::engine(dnnl::engine::kind::cpu, 0));
    if (dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core && (precision == Precision::f32 || bf16_native))
      CHECK(fused->p().forward_steps() + 1 == plain->p().forward_steps());
    fused->backward();
    plain->backward();
    for (auto [h, y] : {std::make_pair(fused.get(), y_fused), std::make_pair(plain.get(), y_plain)}) {
      CAPTURE(y);
      CHECK(h->p().shape(y) == dims{2, 16, 4, 4});
    }
    const auto values = [](const dnnl::memory& m) {
      const float* f = static_cast<const float*>(m.get_data_handle());
      return std::vector<float>(f, f + m.get_desc().get_size() / sizeof(float));
    };
    const auto outputs = [](LayerHarness& h, ValueId y) {
      std::vector<float> out(static_cast<size_t>(shape_numel(h.p().shape(y))));
      dnnl::memory from = h.p().data(y), to(plain_f32(h.p().shape(y)), from.get_engine(), out.data());
      dnnl::stream stream(from.get_engine());
      dnnl::reorder(from, to).execute(stream, from, to);
      stream.wait();
      return out;
    };
    const auto y1 = outputs(*fused, y_fused), y2 = outputs(*plain, y_plain);
    if (fused->p().desc(y_fused).data_type() == dnnl::memory::data_type::f32) {
      CHECK(y1 == y2);
    } else {
      // bf16 activations: the fused sum is rounded once, the separate add's
      // twice (the convolution's output, then the sum).
      double num = 0, den = 0;
      for (size_t i = 0; i < y1.size(); ++i) num += (double(y1[i]) - y2[i]) * (double(y1[i]) - y2[i]), den += double(y2[i]) * y2[i];
      CHECK(std::sqrt(num / den) < 4e-3);
    }
    // The backward reads the same gradients and data either way.
    CHECK(values(fused->p().grad_staging()) == values(plain->p().grad_staging()));
    CHECK(values(fused->p().grad(0)) == values(plain->p().grad(0)));
  }
}

TEST_CASE("time-embedding channel bias add gradients match finite differences") {
  LayerHarness h(0);
  const ValueId x = h.input({2, 3, 4, 4});
  const ValueId bias = h.input({2, 3});
  h.finish(add_channel_bias(h.p(), x, bias));
  h.check_all("channel_bias");
}

TEST_CASE("shifted_group_norm_act: gradients of x and of the [N,C] shift match finite differences") {
  for (const dims& shape : {dims{2, 4, 3, 3}, dims{2, 32, 2, 2}}) {  // plain, and channel-blocked via a conv
    CAPTURE(shape[1]);
    const int64_t c = shape[1];
    LayerHarness h(c * c * 9 + c + 2 * c);
    const ValueId input = h.input(shape);
    const ValueId x = conv2d(h.p(), input, h.param({c, c, 3, 3}), h.param({c}), 1, 1);
    const ValueId shift = h.input({shape[0], c});
    const ParamRef gamma = h.param({c}), beta = h.param({c});
    h.finish(shifted_group_norm_act(h.p(), x, shift, gamma, beta, 2, 1e-5f, Activation::silu));
    h.check_all("shifted_group_norm_act");
  }
}

TEST_CASE("shifted_group_norm_act gives group_norm_act of the sum, in training and inference programs") {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const int64_t n = 2, c = 32, hw = 3;
  dnnl::memory params(plain_f32({2 * c}), engine);
  {
    float* w = static_cast<float*>(params.get_data_handle());
    for (int64_t i = 0; i < 2 * c; ++i) w[i] = 0.5f + 0.03f * static_cast<float>(i % 7) - (i >= c ? 0.6f : 0.0f);
  }
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.3f, 2.0f);
  std::vector<float> x_values(static_cast<size_t>(n * c * hw * hw)), shift_values(static_cast<size_t>(n * c));
  for (auto& v : x_values) v = normal(rng);
  for (auto& v : shift_values) v = 3.0f * normal(rng);
  for (const bool training : {true, false}) {
    CAPTURE(training);
    std::vector<std::vector<float>> outs;
    for (const bool fused : {true, false}) {
      PrimitiveCache cache;
      Program p(engine, cache, params, 2 * c, training);
      const ValueId x = p.new_value(activation_desc({n, c, hw, hw}), false);
      const ValueId shift = p.new_value(plain_f32({n, c}), false);
      const ParamRef gamma{0, {c}}, beta{c, {c}};
      const ValueId y = fused ? shifted_group_norm_act(p, x, shift, gamma, beta, 4, 1e-6f, Activation::silu)
                              : group_norm_act(p, add_channel_bias(p, x, shift), gamma, beta, 4, 1e-6f,
                                               Activation::silu);
      p.finalize(y, false);
      const dnnl::memory x_plain(plain_f32({n, c, hw, hw}), engine, x_values.data());
      dnnl::memory x_mem = p.data(x), from = x_plain;
      dnnl::reorder(from, x_mem).execute(stream, from, x_mem);
      stream.wait();
      std::copy(shift_values.begin(), shift_values.end(), static_cast<float*>(p.data(shift).get_data_handle()));
      p.prepare(stream, 0);
      p.run_forward(stream);
      std::vector<float> out(x_values.size());
      dnnl::memory y_mem = p.data(y), to(plain_f32({n, c, hw, hw}), engine, out.data());
      dnnl::reorder(y_mem, to).execute(stream, y_mem, to);
      stream.wait();
      outs.push_back(out);
    }
    float worst = 0;
    for (size_t i = 0; i < outs[0].size(); ++i) worst = std::max(worst, std::fabs(outs[0][i] - outs[1][i]));
    CHECK(worst <= 1e-5f);
  }
}

TEST_CASE("group_norm refuses an NHWC input whose channels are not whole blocks of 16") {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  PrimitiveCache cache;
  dnnl::memory params(plain_f32({2 * 24}), engine);
  Program p(engine, cache, params, 2 * 24);
  const ValueId x = p.new_value(dnnl::memory::desc({2, 24, 3, 2}, dnnl::memory::data_type::f32, tag::nhwc), true);
  CHECK_THROWS_WITH_AS(group_norm(p, x, ParamRef{0, {24}}, ParamRef{24, {24}}, 6, 1e-5f),
                       doctest::Contains("nhwc with channels in whole blocks of 16"), std::invalid_argument);
}

TEST_CASE("token transposes around a linear layer match finite differences") {
  LayerHarness h(3 * 3 + 3);
  const ValueId x = h.input({2, 3, 2, 3});
  const auto w = h.param({3, 3});
  const auto b = h.param({3});
  const ValueId tokens = to_tokens(h.p(), x);
  CHECK(h.p().shape(tokens) == dims{2, 6, 3});
  h.finish(from_tokens(h.p(), linear(h.p(), tokens, w, b), {2, 3, 2, 3}));
  h.check_all("tokens");
}

TEST_CASE("multi-head attention core gradients match finite differences for q, k and v") {
  LayerHarness h(0);
  const ValueId q = h.input({2, 5, 8});
  const ValueId k = h.input({2, 5, 8});
  const ValueId v = h.input({2, 5, 8});
  h.finish(attention_core(h.p(), q, k, v, 2, 4));
  h.check_all("attention");
}

TEST_CASE("timestep embedding table is cos then sin of t times geometric frequencies") {
  std::vector<float> table(2 * 8);
  timestep_embedding_table({0, 10}, 8, table.data());
  for (int j = 0; j < 4; ++j) {
    CHECK(table[j] == doctest::Approx(1.0f));      // cos(0)
    CHECK(table[4 + j] == doctest::Approx(0.0f));  // sin(0)
    const double freq = std::exp(-std::log(10000.0) * j / 4.0);
    CHECK(table[8 + j] == doctest::Approx(std::cos(10.0 * freq)).epsilon(1e-5));
    CHECK(table[12 + j] == doctest::Approx(std::sin(10.0 * freq)).epsilon(1e-5));
  }
}

TEST_CASE("timestep embedding of a fractional timestep follows the same formula") {
  std::vector<float> table(8);
  timestep_embedding_table({947.37f}, 8, table.data());
  for (int j = 0; j < 4; ++j) {
    const double freq = std::exp(-std::log(10000.0) * j / 4.0);
    CHECK(table[j] == doctest::Approx(std::cos(947.37 * freq)).epsilon(1e-4));
    CHECK(table[4 + j] == doctest::Approx(std::sin(947.37 * freq)).epsilon(1e-4));
  }
}

TEST_CASE("conv2d padded only after (downsample_padding 0) gradients match finite differences") {
  LayerHarness h(4 * 3 * 9 + 4);
  const ValueId x = h.input({2, 3, 6, 6});
  const auto w = h.param({4, 3, 3, 3});
  const auto b = h.param({4});
  const ValueId y = conv2d(h.p(), x, w, b, 2, 0, 1);
  CHECK(h.p().shape(y) == dims{2, 4, 3, 3});
  h.finish(y);
  h.check_all("conv3x3s2_pad_end");
}

TEST_CASE("mish and gelu, alone and after group_norm, match finite differences") {
  for (const Activation act : {Activation::mish, Activation::gelu}) {
    {
      LayerHarness h(0);
      const ValueId x = h.input({2, 3, 4});
      h.finish(activation(h.p(), x, act));
      h.check_all("activation");
    }
    LayerHarness h(12);
    const ValueId x = h.input({2, 6, 3, 3});
    const auto gamma = h.param({6});
    const auto beta = h.param({6});
    h.finish(group_norm_act(h.p(), x, gamma, beta, 3, 1e-5f, act));
    h.check_all("group_norm_act");
  }
  CHECK(activation_named("Swish") == Activation::silu);
  CHECK_THROWS_WITH_AS(activation_named("tanh"), doctest::Contains("unknown activation 'tanh'"), std::invalid_argument);
}

TEST_CASE("affine, per-channel scale and average pooling gradients match finite differences") {
  SUBCASE("affine") {
    LayerHarness h(0);
    const ValueId x = h.input({2, 3, 4});
    h.finish(affine(h.p(), x, 2.0f, -1.0f));
    h.check_all("affine");
  }
  SUBCASE("scale_channels") {
    LayerHarness h(0);
    const ValueId x = h.input({2, 3, 4, 4});
    const ValueId scale = h.input({2, 3});
    h.finish(scale_channels(h.p(), x, scale));
    h.check_all("scale_channels");
  }
  SUBCASE("avg_pool2x") {
    LayerHarness h(0);
    const ValueId x = h.input({2, 3, 4, 6});
    const ValueId y = avg_pool2x(h.p(), x);
    CHECK(h.p().shape(y) == dims{2, 3, 2, 3});
    h.finish(y);
    h.check_all("avg_pool2x");
  }
  SUBCASE("avg_pool over 3x3 windows of an image they do not tile: the last rows and columns left out") {
    LayerHarness h(0);
    const ValueId x = h.input({2, 3, 7, 8});
    const ValueId y = avg_pool(h.p(), x, 3);
    CHECK(h.p().shape(y) == dims{2, 3, 2, 2});
    h.finish(y);
    h.check_all("avg_pool 3");
  }
  SUBCASE("avg_pool refuses windows larger than the image, avg_pool2x odd sizes") {
    LayerHarness h(0);
    const ValueId x = h.input({1, 2, 3, 5});
    CHECK_THROWS_AS(avg_pool(h.p(), x, 4), std::invalid_argument);
    CHECK_THROWS_AS(avg_pool2x(h.p(), x), std::invalid_argument);
  }
}

TEST_CASE("dropout with a fixed seed is a fixed mask: its gradients match finite differences") {
  LayerHarness h(0);
  const ValueId x = h.input({2, 4, 8, 8});
  auto seed = std::make_shared<DropoutDraw>(DropoutDraw{42, 0});
  const ValueId y = dropout(h.p(), x, 0.25f, seed, 0);
  h.finish(y);
  h.loss();
  const float* in = static_cast<const float*>(h.p().data(x).get_data_handle());
  const float* out = static_cast<const float*>(h.p().data(y).get_data_handle());
  int dropped = 0;
  for (int i = 0; i < 512; ++i) {
    if (out[i] == 0.0f) {
      ++dropped;
    } else {
      CHECK(out[i] == doctest::Approx(in[i] / 0.75f));
    }
  }
  CHECK(dropped > 512 * 0.15);
  CHECK(dropped < 512 * 0.35);
  h.check_all("dropout");
}

TEST_CASE("embedding picks the table rows of one-hot labels; its table gradient matches finite differences") {
  LayerHarness h(4 * 3);
  const auto table = h.param({4, 3});
  const ValueId one_hot = h.p().new_value(plain_f32({2, 4}), false);
  h.p().pin(one_hot);
  float* hot = static_cast<float*>(h.p().data(one_hot).get_data_handle());
  std::fill(hot, hot + 8, 0.0f);
  hot[0 * 4 + 2] = 1.0f;  // sample 0: class 2
  hot[1 * 4 + 0] = 1.0f;  // sample 1: class 0
  h.finish(embedding(h.p(), one_hot, table));
  h.check_all("embedding");
}

TEST_CASE("timestep embedding with flip_sin_to_cos false and freq_shift 1 is sin then cos, frequencies over half - 1") {
  std::vector<float> table(8);
  timestep_embedding_table({10}, 8, table.data(), false, 1.0);
  for (int j = 0; j < 4; ++j) {
    const double freq = std::exp(-std::log(10000.0) * j / 3.0);
    CHECK(table[j] == doctest::Approx(std::sin(10.0 * freq)).epsilon(1e-5));
    CHECK(table[4 + j] == doctest::Approx(std::cos(10.0 * freq)).epsilon(1e-5));
  }
}

namespace {

// conv (16 -> 16) -> shifted group norm + SiLU -> conv (16 -> `co`) in a bf16
// program (with or without native kernels); returns the output [N,co,H,W]
// (plain f32) and sets the first convolution's output type.
std::vector<float> bf16_norm_chain(bool training, int64_t co, bool native_kernels, dnnl::memory::data_type& stored) {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const int64_t n = 2, c = 16, hw = 6;
  const int64_t count = c * c * 9 + c + co * c * 9 + co + 2 * c;
  dnnl::memory params(plain_f32({count}), engine);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  float* w = static_cast<float*>(params.get_data_handle());
  for (int64_t i = 0; i < count; ++i) w[i] = normal(rng);
  PrimitiveCache cache;
  Program p(engine, cache, params, count, training, Precision::bf16);
  p.set_native_kernels(native_kernels);
  const ValueId x = p.new_value(plain_f32({n, c, hw, hw}), false);
  const ValueId shift = p.new_value(plain_f32({n, c}), false);
  int64_t at = 0;
  auto param = [&](Shape shape) {
    const ParamRef ref{at, shape};
    at += shape_numel(shape);
    return ref;
  };
  const ParamRef w1 = param({c, c, 3, 3}), b1 = param({c}), w2 = param({co, c, 3, 3}), b2 = param({co});
  const ParamRef gamma = param({c}), beta = param({c});
  const ValueId h = conv2d(p, x, w1, b1, 1, 1);
  stored = p.desc(h).data_type();
  const ValueId y = conv2d(p, shifted_group_norm_act(p, h, shift, gamma, beta, 4, 1e-5f, Activation::silu), w2, b2, 1, 1);
  p.finalize(y, false);
  for (const ValueId v : {x, shift}) {
    float* d = static_cast<float*>(p.data(v).get_data_handle());
    for (int64_t i = 0; i < shape_numel(p.shape(v)); ++i) d[i] = normal(rng) * 3.0f;
  }
  p.prepare(stream, 0);
  p.run_forward(stream);
  std::vector<float> out(static_cast<size_t>(n * co * hw * hw));
  dnnl::memory y_mem = p.data(y), to(plain_f32({n, co, hw, hw}), engine, out.data());
  dnnl::reorder(y_mem, to).execute(stream, y_mem, to);
  stream.wait();
  return out;
}

double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST_CASE("bf16 activations: a convolution's output stays bf16 through the group norm, within rounding of f32 ones") {
  const bool native = native_bf16(dnnl::engine(dnnl::engine::kind::cpu, 0));
  const auto bf16_or_f32 = native ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
  // co 16: the second convolution reads the bf16 norm output as it is; co 8
  // (no bf16 kernel for 8 output channels): it reads an f32 copy.
  for (const int64_t co : {16, 8}) {
    CAPTURE(co);
    dnnl::memory::data_type inference_type{}, training_type{}, primitive_type{};
    const auto inference = bf16_norm_chain(false, co, true, inference_type);
    const auto training = bf16_norm_chain(true, co, true, training_type);
    // Training without the native GroupNorm keeps f32 activations (oneDNN's
    // normalisation backward takes no bf16 data).
    const auto f32_activations = bf16_norm_chain(true, co, false, primitive_type);
    CHECK(inference_type == bf16_or_f32);
    CHECK(training_type == bf16_or_f32);
    CHECK(primitive_type == dnnl::memory::data_type::f32);
    // Training and inference programs compute the same forward.
    CHECK(inference == training);
    const double error = relative_l2(training, f32_activations);
    MESSAGE("bf16 activations against f32 ones, relative L2: " << error);
    CHECK(error < 2e-2);
    if (native) CHECK(error > 0.0);
    if (!native) CHECK(error < 1e-6);
  }
}

TEST_CASE("bf16 inference: pooling, upsampling, concatenation with an f32 input, tokens and adds") {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const bool native = native_bf16(engine);
  const int64_t n = 2, c = 16, hw = 6, count = c * c * 9 + c;
  dnnl::memory params(plain_f32({count}), engine);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  float* w = static_cast<float*>(params.get_data_handle());
  for (int64_t i = 0; i < count; ++i) w[i] = normal(rng);
  std::vector<float> x_values(static_cast<size_t>(n * c * hw * hw));
  for (auto& v : x_values) v = 3.0f * normal(rng);
  std::vector<std::vector<float>> outs;
  for (const Precision precision : {Precision::bf16, Precision::f32}) {
    PrimitiveCache cache;
    Program p(engine, cache, params, count, false, precision);
    const ValueId x = p.new_value(plain_f32({n, c, hw, hw}), false);
    const ValueId h = conv2d(p, x, ParamRef{0, {c, c, 3, 3}}, ParamRef{c * c * 9, {c}}, 1, 1);
    const ValueId up = upsample_nearest2x(p, avg_pool2x(p, h));
    const ValueId joined = concat_channels(p, up, x);  // x: f32, plain
    const ValueId y = add(p, from_tokens(p, to_tokens(p, joined), {n, 2 * c, hw, hw}), joined);
    if (precision == Precision::bf16) {
      const auto expected = native ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
      for (const ValueId v : {h, up, joined, y}) CHECK(p.desc(v).data_type() == expected);
    }
    p.finalize(y, false);
    std::copy(x_values.begin(), x_values.end(), static_cast<float*>(p.data(x).get_data_handle()));
    p.prepare(stream, 0);
    p.run_forward(stream);
    std::vector<float> out(static_cast<size_t>(n * 2 * c * hw * hw));
    dnnl::memory y_mem = p.data(y), to(plain_f32({n, 2 * c, hw, hw}), engine, out.data());
    dnnl::reorder(y_mem, to).execute(stream, y_mem, to);
    stream.wait();
    outs.push_back(out);
  }
  const double error = relative_l2(outs[0], outs[1]);
  MESSAGE("bf16 inference layers against f32, relative L2: " << error);
  CHECK(error < 1e-2);
  if (native) CHECK(error > 0.0);  // the bf16 path did run
}

TEST_CASE("group_norm takes bf16 data in a training program with the native kernel only") {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  PrimitiveCache cache;
  dnnl::memory params(plain_f32({2 * 16}), engine);
  Program p(engine, cache, params, 2 * 16, /*training=*/true);
  const ValueId x = p.new_value(activation_desc({2, 16, 3, 3}, dnnl::memory::data_type::bf16), true);
  // The primitive version's backward (oneDNN's batch normalisation) takes f32 only.
  p.set_native_kernels(false);
  CHECK_THROWS_WITH_AS(group_norm(p, x, ParamRef{0, {16}}, ParamRef{16, {16}}, 4, 1e-5f),
                       doctest::Contains("bf16 in inference programs, or with the native kernel"),
                       std::invalid_argument);
  Program native(engine, cache, params, 2 * 16, /*training=*/true);
  const ValueId xn = native.new_value(activation_desc({2, 16, 3, 3}, dnnl::memory::data_type::bf16), true);
  const ValueId y = group_norm(native, xn, ParamRef{0, {16}}, ParamRef{16, {16}}, 4, 1e-5f);
  CHECK(native.desc(y).data_type() == dnnl::memory::data_type::bf16);
  CHECK(native.grad_desc(y).data_type() == dnnl::memory::data_type::f32);
}

namespace {

// A resnet-like head on two inputs, as the U-Net's up path builds it: the
// native GroupNorm + SiLU of their concatenation, a 1x1 convolution of that,
// plus a 1x1 shortcut of the concatenation, either read from a and b
// (`two`: no concatenation written, the shortcut's weights split by input
// channels) or through concat_channels. Returns the output; a and b are
// made channel-blocked by a 1x1 convolution each.
ValueId head_on_two(LayerHarness& h, bool two, ValueId a_in, ValueId b_in) {
  Program& p = h.p();
  const ValueId a = conv2d(p, a_in, h.param({16, 16, 1, 1}), h.param({16}), 1, 0);
  const ValueId b = conv2d(p, b_in, h.param({16, 16, 1, 1}), h.param({16}), 1, 0);
  const ParamRef gamma = h.param({32}), beta = h.param({32});
  const ParamRef w = h.param({16, 32, 1, 1}), bias = h.param({16});
  const ParamRef w_out = h.param({16, 32, 1, 1}), bias_out = h.param({16});
  if (!two) {
    const ValueId x = concat_channels(p, a, b);
    const ValueId n = group_norm_act(p, x, gamma, beta, 4, 1e-5f, Activation::silu);
    return conv2d_add(p, n, w_out, bias_out, conv2d(p, x, w, bias, 1, 0), 1, 0, true);
  }
  REQUIRE(group_norm_reads_two(p, a, b));
  const ValueId n = group_norm_act_two(p, a, b, gamma, beta, 4, 1e-5f, Activation::silu);
  const ParamRef wa{w.offset, {16, 16, 1, 1}, {32, 1, 1, 1}}, wb{w.offset + 16, {16, 16, 1, 1}, {32, 1, 1, 1}};
  const ValueId shortcut = conv2d_add(p, b, wb, ParamRef{}, conv2d(p, a, wa, bias, 1, 0), 1, 0, true);
  return conv2d_add(p, n, w_out, bias_out, shortcut, 1, 0, true);
}

}  // namespace

TEST_CASE("group norm and a 1x1 convolution read from two inputs: gradients match finite differences") {
  const int64_t params = 2 * (16 * 16 + 16) + 2 * 32 + 2 * (16 * 32 + 16);
  LayerHarness h(params);
  h.p().set_native_kernels(true);
  const ValueId a = h.input({2, 16, 3, 3}), b = h.input({2, 16, 3, 3});
  h.finish(head_on_two(h, true, a, b));
  h.check_all("two-input head");
}

TEST_CASE("group norm and a 1x1 convolution read from two inputs equal them on the concatenation") {
  const int64_t params = 2 * (16 * 16 + 16) + 2 * 32 + 2 * (16 * 32 + 16);
  // bf16: bf16 activations and convolutions, whose results the split
  // shortcut rounds once more (the first half's output, stored bf16, where
  // the shortcut's two halves partly cancel: measured 3.7e-2 here).
  for (const Precision precision : {Precision::f32, Precision::bf16}) {
  CAPTURE(precision == Precision::bf16);
  const double bound = precision == Precision::f32 ? 1e-5 : 6e-2;
  std::vector<std::vector<float>> outputs, grads, input_grads;
  for (const bool two : {false, true}) {
    CAPTURE(two);
    LayerHarness h(params, precision);  // the same seed: the same parameters and inputs
    h.p().set_native_kernels(true);
    const ValueId a = h.input({2, 16, 5, 5}), b = h.input({2, 16, 5, 5});
    const ValueId y = head_on_two(h, two, a, b);
    h.finish(y);
    h.backward();
    const auto read = [&](const dnnl::memory& m, int64_t n) {
      const float* f = static_cast<const float*>(m.get_data_handle());
      return std::vector<float>(f, f + n);
    };
    // The output in plain f32 (a bf16 program's is bf16).
    dnnl::memory y_f32(plain_f32(h.p().shape(y)), h.p().engine());
    dnnl::stream stream(h.p().engine());
    dnnl::memory y_data = h.p().data(y);
    dnnl::reorder(y_data, y_f32).execute(stream, y_data, y_f32);
    stream.wait();
    outputs.push_back(read(y_f32, shape_numel(h.p().shape(y))));
    grads.push_back(read(h.p().grad_staging(), params));
    std::vector<float> da = read(h.p().grad(a), 2 * 16 * 25), db = read(h.p().grad(b), 2 * 16 * 25);
    da.insert(da.end(), db.begin(), db.end());
    input_grads.push_back(da);
  }
  const auto worst = [](const std::vector<float>& x, const std::vector<float>& y) {
    REQUIRE(x.size() == y.size());
    double w = 0;
    for (size_t i = 0; i < x.size(); ++i)
      w = std::max(w, std::fabs(double(x[i]) - y[i]) / std::max(1.0, std::fabs(double(y[i]))));
    return w;
  };
  CHECK(worst(outputs[1], outputs[0]) < bound);
  CHECK(worst(grads[1], grads[0]) < bound);
  CHECK(worst(input_grads[1], input_grads[0]) < bound);
  CHECK(std::any_of(grads[1].begin(), grads[1].end(), [](float v) { return v != 0.0f; }));
  }
}
