// step_cost: FLOPs from the primitive kind and its arguments' shapes, bytes
// from the distinct argument memories.
#include "compute/step_cost.hpp"

#include <doctest/doctest.h>

using namespace diffuflow;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::memory::desc f32(const dnnl::memory::dims& shape, tag layout) { return {shape, dt::f32, layout}; }

}  // namespace

TEST_CASE("a grouped convolution costs 2 N OH OW OC IC/G KH KW flops forward, backward data and backward weights") {
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  // [2,8,5,5] -> [2,12,5,5], 3x3, stride 1, padding 1, 2 groups of 4 -> 6 channels.
  const int64_t n = 2, ic = 8, oc = 12, g = 2, h = 5, k = 3;
  const auto src_md = f32({n, ic, h, h}, tag::nchw), dst_md = f32({n, oc, h, h}, tag::nchw);
  const auto weights_md = f32({g, oc / g, ic / g, k, k}, tag::goihw);
  const dnnl::memory::dims strides{1, 1}, pad{1, 1};
  const dnnl::convolution_forward::primitive_desc fwd_pd(
      dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src_md,
                                      weights_md, dst_md, strides, pad, pad),
      engine);
  const dnnl::memory src(src_md, engine), weights(weights_md, engine), dst(dst_md, engine);
  const double flops = 2.0 * n * h * h * oc * (ic / g) * k * k;  // 43200

  const StepCost forward = step_cost(dnnl::convolution_forward(fwd_pd),
                                     {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
  CHECK(forward.flops == doctest::Approx(flops));
  CHECK(forward.bytes == doctest::Approx(4.0 * (n * ic * h * h + oc * (ic / g) * k * k + n * oc * h * h)));

  const dnnl::convolution_backward_data::primitive_desc data_pd(
      dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, src_md, weights_md, dst_md, strides,
                                            pad, pad),
      engine, fwd_pd);
  const StepCost data = step_cost(dnnl::convolution_backward_data(data_pd),
                                  {{DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DIFF_SRC, src}});
  CHECK(data.flops == doctest::Approx(flops));

  const dnnl::convolution_backward_weights::primitive_desc weights_pd(
      dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, src_md, weights_md, dst_md,
                                               strides, pad, pad),
      engine, fwd_pd);
  const StepCost grad = step_cost(dnnl::convolution_backward_weights(weights_pd),
                                  {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_DIFF_WEIGHTS, weights}});
  CHECK(grad.flops == doctest::Approx(flops));
  CHECK(grad.bytes == doctest::Approx(forward.bytes));
}

TEST_CASE("a matmul costs 2 M N K flops, a copy none, an activation one per element") {
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  const auto a_md = f32({3, 7}, tag::ab), b_md = f32({7, 5}, tag::ab), c_md = f32({3, 5}, tag::ab);
  const dnnl::memory a(a_md, engine), b(b_md, engine), c(c_md, engine);
  const dnnl::matmul mm(dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, c_md), engine));
  const StepCost product = step_cost(mm, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  CHECK(product.flops == doctest::Approx(2.0 * 3 * 5 * 7));
  CHECK(product.bytes == doctest::Approx(4.0 * (21 + 35 + 15)));

  const dnnl::memory other(c_md, engine);
  const StepCost copy = step_cost(dnnl::reorder(c, other), {{DNNL_ARG_FROM, c}, {DNNL_ARG_TO, other}});
  CHECK(copy.flops == 0);
  CHECK(copy.bytes == doctest::Approx(2 * 4.0 * 15));

  // In place: src and dst are one memory, counted once; the scratchpad is left out.
  const dnnl::eltwise_forward relu(dnnl::eltwise_forward::primitive_desc(
      dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::eltwise_relu, c_md), engine));
  const dnnl::memory scratch(f32({1000}, tag::a), engine);
  const StepCost act = step_cost(relu, {{DNNL_ARG_SRC, c}, {DNNL_ARG_DST, c}, {DNNL_ARG_SCRATCHPAD, scratch}});
  CHECK(act.flops == doctest::Approx(15));
  CHECK(act.bytes == doctest::Approx(4.0 * 15));

  // A host step: no flops, its memories' bytes.
  const StepCost host = step_cost(dnnl::primitive(), {{DNNL_ARG_SRC, a}});
  CHECK(host.flops == 0);
  CHECK(host.bytes == doctest::Approx(4.0 * 21));
}

TEST_CASE("a view into a larger buffer counts only the elements it spans") {
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  const dnnl::memory whole(f32({100}, tag::a), engine);
  const auto part_md = f32({100}, tag::a).submemory_desc({10}, {40});
  const dnnl::memory part(part_md, engine, whole.get_data_handle());
  const dnnl::memory out(f32({10}, tag::a), engine);
  const StepCost copy = step_cost(dnnl::reorder(part, out), {{DNNL_ARG_FROM, part}, {DNNL_ARG_TO, out}});
  CHECK(copy.bytes == doctest::Approx(2 * 4.0 * 10));
}
