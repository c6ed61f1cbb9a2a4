#include "nodes/data/synthetic_source.hpp"

#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <map>

using namespace diffuflow;
using namespace diffuflow::test;

namespace {

CollectingEmitter drain(Node& source) {
  CollectingEmitter out;
  int guard = 10000;
  while (source.produce(out) && guard-- > 0) {
  }
  return out;
}

// Fraction of pixels brighter than the background, per image of a [N,C,H,W] batch.
std::vector<double> ink(const Tensor& x0) {
  const auto v = x0.to_vector();
  const int64_t per_image = x0.numel() / x0.dim(0);
  std::vector<double> result;
  for (int64_t n = 0; n < x0.dim(0); ++n) {
    const auto begin = v.begin() + n * per_image;
    result.push_back(std::count_if(begin, begin + per_image, [](float x) { return x > 0.0f; }) /
                     static_cast<double>(per_image));
  }
  return result;
}

}  // namespace

TEST_CASE("synthetic_source shapes: [N,1,28,28] in [-1,1], black ground, balanced labels 0..3") {
  RunContext ctx;
  auto source = make_node("synthetic_source", "{kind: shapes, batch_size: 32, count: 64, shuffle: false}", ctx);
  CollectingEmitter out;
  REQUIRE(source->produce(out));
  const Tensor& x0 = out.packet(0).tensor("x0");
  CHECK(x0.shape() == Shape{32, 1, 28, 28});
  const auto v = x0.to_vector();
  CHECK(*std::min_element(v.begin(), v.end()) == doctest::Approx(-1.0f));
  CHECK(*std::max_element(v.begin(), v.end()) <= 1.0f);
  // Antialiased edges: some pixels lie strictly between ground and stroke.
  CHECK(std::count_if(v.begin(), v.end(), [](float x) { return x > -0.9f && x < 0.3f; }) > 32);
  for (double fraction : ink(x0)) {
    CHECK(fraction > 0.02);  // every image has a visible shape
    CHECK(fraction < 0.7);
  }
  auto labels = out.packet(0).tensor("labels").map<int32_t>();
  std::map<int32_t, int> histogram;
  for (int32_t label : labels) ++histogram[label];
  CHECK(histogram == std::map<int32_t, int>{{0, 8}, {1, 8}, {2, 8}, {3, 8}});
}

TEST_CASE("synthetic_source digits: labels are the digit and every glyph leaves ink") {
  RunContext ctx;
  auto source = make_node("synthetic_source", "{kind: digits, batch_size: 20, count: 20, shuffle: false}", ctx);
  CollectingEmitter out;
  REQUIRE(source->produce(out));
  auto labels = out.packet(0).tensor("labels").map<int32_t>();
  for (int i = 0; i < 20; ++i) CHECK(labels[i] == i % 10);
  const auto fractions = ink(out.packet(0).tensor("x0"));
  for (double fraction : fractions) {
    CHECK(fraction > 0.03);
    CHECK(fraction < 0.5);
  }
  // An 8 has more strokes than a 1 in the same set.
  CHECK(fractions[8] > fractions[1]);
}

TEST_CASE("synthetic_source is deterministic per seed and image index, whatever the node name") {
  auto batch = [](uint64_t seed, const std::string& node_name) {
    RunContext ctx(Device::host(), seed);
    auto source = make_node("synthetic_source", "{kind: digits, batch_size: 16, count: 16, shuffle: false}", ctx,
                            node_name);
    CollectingEmitter out;
    REQUIRE(source->produce(out));
    return out.packet(0).tensor("x0").to_vector();
  };
  CHECK(batch(3, "a") == batch(3, "a"));
  CHECK(batch(3, "a") == batch(3, "b"));
  CHECK(batch(3, "a") != batch(4, "a"));
}

TEST_CASE("synthetic_source shuffles the same fixed set into a new order each epoch") {
  RunContext ctx(Device::host(), 11);
  auto source = make_node("synthetic_source", "{kind: shapes, batch_size: 12, count: 12, epochs: 2}", ctx);
  auto out = drain(*source);
  REQUIRE(out.size() == 2);
  const auto first = out.packet(0).tensor("x0").to_vector();
  const auto second = out.packet(1).tensor("x0").to_vector();
  CHECK(first != second);
  auto image_set = [](const std::vector<float>& v) {
    std::vector<std::vector<float>> images;
    for (size_t i = 0; i < v.size(); i += 28 * 28) images.emplace_back(v.begin() + i, v.begin() + i + 28 * 28);
    std::sort(images.begin(), images.end());
    return images;
  };
  CHECK(image_set(first) == image_set(second));
}

TEST_CASE("synthetic_source colour images have 3 channels of different values") {
  RunContext ctx;
  auto source = make_node("synthetic_source", "{kind: shapes, size: 32, channels: 3, batch_size: 4, count: 4}", ctx);
  CollectingEmitter out;
  REQUIRE(source->produce(out));
  const Tensor& x0 = out.packet(0).tensor("x0");
  CHECK(x0.shape() == Shape{4, 3, 32, 32});
  const auto v = x0.to_vector();
  const size_t plane = 32 * 32;
  CHECK(!std::equal(v.begin(), v.begin() + plane, v.begin() + plane));
}

TEST_CASE("synthetic_source counts batches from count, epochs, drop_last and max_steps") {
  RunContext ctx;
  auto dropped = make_node("synthetic_source", "{count: 10, batch_size: 4, epochs: 2}", ctx);
  CHECK(drain(*dropped).size() == 4);
  auto kept = make_node("synthetic_source", "{count: 10, batch_size: 4, epochs: 2, drop_last: false}", ctx);
  auto out = drain(*kept);
  REQUIRE(out.size() == 6);
  CHECK(out.packet(2).tensor("x0").dim(0) == 2);
  CHECK(out.packet(5).seq() == 5);
  ctx.max_steps = 5;
  auto endless = make_node("synthetic_source", "{count: 8, batch_size: 4, epochs: 0}", ctx);
  CHECK(drain(*endless).size() == 5);
}
