#include "nodes/diffusion/noising_chain.hpp"

#include "diffusion_fixture.hpp"
#include "node_test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <random>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::make_node;
using diffuflow::test::make_resource;
using diffuflow::test::single_input;

namespace {

Tensor uniform_images(const Shape& shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (auto& v : values) v = uniform(rng);
  return Tensor::from_vector(shape, values);
}

const Packet& run_chain(Node& node, const Tensor& x0, CollectingEmitter& out, int64_t seq = 0) {
  node.process(single_input(Packet(seq).with("x0", x0).share()), out);
  REQUIRE(out.size() >= 1);
  return out.packet(out.size() - 1);
}

// Column k of image n from a [N, K, ...] chain, flattened.
std::vector<float> column(const std::vector<float>& chain, const Shape& shape, int64_t n, int64_t k) {
  const int64_t per_image = shape_numel(shape) / (shape[0] * shape[1]);
  const auto begin = chain.begin() + (n * shape[1] + k) * per_image;
  return std::vector<float>(begin, begin + per_image);
}

std::vector<float> image(const std::vector<float>& batch, int64_t per_image, int64_t n) {
  return std::vector<float>(batch.begin() + n * per_image, batch.begin() + (n + 1) * per_image);
}

}  // namespace

TEST_CASE("noising_chain writes [N, K, C, H, W] with x0 in front and one column per listed t") {
  RunContext ctx(Device::host(), 3);
  make_resource("noise_schedule", "schedule", "{timesteps: 200, beta_end: 0.1}", ctx);
  auto node = make_node("noising_chain", "{schedule: schedule, at: [0, 50, 100, 199]}", ctx);
  const Tensor x0 = uniform_images({2, 1, 4, 4}, 9);
  CollectingEmitter out;
  const Packet& p = run_chain(*node, x0, out);
  const Tensor& chain = p.tensor("chain");
  CHECK(chain.shape() == Shape{2, 5, 1, 4, 4});
  const auto labels = p.tensor("chain_t");
  REQUIRE(labels.shape() == Shape{5});
  auto host = labels.map<int32_t>();
  CHECK(std::vector<int32_t>(host.begin(), host.end()) == std::vector<int32_t>{-1, 0, 50, 100, 199});
  const auto cv = chain.to_vector(), xv = x0.to_vector();
  for (int64_t n = 0; n < 2; ++n) CHECK(column(cv, chain.shape(), n, 0) == image(xv, 16, n));
}

TEST_CASE("noising_chain in closed form shares eps: the t = 0 column is sqrt(abar_0) x0 + sqrt(1 - abar_0) eps") {
  RunContext ctx(Device::host(), 3);
  make_resource("noise_schedule", "schedule", "{}", ctx);
  const auto schedule = ctx.resource_as<NoiseSchedule>("schedule");
  auto node = make_node("noising_chain", "{schedule: schedule, at: [0, 500], mode: closed_form, include_x0: false}",
                        ctx);
  const Tensor x0 = uniform_images({2, 1, 4, 4}, 9);
  CollectingEmitter out;
  const Packet& p = run_chain(*node, x0, out);
  const Tensor& chain = p.tensor("chain");
  REQUIRE(chain.shape() == Shape{2, 2, 1, 4, 4});
  const auto cv = chain.to_vector(), xv = x0.to_vector();
  for (int64_t n = 0; n < 2; ++n) {
    const auto c0 = column(cv, chain.shape(), n, 0), c1 = column(cv, chain.shape(), n, 1), x = image(xv, 16, n);
    for (size_t i = 0; i < x.size(); ++i) {
      // recover eps from the t = 0 column and predict the t = 500 column from it
      const float eps = (c0[i] - schedule->sqrt_alpha_bar(0) * x[i]) / schedule->sqrt_one_minus_alpha_bar(0);
      const float predicted = schedule->sqrt_alpha_bar(500) * x[i] + schedule->sqrt_one_minus_alpha_bar(500) * eps;
      CHECK(c1[i] == doctest::Approx(predicted).epsilon(1e-3));
      CHECK(std::fabs(c0[i] - x[i]) < 0.05);  // abar_0 = 0.9999: barely noised
    }
  }
}

TEST_CASE("noising_chain as a Markov chain keeps x0 at t = 0 and ends in noise of unit variance") {
  RunContext ctx(Device::host(), 11);
  // 200 steps up to beta 0.2: abar_199 ~ 1e-9, pure noise at a fifth of the default's cost
  make_resource("noise_schedule", "schedule", "{timesteps: 200, beta_end: 0.2}", ctx);
  auto node = make_node("noising_chain", "{schedule: schedule, at: [0, 199], include_x0: false}", ctx);
  const Shape shape{16, 1, 8, 8};
  const Tensor x0 = uniform_images(shape, 4);
  CollectingEmitter out;
  const Packet& p = run_chain(*node, x0, out);
  const Tensor& chain = p.tensor("chain");
  REQUIRE(chain.shape() == Shape{16, 2, 1, 8, 8});
  const auto cv = chain.to_vector(), xv = x0.to_vector();
  double sum_sq = 0, corr = 0;
  for (int64_t n = 0; n < 16; ++n) {
    const auto first = column(cv, chain.shape(), n, 0), last = column(cv, chain.shape(), n, 1), x = image(xv, 64, n);
    for (size_t i = 0; i < x.size(); ++i) {
      CHECK(std::fabs(first[i] - x[i]) < 0.05);
      sum_sq += double(last[i]) * last[i];
      corr += double(last[i]) * x[i];
    }
  }
  CHECK(std::fabs(sum_sq / 1024 - 1.0) < 0.15);  // x_199 ~ N(sqrt(abar) x0 ~ 0, 1)
  CHECK(std::fabs(corr / 1024) < 0.1);           // and forgets x0
  // the same seed and seq replays the same chain
  CollectingEmitter again;
  CHECK(run_chain(*node, x0, again).tensor("chain").to_vector() == cv);
}

TEST_CASE("noising_chain rejects timesteps out of order or outside the schedule") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{timesteps: 100}", ctx);
  CHECK_THROWS_WITH_AS(make_node("noising_chain", "{schedule: schedule, at: [0, 100]}", ctx),
                       doctest::Contains("[0, 99]"), ConfigError);
  CHECK_THROWS_WITH_AS(make_node("noising_chain", "{schedule: schedule, at: [50, 10]}", ctx),
                       doctest::Contains("increasing"), ConfigError);
  CHECK_THROWS_AS(make_node("noising_chain", "{schedule: schedule, mode: backwards}", ctx), ConfigErrors);
}
