// Program's parameter conversions: made by the prepare list once per
// parameter version, shared by every step that wants the same copy.
#include "compute/program.hpp"

#include <doctest/doctest.h>

#include <stdexcept>
#include <vector>

using namespace diffuflow;

namespace {

using dt = dnnl::memory::data_type;

// y = x * W^T [1, 4] for x = ones [1, 16], W [4, 16] the parameters at
// offset 0 seen in `want` (another layout, or bf16): the converted copy goes
// back to f32 plain through a reorder, which a matmul reads (the test values
// are exact in bf16).
struct WeightProgram {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  PrimitiveCache cache;
  dnnl::memory params{plain_f32({64}), engine};
  Program p{engine, cache, params, 64, false};
  ValueId x = -1, y = -1;

  explicit WeightProgram(const dnnl::memory::desc& want) {
    set_weights(1.0f);
    x = p.new_value(plain_f32({1, 16}), false);
    y = p.new_value(plain_f32({1, 4}), false);
    const dnnl::memory w = p.param_as(0, plain_f32({4, 16}), want);
    // The same copy for the same offset and descriptor: no second conversion.
    CHECK(p.param_as(0, plain_f32({4, 16}), want).get_data_handle() == w.get_data_handle());
    const dnnl::memory w32 = p.alloc(plain_f32({4, 16}));
    p.copy(w, w32, false);
    dnnl::matmul::primitive_desc pd(
        dnnl::matmul::desc(plain_f32({1, 16}), dnnl::memory::desc({16, 4}, dt::f32, dims{1, 16}), plain_f32({1, 4})),
        user_scratchpad_attr(), engine);
    p.forward(p.make<dnnl::matmul>(pd), {{DNNL_ARG_SRC, p.data(x)},
                                         {DNNL_ARG_WEIGHTS, view(w32, dnnl::memory::desc({16, 4}, dt::f32, dims{1, 16}))},
                                         {DNNL_ARG_DST, p.data(y)}});
    p.finalize(y, false);
    float* xs = static_cast<float*>(p.data(x).get_data_handle());
    for (int i = 0; i < 16; ++i) xs[i] = 1.0f;
  }
  void set_weights(float value) {
    float* w = static_cast<float*>(params.get_data_handle());
    for (int i = 0; i < 64; ++i) w[i] = value;
  }
  float run(uint64_t version) {
    p.prepare(stream, version);
    p.run_forward(stream);
    stream.wait();
    return static_cast<const float*>(p.data(y).get_data_handle())[0];
  }
};

}  // namespace

TEST_CASE("converted weights are made once per parameter version, not on every pass") {
  for (const dnnl::memory::desc& want :
       {dnnl::memory::desc({4, 16}, dt::f32, tag::ba), dnnl::memory::desc({4, 16}, dt::bf16, tag::ab)}) {
    WeightProgram w(want);
    CHECK(w.p.prepare_steps() == 1);
    CHECK(w.run(1) == 16.0f);
    // Written without a new version: passes keep reading the copy made for version 1.
    w.set_weights(2.0f);
    CHECK(w.run(1) == 16.0f);
    // A new version converts again.
    CHECK(w.run(2) == 32.0f);
  }
}

TEST_CASE("parameters wanted in their own layout are read in place, with nothing to prepare") {
  WeightProgram w(plain_f32({4, 16}));
  CHECK(w.p.prepare_steps() == 0);
  CHECK(w.run(1) == 16.0f);
  w.set_weights(3.0f);
  CHECK(w.run(1) == 48.0f);
}

TEST_CASE("a pass before its converted weights were ever made is refused") {
  WeightProgram w(dnnl::memory::desc({4, 16}, dt::f32, tag::ba));
  CHECK_THROWS_WITH_AS(w.p.run_forward(w.stream), doctest::Contains("before prepare()"), std::logic_error);
}

TEST_CASE("a constant is filled once and shared by key; one key cannot name two shapes") {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  PrimitiveCache cache;
  dnnl::memory params{plain_f32({4}), engine};
  Program p{engine, cache, params, 4, false};
  int fills = 0;
  auto ramp = [&fills](float* data, size_t count) {
    ++fills;
    for (size_t i = 0; i < count; ++i) data[i] = static_cast<float>(i);
  };
  const dnnl::memory a = p.constant("ramp/8", plain_f32({8}), ramp);
  const dnnl::memory b = p.constant("ramp/8", plain_f32({8}), ramp);
  CHECK(fills == 1);
  CHECK(a.get_data_handle() == b.get_data_handle());
  const auto* values = static_cast<const float*>(a.get_data_handle());
  CHECK(values[0] == 0.0f);
  CHECK(values[7] == 7.0f);
  const dnnl::memory c = p.constant("ramp/4", plain_f32({4}), ramp);
  CHECK(fills == 2);
  CHECK(c.get_data_handle() != a.get_data_handle());
  CHECK_THROWS_AS(p.constant("ramp/8", plain_f32({2, 4}), ramp), std::logic_error);
}
