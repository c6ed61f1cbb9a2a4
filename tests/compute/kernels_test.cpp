// KernelSet: primitives built once per key, a shared scratchpad that grows to
// the largest need, lookups from several threads.
#include "compute/kernels.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <utility>

using namespace diffuflow;

namespace {

enum class Op { add, mul };

dnnl::binary::primitive_desc binary_pd(const dnnl::engine& engine, Op op, const Shape& shape) {
  const auto md = plain_f32(shape);
  const auto alg = op == Op::add ? dnnl::algorithm::binary_add : dnnl::algorithm::binary_mul;
  return dnnl::binary::primitive_desc(dnnl::binary::desc(alg, md, md, md), user_scratchpad_attr(), engine);
}

dnnl::memory filled(const dnnl::engine& engine, const Shape& shape, float value) {
  dnnl::memory m(plain_f32(shape), engine);
  HostMap<float>(m).fill(value);
  return m;
}

}  // namespace

TEST_CASE("a kernel is built once per key and reused by later lookups") {
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  KernelSet<std::pair<Op, Shape>> kernels(engine);
  int made = 0;
  auto get = [&](Op op, const Shape& shape) -> const Kernel& {
    return kernels.get({op, shape}, [&] {
      ++made;
      return binary_pd(engine, op, shape);
    });
  };
  const Kernel& add = get(Op::add, {2, 3});
  CHECK(&get(Op::add, {2, 3}) == &add);
  CHECK(made == 1);
  CHECK(&get(Op::mul, {2, 3}) != &add);
  CHECK(&get(Op::add, {3, 2}) != &add);
  CHECK(made == 3);
  CHECK(kernels.size() == 3);

  // The reused kernel runs on the memories of each call.
  for (float value : {1.0f, 4.0f}) {
    dnnl::memory a = filled(engine, {2, 3}, value), b = filled(engine, {2, 3}, 0.5f), sum(plain_f32({2, 3}), engine);
    get(Op::add, {2, 3}).run(stream, {{DNNL_ARG_SRC_0, a}, {DNNL_ARG_SRC_1, b}, {DNNL_ARG_DST, sum}});
    stream.wait();
    const HostMap<float> host(sum);
    CHECK(std::count(host.begin(), host.end(), value + 0.5f) == 6);
  }
  CHECK(made == 3);
}

TEST_CASE("the shared scratchpad grows to the largest kernel's need and every kernel runs with it") {
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  KernelSet<int> kernels(engine);
  CHECK(kernels.scratchpad_bytes() == 0);
  const Kernel& add = kernels.get(0, [&] { return binary_pd(engine, Op::add, {4}); });
  CHECK(kernels.scratchpad_bytes() == add.scratchpad_bytes());

  // A dot product as a matmul [1,K] x [K,1]: its jit kernels ask for a scratchpad.
  const int64_t k = 4096;
  const auto row = plain_f32({1, k}), column = plain_f32({k, 1}), one = plain_f32({1, 1});
  const Kernel& dot = kernels.get(1, [&] {
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(row, column, one), user_scratchpad_attr(), engine);
  });
  const size_t largest = std::max(add.scratchpad_bytes(), dot.scratchpad_bytes());
  CHECK(kernels.scratchpad_bytes() == largest);
  // A smaller need later leaves it as it is.
  const Kernel& mul = kernels.get(2, [&] { return binary_pd(engine, Op::mul, {4}); });
  CHECK(mul.scratchpad_bytes() <= largest);
  CHECK(kernels.scratchpad_bytes() == largest);

  dnnl::memory ones = filled(engine, {k}, 1.0f), twos = filled(engine, {k}, 2.0f), result(one, engine);
  dot.run(stream, {{DNNL_ARG_SRC, view(ones, row)}, {DNNL_ARG_WEIGHTS, view(twos, column)}, {DNNL_ARG_DST, result}});
  dnnl::memory a = filled(engine, {4}, 3.0f), b = filled(engine, {4}, 2.0f), product(plain_f32({4}), engine);
  mul.run(stream, {{DNNL_ARG_SRC_0, a}, {DNNL_ARG_SRC_1, b}, {DNNL_ARG_DST, product}});
  stream.wait();
  CHECK(HostMap<float>(result)[0] == doctest::Approx(2.0 * k));
  CHECK(HostMap<float>(product)[3] == 6.0f);
}

TEST_CASE("concurrent lookups of one key from two threads get the same kernel, built once") {
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  for (int round = 0; round < 20; ++round) {
    KernelSet<Shape> kernels(engine);
    std::atomic<int> made{0};
    std::atomic<bool> go{false};
    const Kernel* seen[2] = {nullptr, nullptr};
    auto lookup = [&](int i) {
      while (!go.load()) std::this_thread::yield();
      seen[i] = &kernels.get({8, 8}, [&] {
        ++made;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));  // widen the window for a second build
        return binary_pd(engine, Op::add, {8, 8});
      });
    };
    std::thread first(lookup, 0), second(lookup, 1);
    go = true;
    first.join();
    second.join();
    CHECK(seen[0] == seen[1]);
    CHECK(made.load() == 1);
    CHECK(kernels.size() == 1);
  }
}

TEST_CASE("a primitive descriptor without a user scratchpad is refused, and the key stays free") {
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  KernelSet<int> kernels(engine);
  const auto md = plain_f32({4});
  CHECK_THROWS_AS(kernels.get(0,
                              [&] {
                                return dnnl::binary::primitive_desc(
                                    dnnl::binary::desc(dnnl::algorithm::binary_add, md, md, md), engine);
                              }),
                  std::logic_error);
  CHECK(kernels.size() == 0);
  const Kernel& add = kernels.get(0, [&] { return binary_pd(engine, Op::add, {4}); });
  CHECK(&kernels.get(0, [&] { return binary_pd(engine, Op::mul, {4}); }) == &add);
}
