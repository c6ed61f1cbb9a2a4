// The layers that UNet2DModel's options add to the plain network (see
// layers.hpp for shapes): affine (center_input_sample, output scale
// factors, 1 + scale), scale_channels (resnet_time_scale_shift
// scale_shift), avg_pool and avg_pool2x (resnet downsampling; the
// classifier's pooling), dropout, and embedding
// (the class embedding table).
#include "nodes/model/layer_util.hpp"
#include "nodes/model/layers.hpp"

#include <algorithm>
#include <string>

namespace diffuflow {

using namespace layer_util;

namespace {

using dnnl::algorithm;
using dnnl::prop_kind;
using dt = dnnl::memory::data_type;

}  // namespace

ValueId affine(Program& p, ValueId x, float alpha, float beta) {
  // alpha * x + beta (any shape, any layout); dx = alpha * dy.
  return eltwise(p, x, {algorithm::eltwise_linear, alpha, beta});
}

ValueId scale_channels(Program& p, ValueId x, ValueId scale) {
  const Program::LayerScope layer(p, "elementwise");
  // x [N,C,H,W] (any layout) * scale [N,C] broadcast over H, W: a per-channel
  // multiplication over the [1, N*C, H, W] view.
  //   dx = dy * scale;  d scale[n,c] = sum over H, W of dy * x
  const dims xs = p.shape(x);
  require(xs.size() == 4 && p.shape(scale) == dims({xs[0], xs[1]}), "scale_channels shape mismatch");
  const auto x_md = p.desc(x);
  const auto bn_md = per_sample_channels(x_md);
  const auto s4 = per_channel_operand(bn_md);
  const auto attr = user_scratchpad_attr();
  dnnl::binary::primitive_desc pd(dnnl::binary::desc(algorithm::binary_mul, bn_md, s4, bn_md), attr, p.engine());
  const ValueId y = p.new_value(x_md, true);
  p.forward(p.make<dnnl::binary>(pd), {{DNNL_ARG_SRC_0, view(p.data(x), bn_md)},
                                       {DNNL_ARG_SRC_1, view(p.data(scale), s4)},
                                       {DNNL_ARG_DST, view(p.data(y), bn_md)}});
  p.on_backward([=](Program& p) {
    // Gradients are f32 whatever x's type.
    const dnnl::memory dy = p.grad(y);
    const auto dx_md = p.grad_desc(x);
    const auto dbn_md = per_sample_channels(dx_md);
    if (p.needs_grad(scale)) {
      dnnl::binary::primitive_desc prod_pd(dnnl::binary::desc(algorithm::binary_mul, dbn_md, dbn_md, dbn_md), attr,
                                           p.engine());
      const dnnl::memory product_memory = p.alloc(dx_md);
      p.backward(p.make<dnnl::binary>(prod_pd), {{DNNL_ARG_SRC_0, view(dy, dbn_md)},
                                                 {DNNL_ARG_SRC_1, view(data_as_f32(p, x), dbn_md)},
                                                 {DNNL_ARG_DST, view(product_memory, dbn_md)}});
      const GradSink s = p.sink(scale);
      append_channel_sums(p, product_memory, dx_md, s.memory);
      p.commit(s);
    }
    if (p.needs_grad(x)) {
      dnnl::binary::primitive_desc dx_pd(dnnl::binary::desc(algorithm::binary_mul, dbn_md, s4, dbn_md), attr,
                                         p.engine());
      const GradSink s = p.sink(x);
      p.backward(p.make<dnnl::binary>(dx_pd), {{DNNL_ARG_SRC_0, view(dy, dbn_md)},
                                            {DNNL_ARG_SRC_1, view(p.data(scale), s4)},
                                            {DNNL_ARG_DST, view(s.memory, dbn_md)}});
      p.commit(s);
    }
  });
  return y;
}

ValueId avg_pool(Program& p, ValueId x, int64_t k) {
  // x [N,C,H,W] -> [N,C,H/k,W/k] (rounded down): the mean of each k x k
  // window at stride k, in x's type and kind of layout.
  const dims xs = p.shape(x);
  require(xs.size() == 4 && k >= 1 && xs[2] >= k && xs[3] >= k,
          "average pooling of " + std::to_string(k) + "x" + std::to_string(k) +
              " windows needs an image at least that large");
  const auto x_md = p.desc(x);
  const dims ys{xs[0], xs[1], xs[2] / k, xs[3] / k};
  const auto y_md =
      p.in_activation_layout(x_md) ? p.activation_desc(ys, x_md.data_type()) : with_type(plain_f32(ys), x_md.data_type());
  const dims window{k, k}, pads{0, 0};
  const auto attr = user_scratchpad_attr();
  dnnl::pooling_forward::primitive_desc fwd_pd(
      dnnl::pooling_forward::desc(prop_kind::forward_training, algorithm::pooling_avg_exclude_padding, x_md, y_md,
                                  window, window, pads, pads),
      attr, p.engine());
  const ValueId y = p.new_value(y_md, true);
  p.forward(p.make<dnnl::pooling_forward>(fwd_pd), {{DNNL_ARG_SRC, p.data(x)}, {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    if (!p.needs_grad(x)) return;
    dnnl::pooling_backward::primitive_desc pd(
        dnnl::pooling_backward::desc(algorithm::pooling_avg_exclude_padding, p.grad_desc(x), p.grad_desc(y), window,
                                     window, pads, pads),
        attr, p.engine(), fwd_pd);
    const GradSink s = p.sink(x);
    p.backward(p.make<dnnl::pooling_backward>(pd), {{DNNL_ARG_DIFF_DST, p.grad(y)}, {DNNL_ARG_DIFF_SRC, s.memory}});
    p.commit(s);
  });
  return y;
}

ValueId avg_pool2x(Program& p, ValueId x) {
  // PyTorch's AvgPool2d(2, 2), which a resnet with down=True applies.
  const dims xs = p.shape(x);
  require(xs.size() == 4 && xs[2] % 2 == 0 && xs[3] % 2 == 0, "avg_pool2x needs an even height and width");
  return avg_pool(p, x, 2);
}

namespace {

uint64_t mix64(uint64_t z) {
  // splitmix64's finaliser: a bijection that spreads every input bit.
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

ValueId dropout(Program& p, ValueId x, float rate, std::shared_ptr<const DropoutDraw> draw, uint64_t key) {
  const Program::LayerScope layer(p, "elementwise");
  // x [N,C,H,W] -> x * mask, mask = 0 with probability `rate`, else
  // 1 / (1 - rate) (PyTorch's scaling); dx = dy * mask. The mask is drawn on
  // the host in [N,C,H,W] order into a plain buffer (image-sized, so only
  // programs of models with dropout have this step) and reordered to the
  // activations' layout.
  require(rate >= 0.0f && rate < 1.0f, "dropout rate outside [0, 1)");
  const dims xs = p.shape(x);
  const auto x_md = p.desc(x);
  const auto plain = plain_f32(xs);
  const dnnl::memory mask_plain = p.alloc(plain);
  const uint64_t threshold = static_cast<uint64_t>(static_cast<double>(rate) * 18446744073709551616.0);
  const float keep_scale = 1.0f / (1.0f - rate);
  int64_t per_sample = 1;
  for (size_t d = 1; d < xs.size(); ++d) per_sample *= xs[d];
  p.host_forward(
      [=](const Args& args) {
        HostMap<float> mask(args.at(0));
        const uint64_t stream = mix64(draw->seed ^ mix64(key + 0x9e3779b97f4a7c15ull)) +
                                static_cast<uint64_t>(draw->first_sample * per_sample);
        for (size_t i = 0; i < mask.size(); ++i) mask[i] = mix64(stream + i) < threshold ? 0.0f : keep_scale;
      },
      {{0, mask_plain}});
  // The mask in x's layout, f32 whatever x's type (1 / (1 - rate) is not a
  // bf16 number), as the f32 gradient's backward reads it too.
  const auto mask_md = with_type(x_md, dt::f32);
  const dnnl::memory mask = p.reorder_if_needed(mask_plain, mask_md, false);
  const auto attr = user_scratchpad_attr();
  dnnl::binary::primitive_desc pd(dnnl::binary::desc(algorithm::binary_mul, x_md, mask_md, x_md), attr, p.engine());
  const ValueId y = p.new_value(x_md, true);
  p.forward(p.make<dnnl::binary>(pd),
            {{DNNL_ARG_SRC_0, p.data(x)}, {DNNL_ARG_SRC_1, mask}, {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    if (!p.needs_grad(x)) return;
    dnnl::binary::primitive_desc dx_pd(dnnl::binary::desc(algorithm::binary_mul, mask_md, mask_md, mask_md), attr,
                                       p.engine());
    const GradSink s = p.sink(x);
    p.backward(p.make<dnnl::binary>(dx_pd),
               {{DNNL_ARG_SRC_0, p.grad(y)}, {DNNL_ARG_SRC_1, mask}, {DNNL_ARG_DST, s.memory}});
    p.commit(s);
  });
  return y;
}

ValueId embedding(Program& p, ValueId one_hot, const ParamRef& table) {
  // one_hot [N,K] x table [K,D] -> [N,D]: row k of the table for a one-hot
  // row k (an nn.Embedding lookup as a matmul, so its backward is one too):
  //   d table = one_hot^T [K,N] x dy [N,D]
  const dims hs = p.shape(one_hot);
  require(hs.size() == 2 && table.shape.size() == 2 && table.shape[0] == hs[1], "embedding shape mismatch");
  const int64_t n = hs[0], k = hs[1], d = table.shape[1];
  const auto h_md = plain_f32({n, k});
  const auto t_md = plain_f32({k, d});
  const auto y_md = plain_f32({n, d});
  const auto attr = user_scratchpad_attr();
  dnnl::matmul::primitive_desc fwd_pd(dnnl::matmul::desc(h_md, t_md, y_md), attr, p.engine());
  const ValueId y = p.new_value(y_md, true);
  p.forward(p.make<dnnl::matmul>(fwd_pd), {{DNNL_ARG_SRC, view(p.data(one_hot), h_md)},
                                           {DNNL_ARG_WEIGHTS, p.param(table.offset, t_md)},
                                           {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    const dnnl::memory::desc h_t({k, n}, dt::f32, dims{1, k});  // one_hot seen transposed
    dnnl::matmul::primitive_desc dt_pd(dnnl::matmul::desc(h_t, y_md, t_md), attr, p.engine());
    p.backward(p.make<dnnl::matmul>(dt_pd), {{DNNL_ARG_SRC, view(p.data(one_hot), h_t)},
                                             {DNNL_ARG_WEIGHTS, p.grad(y)},
                                             {DNNL_ARG_DST, p.param_grad(table.offset, t_md)}});
  });
  return y;
}

}  // namespace diffuflow
