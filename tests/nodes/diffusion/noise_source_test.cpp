#include "nodes/diffusion/noise_source.hpp"
#include "node_test_util.hpp"
#include "diffusion_fixture.hpp"

#include <doctest/doctest.h>

#include <cmath>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::make_node;
using diffuflow::test::max_abs_diff;

namespace {

CollectingEmitter drain(Node& node) {
  CollectingEmitter out;
  while (node.produce(out)) {
  }
  return out;
}

}  // namespace

TEST_CASE("noise_source emits ceil(count / batch) chains of x_t [N,C,H,W], the last holding the rest") {
  RunContext ctx;
  auto node = make_node("noise_source", "{shape: [2, 1, 1], batch_size: 3, count: 7}", ctx);
  const CollectingEmitter out = drain(*node);
  REQUIRE(out.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(out.packet(i).seq() == int64_t(i));
    CHECK(out.packet(i).has("x_t"));
  }
  CHECK(out.packet(0).tensor("x_t").shape() == Shape{3, 2, 1, 1});
  CHECK(out.packet(2).tensor("x_t").shape() == Shape{1, 2, 1, 1});
}

TEST_CASE("noise_source noise depends on seed and chain index only, and is standard normal") {
  RunContext a(Device::host(), 11), b(Device::host(), 11), c(Device::host(), 12);
  const std::string params = "{shape: [1, 16, 16], batch_size: 16, count: 32}";
  auto na = make_node("noise_source", params, a), nb = make_node("noise_source", params, b),
       nc = make_node("noise_source", params, c);
  const auto oa = drain(*na), ob = drain(*nb), oc = drain(*nc);
  const auto first = oa.packet(0).tensor("x_t").to_vector();
  CHECK(max_abs_diff(first, ob.packet(0).tensor("x_t").to_vector()) == 0.0);
  CHECK(max_abs_diff(first, oa.packet(1).tensor("x_t").to_vector()) > 0.5);
  CHECK(max_abs_diff(first, oc.packet(0).tensor("x_t").to_vector()) > 0.5);
  double sum = 0, sum_sq = 0;
  for (float v : first) {
    sum += v;
    sum_sq += double(v) * v;
  }
  const double mean = sum / first.size(), var = sum_sq / first.size() - mean * mean;
  CHECK(std::fabs(mean) < 0.1);  // 4096 samples: the std of the mean is 1/64
  CHECK(std::fabs(var - 1.0) < 0.1);
}

TEST_CASE("noise_source honours max_steps and a stop request") {
  RunContext ctx;
  ctx.max_steps = 2;
  auto node = make_node("noise_source", "{shape: [1, 4, 4], batch_size: 1, count: 10}", ctx);
  CHECK(drain(*node).size() == 2);
  RunContext stopped;
  stopped.request_stop();
  auto other = make_node("noise_source", "{shape: [1, 4, 4], batch_size: 1, count: 10}", stopped);
  CHECK(drain(*other).size() == 0);
}

TEST_CASE("noise_source rejects a shape that is not [C, H, W]") {
  RunContext ctx;
  CHECK_THROWS_WITH(make_node("noise_source", "{shape: [28, 28]}", ctx), doctest::Contains("[C, H, W]"));
}
