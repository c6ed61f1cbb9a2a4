#include "nodes/unet/layers.hpp"

#include <cmath>
#include <stdexcept>

namespace diffuflow {

namespace {

using dnnl::algorithm;
using dnnl::prop_kind;
using dt = dnnl::memory::data_type;

int64_t product(const dims& d, size_t from = 0) {
  int64_t n = 1;
  for (size_t i = from; i < d.size(); ++i) n *= d[i];
  return n;
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("model layer: " + what);
}

// [1, C, 1, ...] for per-channel parameters broadcast over a [N, C, ...] tensor.
dims channel_dims(const dims& x) {
  dims d(x.size(), 1);
  d[1] = x[1];
  return d;
}

}  // namespace

ValueId conv2d(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t stride, int64_t padding) {
  // x [N,Ci,H,W] -> y [N,Co,Ho,Wo]; weight [Co,Ci,k,k], bias [Co]
  const dims xs = p.shape(x);
  require(xs.size() == 4 && weight.shape.size() == 4 && weight.shape[1] == xs[1], "conv2d input/weight mismatch");
  const int64_t co = weight.shape[0], k = weight.shape[2];
  const int64_t ho = (xs[2] + 2 * padding - k) / stride + 1;
  const int64_t wo = (xs[3] + 2 * padding - k) / stride + 1;
  const auto x_md = p.desc(x);
  const auto y_md = plain_f32({xs[0], co, ho, wo});
  const auto w_plain = plain_f32(weight.shape);
  const dnnl::memory::desc w_any(weight.shape, dt::f32, tag::any);
  const auto b_md = plain_f32({co});
  const dims strides{stride, stride}, pads{padding, padding};
  const auto attr = user_scratchpad_attr();

  dnnl::convolution_forward::primitive_desc fwd_pd(
      dnnl::convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct, x_md, w_any, b_md,
                                      y_md, strides, pads, pads),
      attr, p.engine());
  const ValueId y = p.new_value(y_md, true);
  const dnnl::memory w_mem = p.param(weight.offset, w_plain);
  const dnnl::memory b_mem = p.param(bias.offset, b_md);
  const dnnl::memory w_fwd = p.reorder_if_needed(w_mem, fwd_pd.weights_desc(), false);
  p.forward(p.make<dnnl::convolution_forward>(fwd_pd),
            {{DNNL_ARG_SRC, p.data(x)}, {DNNL_ARG_WEIGHTS, w_fwd}, {DNNL_ARG_BIAS, b_mem}, {DNNL_ARG_DST, p.data(y)}});

  p.on_backward([=](Program& p) {
    const dnnl::memory dy = p.grad(y);
    if (p.needs_grad(x)) {
      dnnl::convolution_backward_data::primitive_desc pd(
          dnnl::convolution_backward_data::desc(algorithm::convolution_direct, x_md, w_any, y_md, strides, pads, pads),
          attr, p.engine(), fwd_pd);
      const dnnl::memory w_bwd =
          pd.weights_desc() == w_fwd.get_desc() ? w_fwd : p.reorder_if_needed(w_mem, pd.weights_desc(), true);
      const GradSink s = p.sink(x);
      p.backward(p.make<dnnl::convolution_backward_data>(pd),
                 {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, w_bwd}, {DNNL_ARG_DIFF_SRC, s.memory}});
      p.commit(s);
    }
    dnnl::convolution_backward_weights::primitive_desc pd(
        dnnl::convolution_backward_weights::desc(algorithm::convolution_direct, x_md, w_any, b_md, y_md, strides,
                                                 pads, pads),
        attr, p.engine(), fwd_pd);
    const dnnl::memory dw_plain = p.param_grad(weight.offset, w_plain);
    const bool same = pd.diff_weights_desc() == w_plain;
    const dnnl::memory dw = same ? dw_plain : p.alloc(pd.diff_weights_desc());
    p.backward(p.make<dnnl::convolution_backward_weights>(pd), {{DNNL_ARG_SRC, p.data(x)},
                                                                {DNNL_ARG_DIFF_DST, dy},
                                                                {DNNL_ARG_DIFF_WEIGHTS, dw},
                                                                {DNNL_ARG_DIFF_BIAS, p.param_grad(bias.offset, b_md)}});
    if (!same) p.copy(dw, dw_plain, true);
  });
  return y;
}

ValueId linear(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias) {
  // x [..., I] seen as [M, I] -> y [..., O]; weight [O, I], bias [O]
  const dims xs = p.shape(x);
  require(weight.shape.size() == 2 && weight.shape[1] == xs.back(), "linear input/weight mismatch");
  const int64_t in = xs.back(), out = weight.shape[0], rows = product(xs) / in;
  dims ys = xs;
  ys.back() = out;
  const auto x2 = plain_f32({rows, in});
  const auto y2 = plain_f32({rows, out});
  const auto w_plain = plain_f32(weight.shape);
  const dnnl::memory::desc w_any(weight.shape, dt::f32, tag::any);
  const auto b_md = plain_f32({out});
  const auto attr = user_scratchpad_attr();

  dnnl::inner_product_forward::primitive_desc fwd_pd(
      dnnl::inner_product_forward::desc(prop_kind::forward_training, x2, w_any, b_md, y2), attr, p.engine());
  const ValueId y = p.new_value(plain_f32(ys), true);
  const dnnl::memory w_mem = p.param(weight.offset, w_plain);
  const dnnl::memory w_fwd = p.reorder_if_needed(w_mem, fwd_pd.weights_desc(), false);
  p.forward(p.make<dnnl::inner_product_forward>(fwd_pd), {{DNNL_ARG_SRC, view(p.data(x), x2)},
                                                          {DNNL_ARG_WEIGHTS, w_fwd},
                                                          {DNNL_ARG_BIAS, p.param(bias.offset, b_md)},
                                                          {DNNL_ARG_DST, view(p.data(y), y2)}});

  p.on_backward([=](Program& p) {
    const dnnl::memory dy = view(p.grad(y), y2);
    if (p.needs_grad(x)) {
      dnnl::inner_product_backward_data::primitive_desc pd(dnnl::inner_product_backward_data::desc(x2, w_any, y2),
                                                           attr, p.engine(), fwd_pd);
      const dnnl::memory w_bwd =
          pd.weights_desc() == w_fwd.get_desc() ? w_fwd : p.reorder_if_needed(w_mem, pd.weights_desc(), true);
      const GradSink s = p.sink(x);
      p.backward(p.make<dnnl::inner_product_backward_data>(pd),
                 {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, w_bwd}, {DNNL_ARG_DIFF_SRC, view(s.memory, x2)}});
      p.commit(s);
    }
    dnnl::inner_product_backward_weights::primitive_desc pd(
        dnnl::inner_product_backward_weights::desc(x2, w_any, b_md, y2), attr, p.engine(), fwd_pd);
    const dnnl::memory dw_plain = p.param_grad(weight.offset, w_plain);
    const bool same = pd.diff_weights_desc() == w_plain;
    const dnnl::memory dw = same ? dw_plain : p.alloc(pd.diff_weights_desc());
    p.backward(p.make<dnnl::inner_product_backward_weights>(pd),
               {{DNNL_ARG_SRC, view(p.data(x), x2)},
                {DNNL_ARG_DIFF_DST, dy},
                {DNNL_ARG_DIFF_WEIGHTS, dw},
                {DNNL_ARG_DIFF_BIAS, p.param_grad(bias.offset, b_md)}});
    if (!same) p.copy(dw, dw_plain, true);
  });
  return y;
}

ValueId group_norm(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups, float eps) {
  // x [N,C,...] -> y [N,C,...]. Normalisation: layer_normalization (no
  // scale/shift) over the [N*G, C/G*spatial] view of the plain tensor, whose
  // rows are exactly the groups; then the per-channel affine as one binary
  // mul with a binary-add post-op. weight, bias [C] seen as [1,C,1,...].
  const dims xs = p.shape(x);
  require(xs.size() >= 2 && xs[1] % groups == 0, "group_norm channels not divisible by groups");
  const int64_t rows = xs[0] * groups, row_len = product(xs) / rows;
  const auto x_md = p.desc(x);
  const auto rows_md = plain_f32({rows, row_len});
  const auto ch_md = plain_f32(channel_dims(xs));
  const auto attr = user_scratchpad_attr();

  dnnl::layer_normalization_forward::primitive_desc ln_pd(
      dnnl::layer_normalization_forward::desc(prop_kind::forward_training, rows_md, eps,
                                              dnnl::normalization_flags::none),
      attr, p.engine());
  const dnnl::memory mean = p.alloc(ln_pd.mean_desc());
  const dnnl::memory variance = p.alloc(ln_pd.variance_desc());
  const dnnl::memory xhat = p.alloc(rows_md);  // [N*G, C/G*spatial], kept for backward
  p.forward(p.make<dnnl::layer_normalization_forward>(ln_pd), {{DNNL_ARG_SRC, view(p.data(x), rows_md)},
                                                              {DNNL_ARG_DST, xhat},
                                                              {DNNL_ARG_MEAN, mean},
                                                              {DNNL_ARG_VARIANCE, variance}});

  const dnnl::memory gamma = p.param(weight.offset, ch_md);
  const dnnl::memory beta = p.param(bias.offset, ch_md);
  dnnl::post_ops ops;
  ops.append_binary(algorithm::binary_add, ch_md);
  dnnl::primitive_attr affine_attr = user_scratchpad_attr();
  affine_attr.set_post_ops(ops);
  dnnl::binary::primitive_desc affine_pd(dnnl::binary::desc(algorithm::binary_mul, x_md, ch_md, x_md), affine_attr,
                                         p.engine());
  const ValueId y = p.new_value(x_md, true);
  p.forward(p.make<dnnl::binary>(affine_pd), {{DNNL_ARG_SRC_0, view(xhat, x_md)},
                                              {DNNL_ARG_SRC_1, gamma},
                                              {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, beta},
                                              {DNNL_ARG_DST, p.data(y)}});

  p.on_backward([=](Program& p) {
    const dnnl::memory dy = p.grad(y);
    const dnnl::memory tmp = p.alloc(x_md);
    // d gamma[c] = sum_{n,spatial} dy * xhat ; d beta[c] = sum dy
    dnnl::binary::primitive_desc mul_pd(dnnl::binary::desc(algorithm::binary_mul, x_md, x_md, x_md), attr,
                                        p.engine());
    p.backward(p.make<dnnl::binary>(mul_pd),
               {{DNNL_ARG_SRC_0, dy}, {DNNL_ARG_SRC_1, view(xhat, x_md)}, {DNNL_ARG_DST, tmp}});
    dnnl::reduction::primitive_desc sum_pd(dnnl::reduction::desc(algorithm::reduction_sum, x_md, ch_md, 0.f, 0.f),
                                           attr, p.engine());
    const dnnl::primitive reduce = p.make<dnnl::reduction>(sum_pd);
    p.backward(reduce, {{DNNL_ARG_SRC, tmp}, {DNNL_ARG_DST, p.param_grad(weight.offset, ch_md)}});
    p.backward(reduce, {{DNNL_ARG_SRC, dy}, {DNNL_ARG_DST, p.param_grad(bias.offset, ch_md)}});
    if (!p.needs_grad(x)) return;
    // d xhat = dy * gamma, then the normalisation's own backward.
    dnnl::binary::primitive_desc scale_pd(dnnl::binary::desc(algorithm::binary_mul, x_md, ch_md, x_md), attr,
                                          p.engine());
    p.backward(p.make<dnnl::binary>(scale_pd), {{DNNL_ARG_SRC_0, dy}, {DNNL_ARG_SRC_1, gamma}, {DNNL_ARG_DST, tmp}});
    dnnl::layer_normalization_backward::primitive_desc bwd_pd(
        dnnl::layer_normalization_backward::desc(prop_kind::backward_data, rows_md, rows_md, eps,
                                                 dnnl::normalization_flags::none),
        attr, p.engine(), ln_pd);
    const GradSink s = p.sink(x);
    p.backward(p.make<dnnl::layer_normalization_backward>(bwd_pd), {{DNNL_ARG_SRC, view(p.data(x), rows_md)},
                                                                   {DNNL_ARG_MEAN, mean},
                                                                   {DNNL_ARG_VARIANCE, variance},
                                                                   {DNNL_ARG_DIFF_DST, view(tmp, rows_md)},
                                                                   {DNNL_ARG_DIFF_SRC, view(s.memory, rows_md)}});
    p.commit(s);
  });
  return y;
}

ValueId silu(Program& p, ValueId x) {
  // SiLU(x) = x * sigmoid(x): eltwise_swish with alpha = 1. Shape unchanged.
  const auto x_md = p.desc(x);
  const auto attr = user_scratchpad_attr();
  dnnl::eltwise_forward::primitive_desc fwd_pd(
      dnnl::eltwise_forward::desc(prop_kind::forward_training, algorithm::eltwise_swish, x_md, 1.f, 0.f), attr,
      p.engine());
  const ValueId y = p.new_value(x_md, true);
  p.forward(p.make<dnnl::eltwise_forward>(fwd_pd), {{DNNL_ARG_SRC, p.data(x)}, {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    if (!p.needs_grad(x)) return;
    dnnl::eltwise_backward::primitive_desc pd(
        dnnl::eltwise_backward::desc(algorithm::eltwise_swish, x_md, x_md, 1.f, 0.f), attr, p.engine(), fwd_pd);
    const GradSink s = p.sink(x);
    p.backward(p.make<dnnl::eltwise_backward>(pd),
               {{DNNL_ARG_SRC, p.data(x)}, {DNNL_ARG_DIFF_DST, p.grad(y)}, {DNNL_ARG_DIFF_SRC, s.memory}});
    p.commit(s);
  });
  return y;
}

ValueId add(Program& p, ValueId a, ValueId b) {
  // a, b [same shape] -> a + b
  require(p.shape(a) == p.shape(b), "add of different shapes");
  const auto md = p.desc(a);
  dnnl::binary::primitive_desc pd(dnnl::binary::desc(algorithm::binary_add, md, md, md), user_scratchpad_attr(),
                                  p.engine());
  const ValueId y = p.new_value(md, true);
  p.forward(p.make<dnnl::binary>(pd),
            {{DNNL_ARG_SRC_0, p.data(a)}, {DNNL_ARG_SRC_1, p.data(b)}, {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    if (p.needs_grad(a)) p.contribute(a, p.grad(y));
    if (p.needs_grad(b)) p.contribute(b, p.grad(y));
  });
  return y;
}

ValueId add_channel_bias(Program& p, ValueId x, ValueId bias) {
  // x [N,C,H,W] + bias [N,C] broadcast over H, W (the time embedding projection).
  const dims xs = p.shape(x);
  require(xs.size() == 4 && p.shape(bias) == dims({xs[0], xs[1]}), "add_channel_bias shape mismatch");
  const auto x_md = p.desc(x);
  const auto b4 = plain_f32({xs[0], xs[1], 1, 1});
  const auto attr = user_scratchpad_attr();
  dnnl::binary::primitive_desc pd(dnnl::binary::desc(algorithm::binary_add, x_md, b4, x_md), attr, p.engine());
  const ValueId y = p.new_value(x_md, true);
  p.forward(p.make<dnnl::binary>(pd),
            {{DNNL_ARG_SRC_0, p.data(x)}, {DNNL_ARG_SRC_1, view(p.data(bias), b4)}, {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    const dnnl::memory dy = p.grad(y);
    if (p.needs_grad(x)) p.contribute(x, dy);
    if (!p.needs_grad(bias)) return;
    if (xs[2] * xs[3] == 1) {
      p.contribute(bias, view(dy, p.desc(bias)));
      return;
    }
    dnnl::reduction::primitive_desc sum_pd(dnnl::reduction::desc(algorithm::reduction_sum, x_md, b4, 0.f, 0.f), attr,
                                           p.engine());
    const GradSink s = p.sink(bias);
    p.backward(p.make<dnnl::reduction>(sum_pd), {{DNNL_ARG_SRC, dy}, {DNNL_ARG_DST, view(s.memory, b4)}});
    p.commit(s);
  });
  return y;
}

ValueId concat_channels(Program& p, ValueId a, ValueId b) {
  // a [N,Ca,H,W], b [N,Cb,H,W] -> [N,Ca+Cb,H,W]; backward: the two channel
  // slices of dy, seen as sub-memory views and copied (or added) out.
  const dims as = p.shape(a), bs = p.shape(b);
  require(as.size() == 4 && bs.size() == 4 && as[0] == bs[0] && as[2] == bs[2] && as[3] == bs[3],
          "concat of incompatible shapes");
  const auto y_md = plain_f32({as[0], as[1] + bs[1], as[2], as[3]});
  dnnl::concat::primitive_desc pd(y_md, 1, {p.desc(a), p.desc(b)}, p.engine(), user_scratchpad_attr());
  const ValueId y = p.new_value(y_md, true);
  p.forward(p.make<dnnl::concat>(pd), {{DNNL_ARG_MULTIPLE_SRC + 0, p.data(a)},
                                       {DNNL_ARG_MULTIPLE_SRC + 1, p.data(b)},
                                       {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    const dnnl::memory dy = p.grad(y);
    if (p.needs_grad(a)) p.contribute(a, view(dy, y_md.submemory_desc(as, {0, 0, 0, 0})));
    if (p.needs_grad(b)) p.contribute(b, view(dy, y_md.submemory_desc(bs, {0, as[1], 0, 0})));
  });
  return y;
}

ValueId upsample_nearest2x(Program& p, ValueId x) {
  // x [N,C,H,W] -> [N,C,2H,2W], up[y,x] = in[y/2, x/2]
  const dims xs = p.shape(x);
  const auto x_md = p.desc(x);
  const auto y_md = plain_f32({xs[0], xs[1], 2 * xs[2], 2 * xs[3]});
  const auto attr = user_scratchpad_attr();
  dnnl::resampling_forward::primitive_desc fwd_pd(
      dnnl::resampling_forward::desc(prop_kind::forward_training, algorithm::resampling_nearest, x_md, y_md), attr,
      p.engine());
  const ValueId y = p.new_value(y_md, true);
  p.forward(p.make<dnnl::resampling_forward>(fwd_pd), {{DNNL_ARG_SRC, p.data(x)}, {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    if (!p.needs_grad(x)) return;
    dnnl::resampling_backward::primitive_desc pd(
        dnnl::resampling_backward::desc(algorithm::resampling_nearest, x_md, y_md), attr, p.engine(), fwd_pd);
    const GradSink s = p.sink(x);
    p.backward(p.make<dnnl::resampling_backward>(pd), {{DNNL_ARG_DIFF_DST, p.grad(y)}, {DNNL_ARG_DIFF_SRC, s.memory}});
    p.commit(s);
  });
  return y;
}

namespace {

// [N,C,H,W] plain memory seen as tokens [N,S,C] (token s = y*W + x).
dnnl::memory::desc nchw_as_tokens(const dims& nchw) {
  const int64_t c = nchw[1], s = nchw[2] * nchw[3];
  return dnnl::memory::desc({nchw[0], s, c}, dt::f32, dims{c * s, 1, s});
}

// [N,S,C] plain memory seen as [N,C,H,W].
dnnl::memory::desc tokens_as_nchw(const dims& nchw) {
  const int64_t c = nchw[1], h = nchw[2], w = nchw[3];
  return dnnl::memory::desc(nchw, dt::f32, dims{h * w * c, 1, w * c, c});
}

}  // namespace

ValueId to_tokens(Program& p, ValueId x) {
  // x [N,C,H,W] -> [N,S,C] (a transposing reorder)
  const dims xs = p.shape(x);
  const ValueId y = p.new_value(plain_f32({xs[0], xs[2] * xs[3], xs[1]}), true);
  p.copy(view(p.data(x), nchw_as_tokens(xs)), p.data(y), false);
  p.on_backward([=](Program& p) {
    if (p.needs_grad(x)) p.contribute(x, view(p.grad(y), tokens_as_nchw(xs)));
  });
  return y;
}

ValueId from_tokens(Program& p, ValueId tokens, const dims& nchw) {
  // [N,S,C] -> [N,C,H,W]
  require(p.shape(tokens) == dims({nchw[0], nchw[2] * nchw[3], nchw[1]}), "from_tokens shape mismatch");
  const ValueId y = p.new_value(plain_f32(nchw), true);
  p.copy(view(p.data(tokens), tokens_as_nchw(nchw)), p.data(y), false);
  p.on_backward([=](Program& p) {
    if (p.needs_grad(tokens)) p.contribute(tokens, view(p.grad(y), nchw_as_tokens(nchw)));
  });
  return y;
}

ValueId attention_core(Program& p, ValueId q, ValueId k, ValueId v, int64_t batch, int64_t head_dim) {
  // q, k, v [N,S,C] -> out [N,S,C]; heads h = C/d, B = N*h.
  // Per head: P = softmax(scale * Q_h K_h^T) [B,S,S], O_h = P V_h [B,S,d].
  const dims qs = p.shape(q);
  require(qs.size() == 3 && qs[0] == batch && qs[2] % head_dim == 0, "attention shape mismatch");
  const int64_t n = qs[0], s = qs[1], c = qs[2], d = head_dim, h = c / d, b = n * h;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // The [N,S,C] tokens seen as heads [N,h,S,d], and the plain head layout.
  const dnnl::memory::desc heads_view({n, h, s, d}, dt::f32, dims{s * c, d, c, 1});
  const auto heads_plain = plain_f32({n, h, s, d});
  const auto bsd = plain_f32({b, s, d});
  const auto bss = plain_f32({b, s, s});
  const dnnl::memory::desc bds_t({b, d, s}, dt::f32, dims{s * d, 1, d});  // [B,S,d] plain seen transposed
  const dnnl::memory::desc bss_t({b, s, s}, dt::f32, dims{s * s, 1, s});  // [B,S,S] plain seen transposed
  // Plain [B,S,d] head tensors seen as [N,S,h,d], i.e. plain [N,S,C] split.
  const dnnl::memory::desc heads_as_tokens({n, s, h, d}, dt::f32, dims{h * s * d, d, s * d, 1});

  dnnl::primitive_attr scaled = user_scratchpad_attr();
  scaled.set_output_scales(0, {scale});
  const auto attr = user_scratchpad_attr();

  const dnnl::memory qh = p.alloc(heads_plain), kh = p.alloc(heads_plain), vh = p.alloc(heads_plain);
  p.copy(view(p.data(q), heads_view), qh, false);
  p.copy(view(p.data(k), heads_view), kh, false);
  p.copy(view(p.data(v), heads_view), vh, false);
  const dnnl::memory probs = p.alloc(bss);  // scores, then softmax in place: P [B,S,S]
  dnnl::matmul::primitive_desc scores_pd(dnnl::matmul::desc(bsd, bds_t, bss), scaled, p.engine());
  p.forward(p.make<dnnl::matmul>(scores_pd),
            {{DNNL_ARG_SRC, view(qh, bsd)}, {DNNL_ARG_WEIGHTS, view(kh, bds_t)}, {DNNL_ARG_DST, probs}});
  dnnl::softmax_forward::primitive_desc softmax_pd(dnnl::softmax_forward::desc(prop_kind::forward_training, bss, 2),
                                                   attr, p.engine());
  p.forward(p.make<dnnl::softmax_forward>(softmax_pd), {{DNNL_ARG_SRC, probs}, {DNNL_ARG_DST, probs}});
  const dnnl::memory oh = p.alloc(bsd);
  dnnl::matmul::primitive_desc pv_pd(dnnl::matmul::desc(bss, bsd, bsd), attr, p.engine());
  p.forward(p.make<dnnl::matmul>(pv_pd),
            {{DNNL_ARG_SRC, probs}, {DNNL_ARG_WEIGHTS, view(vh, bsd)}, {DNNL_ARG_DST, oh}});
  const ValueId out = p.new_value(plain_f32(qs), true);
  p.copy(view(oh, heads_plain), view(p.data(out), heads_view), false);

  p.on_backward([=](Program& p) {
    const dnnl::memory doh = p.alloc(bsd);
    p.copy(view(p.grad(out), heads_view), view(doh, heads_plain), true);
    // dP = dO V^T ; dV = P^T dO
    const dnnl::memory dprobs = p.alloc(bss);
    dnnl::matmul::primitive_desc dp_pd(dnnl::matmul::desc(bsd, bds_t, bss), attr, p.engine());
    p.backward(p.make<dnnl::matmul>(dp_pd),
               {{DNNL_ARG_SRC, doh}, {DNNL_ARG_WEIGHTS, view(vh, bds_t)}, {DNNL_ARG_DST, dprobs}});
    const dnnl::memory dvh = p.alloc(bsd);
    dnnl::matmul::primitive_desc dv_pd(dnnl::matmul::desc(bss_t, bsd, bsd), attr, p.engine());
    p.backward(p.make<dnnl::matmul>(dv_pd),
               {{DNNL_ARG_SRC, view(probs, bss_t)}, {DNNL_ARG_WEIGHTS, doh}, {DNNL_ARG_DST, dvh}});
    // dScores = softmax backward ; dQ = scale dS K ; dK = scale dS^T Q
    const dnnl::memory dscores = p.alloc(bss);
    dnnl::softmax_backward::primitive_desc sb_pd(dnnl::softmax_backward::desc(bss, bss, 2), attr, p.engine(),
                                                 softmax_pd);
    p.backward(p.make<dnnl::softmax_backward>(sb_pd),
               {{DNNL_ARG_DST, probs}, {DNNL_ARG_DIFF_DST, dprobs}, {DNNL_ARG_DIFF_SRC, dscores}});
    const dnnl::memory dqh = p.alloc(bsd), dkh = p.alloc(bsd);
    dnnl::matmul::primitive_desc dq_pd(dnnl::matmul::desc(bss, bsd, bsd), scaled, p.engine());
    p.backward(p.make<dnnl::matmul>(dq_pd),
               {{DNNL_ARG_SRC, dscores}, {DNNL_ARG_WEIGHTS, view(kh, bsd)}, {DNNL_ARG_DST, dqh}});
    dnnl::matmul::primitive_desc dk_pd(dnnl::matmul::desc(bss_t, bsd, bsd), scaled, p.engine());
    p.backward(p.make<dnnl::matmul>(dk_pd),
               {{DNNL_ARG_SRC, view(dscores, bss_t)}, {DNNL_ARG_WEIGHTS, view(qh, bsd)}, {DNNL_ARG_DST, dkh}});
    if (p.needs_grad(q)) p.contribute(q, view(dqh, heads_as_tokens));
    if (p.needs_grad(k)) p.contribute(k, view(dkh, heads_as_tokens));
    if (p.needs_grad(v)) p.contribute(v, view(dvh, heads_as_tokens));
  });
  return out;
}

void timestep_embedding_table(const std::vector<int64_t>& timesteps, int64_t dim, float* out) {
  // Host computation (see the header): float32 throughout, as the reference.
  const int64_t half = dim / 2;
  const float log_max = std::log(10000.0f);
  for (size_t n = 0; n < timesteps.size(); ++n) {
    const float t = static_cast<float>(timesteps[n]);
    float* row = out + static_cast<int64_t>(n) * dim;
    for (int64_t j = 0; j < half; ++j) {
      const float exponent = (-log_max * static_cast<float>(j)) / static_cast<float>(half);
      const float arg = t * std::exp(exponent);
      row[j] = std::cos(arg);
      row[half + j] = std::sin(arg);
    }
    for (int64_t j = 2 * half; j < dim; ++j) row[j] = 0.0f;
  }
}

}  // namespace diffuflow
