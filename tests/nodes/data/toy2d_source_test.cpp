#include "nodes/data/toy2d_source.hpp"

#include "node_test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <set>

using namespace diffuflow;
using namespace diffuflow::test;

TEST_CASE("toy2d_source emits [N,2,1,1] points with x and y as the two channels") {
  RunContext ctx;
  auto source = make_node("toy2d_source", "{kind: gaussians8, batch_size: 128, count: 512, noise: 0.0}", ctx);
  CollectingEmitter out;
  REQUIRE(source->produce(out));
  const Tensor& x0 = out.packet(0).tensor("x0");
  CHECK(x0.shape() == Shape{128, 2, 1, 1});
  const auto v = x0.to_vector();
  auto labels = out.packet(0).tensor("labels").map<int32_t>();
  for (int i = 0; i < 128; ++i) {
    const double angle = 2.0 * 3.14159265358979 * labels[i] / 8.0;
    CHECK(v[2 * i] == doctest::Approx(0.75 * std::cos(angle)).epsilon(1e-5));
    CHECK(v[2 * i + 1] == doctest::Approx(0.75 * std::sin(angle)).epsilon(1e-5));
  }
}

TEST_CASE("sample_toy2d moons without noise lie on the two half circles, scaled into [-1,1]") {
  std::mt19937_64 rng(1);
  std::vector<int32_t> labels;
  const auto p = sample_toy2d("moons", 1000, rng, 0.0f, &labels);
  REQUIRE(p.size() == 2000);
  std::set<int32_t> seen(labels.begin(), labels.end());
  CHECK(seen == std::set<int32_t>{0, 1});
  for (int i = 0; i < 1000; ++i) {
    const double x = p[2 * i] * 1.5 + 0.5;
    const double y = p[2 * i + 1] * 1.5 + 0.25;
    const double cx = labels[i] == 0 ? 0.0 : 1.0;
    const double cy = labels[i] == 0 ? 0.0 : 0.5;
    CHECK(std::hypot(x - cx, y - cy) == doctest::Approx(1.0).epsilon(1e-4));
    CHECK(std::abs(p[2 * i]) <= 1.0f + 1e-5f);
    CHECK(std::abs(p[2 * i + 1]) <= 1.0f);
  }
}

TEST_CASE("sample_toy2d swiss roll stays within [-1,1] and noise spreads the points") {
  std::mt19937_64 rng(2);
  const auto clean = sample_toy2d("swiss_roll", 2000, rng, 0.0f);
  double max_abs = 0.0;
  for (float v : clean) max_abs = std::max(max_abs, static_cast<double>(std::abs(v)));
  CHECK(max_abs <= 1.0);
  CHECK(max_abs > 0.8);
  // Noise of std 0.1 moves gaussians8 points off their centres by about 0.1 per axis.
  std::mt19937_64 a(3);
  std::vector<int32_t> labels;
  const auto noisy = sample_toy2d("gaussians8", 4000, a, 0.1f, &labels);
  double sum_sq = 0.0;
  for (int i = 0; i < 4000; ++i) {
    const double angle = 2.0 * 3.14159265358979 * labels[i] / 8.0;
    const double dx = noisy[2 * i] - 0.75 * std::cos(angle);
    sum_sq += dx * dx;
  }
  CHECK(std::sqrt(sum_sq / 4000) == doctest::Approx(0.1).epsilon(0.1));
}

TEST_CASE("sample_toy2d rejects an unknown kind, naming the valid ones") {
  std::mt19937_64 rng(0);
  CHECK_THROWS_WITH_AS(sample_toy2d("spiral", 4, rng, 0.0f), doctest::Contains("moons, swiss_roll, gaussians8"),
                       std::invalid_argument);
}

TEST_CASE("toy2d_source: same seed same points, a fresh order every epoch, epochs and max_steps counted") {
  auto run = [](uint64_t seed) {
    RunContext ctx(Device::host(), seed);
    auto source = make_node("toy2d_source", "{kind: swiss_roll, batch_size: 64, count: 64, epochs: 2}", ctx);
    CollectingEmitter out;
    while (source->produce(out)) {
    }
    REQUIRE(out.size() == 2);
    return std::make_pair(out.packet(0).tensor("x0").to_vector(), out.packet(1).tensor("x0").to_vector());
  };
  const auto a = run(5);
  const auto b = run(5);
  CHECK(a == b);
  CHECK(a.first != a.second);
  CHECK(run(6).first != a.first);

  RunContext ctx;
  ctx.max_steps = 7;
  auto endless = make_node("toy2d_source", "{count: 100, batch_size: 32, epochs: 0}", ctx);
  CollectingEmitter out;
  while (endless->produce(out)) {
  }
  CHECK(out.size() == 7);
  CHECK(out.packet(6).seq() == 6);
}
