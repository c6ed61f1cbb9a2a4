#include "nodes/diffusion/noiser.hpp"

#include "diffusion_fixture.hpp"
#include "node_test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::field_names;
using diffuflow::test::make_node;
using diffuflow::test::make_resource;
using diffuflow::test::max_abs_diff;
using diffuflow::test::single_input;
using diffuflow::test::timesteps_tensor;

namespace {

Tensor uniform_images(const Shape& shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (auto& v : values) v = uniform(rng);
  return Tensor::from_vector(shape, values);
}

struct NoiserRun {
  Tensor noise;
  Tensor x_t;
};

NoiserRun run_noiser(Node& node, const Tensor& x0, const Tensor& t, int64_t seq) {
  CollectingEmitter out;
  node.process(single_input(Packet(seq).with("x0", x0).with("t", t).share()), out);
  REQUIRE(out.size() == 1);
  CHECK(out.port(0) == 0);
  CHECK(out.packet(0).seq() == seq);
  CHECK(out.packet(0).has("x0"));  // untouched fields travel on
  return {out.packet(0).tensor("noise"), out.packet(0).tensor("x_t")};
}

}  // namespace

TEST_CASE("noiser writes x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise for each image's own t") {
  RunContext ctx(Device::host(), 7);
  make_resource("noise_schedule", "schedule", "{kind: cosine}", ctx);
  auto node = make_node("noiser", "{schedule: schedule}", ctx);
  const auto schedule = ctx.resource_as<NoiseSchedule>("schedule");
  const Shape shape{3, 2, 5, 5};
  const Tensor x0 = uniform_images(shape, 1);
  const std::vector<int64_t> ts{0, 400, 999};
  const NoiserRun r = run_noiser(*node, x0, timesteps_tensor(ts), 0);
  REQUIRE(r.noise.shape() == shape);
  REQUIRE(r.x_t.shape() == shape);
  const auto x0v = x0.to_vector(), nv = r.noise.to_vector(), xv = r.x_t.to_vector();
  const size_t per_image = 50;
  double worst = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    const int t = static_cast<int>(ts[i / per_image]);
    const float expected = schedule->sqrt_alpha_bar(t) * x0v[i] + schedule->sqrt_one_minus_alpha_bar(t) * nv[i];
    worst = std::max(worst, std::fabs(double(expected) - xv[i]));
  }
  CHECK(worst <= 1e-6);
  // at t = 999 almost nothing of x0 is left; at t = 0 almost all of it
  CHECK(std::fabs(xv[0] - x0v[0]) < 0.05);
}

TEST_CASE("noiser matches the PyTorch q_sample when given the fixture's eps through the same formula") {
  const auto& ref = diffuflow::test::ddpm_fixture();
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear}", ctx);
  const auto schedule = ctx.resource_as<NoiseSchedule>("schedule");
  DiffusionSteps steps(*schedule, ctx.device());
  const Tensor x_t = steps.q_sample(ref.tensor("q.x0"), ref.tensor("q.eps"), timesteps_tensor(ref.ints("q.t")));
  CHECK(max_abs_diff(x_t.to_vector(), ref.floats("q.x_t.linear")) <= 1e-6);
}

TEST_CASE("noiser draws the same noise for the same seed and seq, and different noise for another seq") {
  const Shape shape{2, 1, 6, 6};
  const Tensor x0 = uniform_images(shape, 3);
  const Tensor t = timesteps_tensor({10, 20});
  RunContext ctx_a(Device::host(), 42), ctx_b(Device::host(), 42), ctx_c(Device::host(), 43);
  for (RunContext* ctx : {&ctx_a, &ctx_b, &ctx_c}) make_resource("noise_schedule", "schedule", "{}", *ctx);
  auto a = make_node("noiser", "{schedule: schedule}", ctx_a);
  auto b = make_node("noiser", "{schedule: schedule}", ctx_b);
  auto c = make_node("noiser", "{schedule: schedule}", ctx_c);
  const auto first = run_noiser(*a, x0, t, 5).noise.to_vector();
  CHECK(max_abs_diff(first, run_noiser(*b, x0, t, 5).noise.to_vector()) == 0.0);
  CHECK(max_abs_diff(first, run_noiser(*a, x0, t, 5).noise.to_vector()) == 0.0);  // replay on the same node
  CHECK(max_abs_diff(first, run_noiser(*a, x0, t, 6).noise.to_vector()) > 0.5);
  CHECK(max_abs_diff(first, run_noiser(*c, x0, t, 5).noise.to_vector()) > 0.5);  // another pipeline seed
}

TEST_CASE("noiser draws each image's noise from that image's own stream, whichever thread draws it") {
  RunContext ctx(Device::host(), 9);
  make_resource("noise_schedule", "schedule", "{}", ctx);
  auto node = make_node("noiser", "{schedule: schedule}", ctx);
  const Shape shape{16, 1, 8, 8};
  const std::vector<int64_t> ts(16, 100);
  const int64_t seq = 3;
  const auto noise = run_noiser(*node, uniform_images(shape, 4), timesteps_tensor(ts), seq).noise.to_vector();
  // Image i is the stream of its place in the data (seq * batch + i), drawn alone.
  std::vector<float> alone(64);
  for (int64_t i = 0; i < 16; ++i) {
    ctx.item_rng("noiser", seq * 16 + i).fill_normal(alone.data(), alone.size());
    CAPTURE(i);
    CHECK(std::equal(alone.begin(), alone.end(), noise.begin() + i * 64));
  }
}

TEST_CASE("noiser's noise is standard normal over a big batch") {
  RunContext ctx(Device::host(), 1);
  make_resource("noise_schedule", "schedule", "{}", ctx);
  auto node = make_node("noiser", "{schedule: schedule}", ctx);
  const Shape shape{64, 1, 28, 28};
  std::vector<int64_t> ts(64, 500);
  const auto noise = run_noiser(*node, Tensor::zeros(shape, DType::f32, Device::host()->engine()),
                                timesteps_tensor(ts), 0)
                         .noise.to_vector();
  double sum = 0, sum_sq = 0, fourth = 0;
  for (float v : noise) {
    sum += v;
    sum_sq += double(v) * v;
    fourth += double(v) * v * v * v;
  }
  const double n = static_cast<double>(noise.size());  // 50176 samples
  const double mean = sum / n;
  const double var = sum_sq / n - mean * mean;
  CHECK(std::fabs(mean) < 0.02);           // ~4.5 standard errors
  CHECK(std::fabs(var - 1.0) < 0.03);      // ~4.8 standard errors
  CHECK(std::fabs(fourth / n - 3.0) < 0.25);  // a Gaussian's kurtosis, not a uniform's 1.8
}

TEST_CASE("noiser reports a timestep outside the schedule with the valid range") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{timesteps: 100}", ctx);
  auto node = make_node("noiser", "{schedule: schedule}", ctx);
  const Tensor x0 = uniform_images({2, 1, 2, 2}, 1);
  CollectingEmitter out;
  CHECK_THROWS_WITH(node->process(single_input(Packet(0).with("x0", x0).with("t", timesteps_tensor({5, 100})).share()),
                                  out),
                    doctest::Contains("[0, 99]"));
}

TEST_CASE("noiser's contract declares a device node reading x0 and t and writing noise and x_t") {
  const NodeContract* c = Registry::instance().node_contract("noiser");
  REQUIRE(c != nullptr);
  CHECK_FALSE(c->host_only);
  REQUIRE(c->inputs.size() == 1);
  CHECK(field_names(c->inputs[0]) == std::vector<std::string>{"x0", "t"});
  CHECK(field_names(c->outputs[0]) == std::vector<std::string>{"noise", "x_t"});
  RunContext ctx;
  CHECK_THROWS_AS(make_node("noiser", "{}", ctx), ConfigErrors);  // the schedule is required
}
