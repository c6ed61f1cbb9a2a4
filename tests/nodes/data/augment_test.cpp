#include "nodes/data/augment.hpp"

#include "node_test_util.hpp"

#include <doctest/doctest.h>

#include <set>

using namespace diffuflow;
using namespace diffuflow::test;

namespace {

// A batch whose every pixel is distinct: value = index / numel, within [0, 1).
Tensor ramp_batch(int64_t n, int64_t c, int64_t h, int64_t w) {
  std::vector<float> values(static_cast<size_t>(n * c * h * w));
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) / values.size();
  return Tensor::from_vector({n, c, h, w}, values);
}

std::vector<float> augment_once(const std::string& params, const Tensor& x0, int64_t seq, uint64_t seed = 0) {
  RunContext ctx(Device::host(), seed);
  auto node = make_node("augment", params, ctx);
  CollectingEmitter out;
  node->process(single_input(Packet(seq).with("x0", x0).share()), out);
  REQUIRE(out.size() == 1);
  CHECK(out.packet(0).seq() == seq);
  return out.packet(0).tensor("x0").to_vector();
}

// The (dy, dx) for which `out` is `in` shifted with -1 fill, or nullopt-like {99, 99}.
std::pair<int, int> find_shift(const float* in, const float* out, int h, int w, int pad) {
  for (int dy = -pad; dy <= pad; ++dy) {
    for (int dx = -pad; dx <= pad; ++dx) {
      bool match = true;
      for (int y = 0; y < h && match; ++y) {
        for (int x = 0; x < w && match; ++x) {
          const int sy = y + dy;
          const int sx = x + dx;
          const float expected = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? in[sy * w + sx] : -1.0f;
          match = out[y * w + x] == expected;
        }
      }
      if (match) return {dy, dx};
    }
  }
  return {99, 99};
}

}  // namespace

TEST_CASE("augment with p=1 mirrors every image left-right and keeps the input untouched") {
  const Tensor x0 = ramp_batch(2, 3, 4, 5);
  const auto before = x0.to_vector();
  const auto out = augment_once("{p: 1.0}", x0, 0);
  for (int plane = 0; plane < 6; ++plane) {
    for (int y = 0; y < 4; ++y) {
      for (int x = 0; x < 5; ++x) CHECK(out[(plane * 4 + y) * 5 + x] == before[(plane * 4 + y) * 5 + (4 - x)]);
    }
  }
  CHECK(x0.to_vector() == before);
}

TEST_CASE("augment with p=0 and pad=0 passes the packet through unchanged") {
  RunContext ctx;
  auto node = make_node("augment", "{p: 0.0}", ctx);
  const Tensor x0 = ramp_batch(1, 1, 2, 2);
  auto packet = Packet(3).with("x0", x0).with("labels", Tensor::from_vector({1}, {0.0f})).share();
  CollectingEmitter out;
  node->process(single_input(packet), out);
  REQUIRE(out.size() == 1);
  CHECK(out.emitted[0].second == packet);
}

TEST_CASE("augment with padding shifts each image by at most pad and fills with black") {
  const Tensor x0 = ramp_batch(32, 1, 6, 6);
  const auto in = x0.to_vector();
  const auto out = augment_once("{p: 0.0, pad: 2}", x0, 1);
  std::set<std::pair<int, int>> shifts;
  for (int i = 0; i < 32; ++i) {
    const auto shift = find_shift(in.data() + i * 36, out.data() + i * 36, 6, 6, 2);
    CHECK(shift.first != 99);
    shifts.insert(shift);
  }
  CHECK(shifts.size() > 5);  // 25 possible offsets; 32 draws hit many of them
}

TEST_CASE("augment with p=0.5 flips some images of a batch and not others") {
  const Tensor x0 = ramp_batch(64, 1, 2, 3);
  const auto in = x0.to_vector();
  const auto out = augment_once("{p: 0.5}", x0, 0);
  int flipped = 0;
  for (int i = 0; i < 64; ++i) flipped += out[i * 6] == in[i * 6 + 2] ? 1 : 0;
  CHECK(flipped > 10);
  CHECK(flipped < 54);
}

TEST_CASE("augment is deterministic for a given seed and seq and differs across steps") {
  const Tensor x0 = ramp_batch(16, 1, 8, 8);
  const std::string params = "{p: 0.5, pad: 3}";
  CHECK(augment_once(params, x0, 4, 1) == augment_once(params, x0, 4, 1));
  CHECK(augment_once(params, x0, 4, 1) != augment_once(params, x0, 5, 1));
  CHECK(augment_once(params, x0, 4, 1) != augment_once(params, x0, 4, 2));
}

TEST_CASE("augment rejects x0 that is not [N,C,H,W]") {
  RunContext ctx;
  auto node = make_node("augment", "{p: 1.0}", ctx);
  CollectingEmitter out;
  CHECK_THROWS_WITH(node->process(single_input(Packet(0).with("x0", Tensor::from_vector({4}, {0, 0, 0, 0})).share()),
                                  out),
                    doctest::Contains("[N,C,H,W]"));
}
