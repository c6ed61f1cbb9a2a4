// The oneDNN primitives a GroupNorm can be made of, timed one at a time on
// unet-s's activation shapes (batch 64, f32, nChw16c, the [1, N*C, H, W]
// view the group norm uses), against a plain copy of the same tensor:
//
//   OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive ./build/groupnorm_primitives
//
// (built with the tests; alone: g++ -O2 -std=c++17 benchmarks/groupnorm_primitives.cpp -ldnnl)
//
// Prints, per shape, the median of 15 runs in ms and each primitive's
// implementation (a "ref" implementation is oneDNN's slow reference code).
#include <dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

double median_ms(const std::function<void()>& run, stream& s) {
  for (int i = 0; i < 3; ++i) run();
  s.wait();
  std::vector<double> times;
  for (int r = 0; r < 15; ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    s.wait();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void fill(memory& m, float value, bool ramp) {
  auto* p = static_cast<float*>(m.get_data_handle());
  const size_t count = m.get_desc().get_size() / sizeof(float);
  for (size_t i = 0; i < count; ++i) p[i] = ramp ? 0.01f * static_cast<float>(i % 97) : value;
}

}  // namespace

int main() {
  engine e(engine::kind::cpu, 0);
  stream s(e);
  for (const memory::dims& shape : {memory::dims{64, 32, 28, 28}, memory::dims{64, 64, 14, 14}, memory::dims{64, 64, 7, 7}}) {
    const memory::dim nc = shape[0] * shape[1];
    const memory::desc x_md({1, nc, shape[2], shape[3]}, dt::f32, tag::nChw16c);
    const memory::desc per_channel({1, nc, 1, 1}, dt::f32, tag::nChw16c);
    const memory::desc stats_md({nc}, dt::f32, tag::x);
    memory x(x_md, e), y(x_md, e), a(per_channel, e), b(per_channel, e), r(per_channel, e);
    memory mean(stats_md, e), var(stats_md, e), scale(stats_md, e), shift(stats_md, e);
    fill(x, 0, true);
    for (memory* m : {&a, &b, &mean, &var, &scale, &shift}) fill(*m, 1.0f, false);
    std::printf("[%ld, %ld, %ld, %ld] (%.1f MB)\n", static_cast<long>(shape[0]), static_cast<long>(shape[1]),
                static_cast<long>(shape[2]), static_cast<long>(shape[3]), static_cast<double>(x_md.get_size()) / 1e6);
    auto report = [](const char* what, double ms, const char* impl) { std::printf("  %-44s %8.3f ms  %s\n", what, ms, impl); };

    eltwise_forward::primitive_desc copy_pd(
        eltwise_forward::desc(prop_kind::forward_inference, algorithm::eltwise_linear, x_md, 1.f, 0.f), e);
    eltwise_forward copy(copy_pd);
    report("copy (eltwise linear)", median_ms([&] { copy.execute(s, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, y}}); }, s),
           copy_pd.impl_info_str());

    batch_normalization_forward::primitive_desc stats_pd(
        batch_normalization_forward::desc(prop_kind::forward_training, x_md, 1e-5f, normalization_flags::none), e);
    batch_normalization_forward stats(stats_pd);
    report("batch-norm statistics (training forward)",
           median_ms([&] { stats.execute(s, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, y}, {DNNL_ARG_MEAN, mean}, {DNNL_ARG_VARIANCE, var}}); }, s),
           stats_pd.impl_info_str());

    for (const auto& [name, alg, p] : {std::tuple{"reduction mean over H, W", algorithm::reduction_mean, 0.f},
                                       std::tuple{"reduction sum of squares over H, W", algorithm::reduction_norm_lp_power_p_sum, 2.f}}) {
      reduction::primitive_desc pd(reduction::desc(alg, x_md, per_channel, p, 0.f), e);
      reduction prim(pd);
      report(name, median_ms([&] { prim.execute(s, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, r}}); }, s), pd.impl_info_str());
    }

    for (const bool silu : {false, true}) {
      post_ops ops;
      ops.append_binary(algorithm::binary_add, per_channel);
      if (silu) ops.append_eltwise(1.f, algorithm::eltwise_swish, 1.f, 0.f);
      primitive_attr attr;
      attr.set_post_ops(ops);
      binary::primitive_desc pd(binary::desc(algorithm::binary_mul, x_md, per_channel, x_md), attr, e);
      binary prim(pd);
      report(silu ? "apply: binary x*a + b, SiLU post-op" : "apply: binary x*a + b",
             median_ms([&] {
               prim.execute(s, {{DNNL_ARG_SRC_0, x}, {DNNL_ARG_SRC_1, a},
                                {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, b}, {DNNL_ARG_DST, y}});
             }, s),
             pd.impl_info_str());
    }

    const auto flags = normalization_flags::use_global_stats | normalization_flags::use_scale | normalization_flags::use_shift;
    batch_normalization_forward::primitive_desc apply_pd(
        batch_normalization_forward::desc(prop_kind::forward_inference, x_md, 1e-5f, flags), e);
    batch_normalization_forward apply(apply_pd);
    report("apply: batch norm with given statistics",
           median_ms([&] {
             apply.execute(s, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, y}, {DNNL_ARG_MEAN, mean}, {DNNL_ARG_VARIANCE, var},
                               {DNNL_ARG_SCALE, scale}, {DNNL_ARG_SHIFT, shift}});
           }, s),
           apply_pd.impl_info_str());
  }
  return 0;
}
