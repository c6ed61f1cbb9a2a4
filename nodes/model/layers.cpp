#include "nodes/model/layers.hpp"

#include "nodes/model/layer_util.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <omp.h>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

namespace diffuflow {

namespace layer_util {

int64_t product(const dims& d, size_t from) {
  int64_t n = 1;
  for (size_t i = from; i < d.size(); ++i) n *= d[i];
  return n;
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("model layer: " + what);
}

bool is_reference(const char* impl) { return std::string(impl).rfind("ref", 0) == 0; }

bool is_channels_last(const dnnl::memory::desc& x_md) {
  // (At one position nhwc is plain NCHW's memory, and oneDNN calls the two
  // descriptors equal: that is plain.)
  const dims xs = x_md.dims();
  return xs.size() == 4 && xs[1] > 1 && xs[2] * xs[3] > 1 &&
         x_md == dnnl::memory::desc(xs, x_md.data_type(), tag::nhwc);
}

dnnl::memory::desc per_sample_channels(const dnnl::memory::desc& x_md) {
  const dims xs = x_md.dims();
  if (is_channels_last(x_md)) return dnnl::memory::desc({xs[0], xs[2] * xs[3], xs[1]}, x_md.data_type(), tag::abc);
  if (xs.size() == 4 && is_channel_blocked(x_md))
    return dnnl::memory::desc({1, xs[0] * xs[1], xs[2], xs[3]}, x_md.data_type(), tag::nChw16c);
  return dnnl::memory::desc({1, xs[0] * xs[1], product(xs, 2), 1}, x_md.data_type(), tag::nchw);
}

dnnl::memory::desc per_channel_operand(const dnnl::memory::desc& view_md) {
  const dims v = view_md.dims();
  if (v.size() == 3) return plain_f32({v[0], 1, v[2]});
  const int64_t nc = v[1];
  if (is_channel_blocked(view_md)) return dnnl::memory::desc({1, nc, 1, 1}, dnnl::memory::data_type::f32, tag::nChw16c);
  return plain_f32({1, nc, 1, 1});
}

dnnl::memory data_as_f32(Program& p, ValueId x) {
  return p.reorder_if_needed(p.data(x), p.grad_desc(x), /*in_backward=*/true);
}

ValueId relayout(Program& p, ValueId x, const dnnl::memory::desc& want) {
  if (p.desc(x) == want) return x;
  const ValueId y = p.new_value(want, true);
  p.copy(p.data(x), p.data(y), false);
  p.on_backward([=](Program& p) {
    if (p.needs_grad(x)) p.contribute(x, p.grad(y));
  });
  return y;
}

dnnl::memory ones(Program& p, const dims& shape) {
  return p.constant("ones" + shape_str(shape), plain_f32(shape),
                    [](float* data, size_t count) { std::fill(data, data + count, 1.0f); });
}

void append_channel_sums(Program& p, const dnnl::memory& src, const dnnl::memory::desc& x_md, const dnnl::memory& dst) {
  // sum[n,c] = sum over H, W of src: a matmul with a vector of ones.
  //   plain:         [N*C, S] x [S, 1]            -> [N*C, 1]
  //   blocked:       [1, 1, S] x [N*C/16, S, 16]  -> [N*C/16, 1, 16] (= plain [N, C])
  //   channels-last: [1, 1, S] x [N, S, C]        -> [N, 1, C]
  const dims xs = x_md.dims();
  const int64_t nc = xs[0] * xs[1], spatial = product(xs, 2);
  const auto attr = user_scratchpad_attr();
  const bool channels_last = is_channels_last(x_md);
  const bool blocked = channels_last || is_channel_blocked(x_md);
  const dnnl::memory ones = layer_util::ones(p, blocked ? dims{1, 1, spatial} : dims{spatial, 1});
  if (blocked) {
    const int64_t batch = channels_last ? xs[0] : nc / 16, lanes = channels_last ? xs[1] : 16;
    const auto src_md = plain_f32({batch, spatial, lanes});
    const auto out_md = plain_f32({batch, 1, lanes});
    dnnl::matmul::primitive_desc mm(dnnl::matmul::desc(ones.get_desc(), src_md, out_md), attr, p.engine());
    p.backward(p.make<dnnl::matmul>(mm),
               {{DNNL_ARG_SRC, ones}, {DNNL_ARG_WEIGHTS, view(src, src_md)}, {DNNL_ARG_DST, view(dst, out_md)}});
  } else {
    const auto src_md = plain_f32({nc, spatial});
    const auto out_md = plain_f32({nc, 1});
    dnnl::matmul::primitive_desc mm(dnnl::matmul::desc(src_md, ones.get_desc(), out_md), attr, p.engine());
    p.backward(p.make<dnnl::matmul>(mm),
               {{DNNL_ARG_SRC, view(src, src_md)}, {DNNL_ARG_WEIGHTS, ones}, {DNNL_ARG_DST, view(dst, out_md)}});
  }
}

}  // namespace layer_util

using namespace layer_util;

eltwise_op activation_op(Activation a) {
  switch (a) {
    case Activation::silu: return {dnnl::algorithm::eltwise_swish, 1.0f, 0.0f};
    case Activation::mish: return {dnnl::algorithm::eltwise_mish, 0.0f, 0.0f};
    case Activation::gelu: return {dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f};
    case Activation::relu: return {dnnl::algorithm::eltwise_relu, 0.0f, 0.0f};
  }
  throw std::logic_error("model layer: unknown activation");
}

Activation activation_named(const std::string& act_fn) {
  std::string name = act_fn;
  for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "mish") return Activation::mish;
  if (name == "gelu") return Activation::gelu;
  if (name == "relu") return Activation::relu;
  throw std::invalid_argument("model layer: unknown activation '" + act_fn + "' (silu, swish, mish, gelu, relu)");
}

namespace {

using dnnl::algorithm;
using dnnl::prop_kind;
using dt = dnnl::memory::data_type;

// The primitive descriptor `make(alg, allow_empty)` gives for `alg`, or for
// the direct algorithm where oneDNN has no kernel of `alg` for the shape.
template <typename Make>
auto with_direct_fallback(algorithm alg, Make make) {
  if (alg != algorithm::convolution_direct) {
    if (auto pd = make(alg, /*allow_empty=*/true)) return pd;
  }
  return make(algorithm::convolution_direct, /*allow_empty=*/false);
}

// A parameter's plain f32 descriptor: dense, or with its strides.
dnnl::memory::desc param_desc(const ParamRef& r) {
  return r.strides.empty() ? plain_f32(r.shape) : dnnl::memory::desc(r.shape, dt::f32, r.strides);
}
// A convolution bias's descriptor, or the zero descriptor for none.
dnnl::memory::desc bias_desc(const ParamRef& bias, int64_t co) {
  return bias.shape.empty() ? dnnl::memory::desc() : plain_f32({co});
}

// Appends the weight and bias gradients of a convolution to the backward
// list: d weight into the plain parameter-gradient slot (through a blocked
// temporary when the kernel prefers one), d bias straight into its slot.
// `alg`: Winograd where oneDNN has that kernel for the shape, else direct.
void append_conv_weight_grads(Program& p, const dnnl::convolution_forward::primitive_desc& fwd_pd,
                              const dnnl::memory& x, const dnnl::memory& dy, const ParamRef& weight,
                              const ParamRef& bias, const dims& strides, const dims& pads, const dims& pads_end,
                              algorithm alg = algorithm::convolution_direct) {
  const auto w_plain = param_desc(weight);
  const auto b_md = bias_desc(bias, weight.shape[0]);
  const dnnl::memory::desc w_any(weight.shape, dt::f32, tag::any);
  auto make = [&](algorithm a, bool allow_empty) {
    return dnnl::convolution_backward_weights::primitive_desc(
        dnnl::convolution_backward_weights::desc(a, x.get_desc(), w_any, b_md, dy.get_desc(), strides, pads,
                                                 pads_end),
        user_scratchpad_attr(), p.engine(), fwd_pd, allow_empty);
  };
  const auto pd = with_direct_fallback(alg, make);
  const dnnl::memory dw_plain = p.param_grad(weight.offset, w_plain);
  const bool same = pd.diff_weights_desc() == w_plain;
  const dnnl::memory dw = same ? dw_plain : p.alloc(pd.diff_weights_desc());
  Args args{{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
  if (!bias.shape.empty()) args[DNNL_ARG_DIFF_BIAS] = p.param_grad(bias.offset, b_md);
  p.backward(p.make<dnnl::convolution_backward_weights>(pd), std::move(args));
  if (!same) p.copy(dw, dw_plain, true);
}

// Appends the backward-data convolution `pd` (reading dy and the weights w)
// and hands its result to x's gradient: written there directly when the
// layouts agree, else through a temporary.
void append_conv_input_grad(Program& p, const dnnl::convolution_backward_data::primitive_desc& pd, ValueId x,
                            const dnnl::memory& dy, const dnnl::memory& w) {
  const dnnl::memory::desc dx_md = pd.diff_src_desc();
  const GradSink s = dx_md == p.grad_desc(x) ? p.sink(x) : GradSink{};
  const dnnl::memory dx = s.memory ? s.memory : p.alloc(dx_md);
  p.backward(p.make<dnnl::convolution_backward_data>(pd),
             {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, dx}});
  if (s.memory) {
    p.commit(s);
  } else {
    p.contribute(x, dx);
  }
}

// How a convolution adds a residual as it writes its output: not at all, by
// a binary post-op reading it, or by a sum post-op adding into the output's
// memory (for kernels without a binary post-op over a whole tensor: Winograd's,
// the brgemm ones).
enum class ResidualAdd { none, binary, sum };

// The attribute of a convolution adding a residual of `residual_md` by `add`.
dnnl::primitive_attr residual_attr(ResidualAdd add, const dnnl::memory::desc& residual_md) {
  dnnl::primitive_attr attr = user_scratchpad_attr();
  if (add == ResidualAdd::none) return attr;
  dnnl::post_ops ops;
  if (add == ResidualAdd::binary) {
    ops.append_binary(algorithm::binary_add, residual_md);
  } else {
    ops.append_sum(1.f);
  }
  attr.set_post_ops(ops);
  return attr;
}

// The value a convolution adding `residual` by `add` writes, of `y_md`: for
// a sum, the residual's own memory when no later step reads it and it has
// that descriptor, else a new value first filled with a copy of it.
ValueId residual_output(Program& p, const dnnl::memory::desc& y_md, ResidualAdd add, ValueId residual,
                        bool residual_spent) {
  if (add == ResidualAdd::sum && residual_spent && p.desc(residual) == y_md) return p.overwrite(residual, true);
  const ValueId y = p.new_value(y_md, true);
  if (add == ResidualAdd::sum) p.copy(p.data(residual), p.data(y), false);
  return y;
}

// A bf16 convolution's forward descriptor and the layout of its input and
// output: channels-last where oneDNN runs it on AMX (which only that layout
// has) or where the program's activations are channels-last and oneDNN has a
// fast kernel for it, else channel-blocked nChw16c where the jit kernels take
// it forward and backward, else channels-last. In the activations' layout
// the convolution writes its output in place and adds a residual as a
// post-op. The backward passes run in `backward_layout` (the program's
// Bf16Backward where oneDNN has fast kernels for it, else `layout`), with
// `backward_hint` the forward descriptor of that layout.
struct Bf16Conv {
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::memory::format_tag layout;
  dnnl::convolution_forward::primitive_desc backward_hint;
  dnnl::memory::format_tag backward_layout;
};

// The bf16 convolution for x [N,Ci,H,W] -> [N,Co,Ho,Wo], or nothing where
// the program runs convolutions in f32 or oneDNN has no fast bf16 kernel for
// the shape.
std::optional<Bf16Conv> bf16_conv(const Program& p, const dims& xs, const dims& weight_shape, const dims& ys,
                                  const dims& strides, const dims& pads, const dims& pads_end, bool has_bias) {
  if (p.precision() != Precision::bf16 || xs[1] % 16 != 0 || ys[1] % 16 != 0 || !native_bf16(p.engine()))
    return std::nullopt;
  const dnnl::memory::desc w_any(weight_shape, dt::bf16, tag::any);
  const auto b_md = has_bias ? plain_f32({ys[1]}) : dnnl::memory::desc();
  auto forward = [&](tag layout) {
    return dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct,
                                        dnnl::memory::desc(xs, dt::bf16, layout), w_any, b_md,
                                        dnnl::memory::desc(ys, dt::f32, layout), strides, pads, pads_end),
        user_scratchpad_attr(), p.engine(), /*allow_empty=*/true);
  };
  auto fast = [](const auto& pd) { return pd && !is_reference(pd.impl_info_str()); };
  // Whether oneDNN has fast backward-data and backward-weights kernels in `layout`.
  auto fast_backward = [&](tag layout, const dnnl::convolution_forward::primitive_desc& hint) {
    const dnnl::memory::desc yb(ys, dt::bf16, layout);
    const dnnl::convolution_backward_data::primitive_desc data(
        dnnl::convolution_backward_data::desc(algorithm::convolution_direct, dnnl::memory::desc(xs, dt::f32, layout),
                                              w_any, yb, strides, pads, pads_end),
        user_scratchpad_attr(), p.engine(), hint, /*allow_empty=*/true);
    const dnnl::convolution_backward_weights::primitive_desc weights(
        dnnl::convolution_backward_weights::desc(algorithm::convolution_direct,
                                                 dnnl::memory::desc(xs, dt::bf16, layout),
                                                 dnnl::memory::desc(weight_shape, dt::f32, tag::any), b_md, yb,
                                                 strides, pads, pads_end),
        user_scratchpad_attr(), p.engine(), hint, /*allow_empty=*/true);
    return fast(data) && fast(weights);
  };
  std::optional<Bf16Conv> found;
  const auto last = forward(tag::nhwc);
  const bool amx = fast(last) && std::string(last.impl_info_str()).find("amx") != std::string::npos;
  // The channel-blocked forward only where it may run: without AMX, or for a blocked backward.
  const bool want_blocked = !amx || (p.training() && p.bf16_backward() == Bf16Backward::blocked);
  // (A channels-last program without AMX builds it too, for its fallback.)
  const auto blocked = want_blocked ? forward(tag::nChw16c) : dnnl::convolution_forward::primitive_desc();
  const bool channels_last_program = p.activation_layout() == ActivationLayout::channels_last;
  if (amx || (channels_last_program && fast(last) && (!p.training() || fast_backward(tag::nhwc, last)))) {
    found = Bf16Conv{last, tag::nhwc, last, tag::nhwc};
  } else if (fast(blocked) && fast_backward(tag::nChw16c, blocked)) {
    found = Bf16Conv{blocked, tag::nChw16c, blocked, tag::nChw16c};
  } else if (fast(last)) {
    found = Bf16Conv{last, tag::nhwc, last, tag::nhwc};
  } else {
    return std::nullopt;
  }
  if (!p.training()) return found;
  const Bf16Backward asked = p.bf16_backward();
  const tag want = asked == Bf16Backward::channels_last ? tag::nhwc
                   : asked == Bf16Backward::blocked     ? tag::nChw16c
                                                        : found->layout;
  if (want != found->layout) {
    const auto& hint = want == tag::nhwc ? last : blocked;
    if (fast(hint) && fast_backward(want, hint)) {
      found->backward_hint = hint;
      found->backward_layout = want;
    }
  }
  return found;
}

// The bf16 convolution (Precision::bf16): x and the weights are rounded to
// bf16 copies in bf16_conv's layout; the convolution accumulates in f32 and
// writes the program's activation type (bf16 where activation_type() says
// so, else f32) in the same layout: straight into the activation where that
// is the activations' layout, else through a reorder into it. Backward, in
// bf16_conv's backward layout: dy is rounded to bf16 in it; the input gradient comes back f32 and
// the weight and bias gradients are f32. The bf16 copy of x is kept from
// forward for the weight gradient (reordered there when the layouts differ).
// Returns no value (the caller runs f32) when bf16_conv finds none for the
// shape. A residual in the activation layout (either type) is added as the
// output is written (`fused` set): in the activations' layout by a binary
// post-op, or where oneDNN has none for a whole tensor (its brgemm kernels,
// AMX's among them) by a sum post-op into the output, written over the
// residual when no later step reads it (`residual_spent`), else over a copy
// of it; in another layout, when the residual is spent, by the reorder out
// of the convolution's layout adding into the residual's memory.
std::optional<ValueId> conv2d_bf16(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias,
                                   const dims& ys, const dims& strides, const dims& pads, const dims& pads_end,
                                   ValueId residual, bool residual_spent, bool& fused) {
  const dims xs = p.shape(x);
  const auto found = bf16_conv(p, xs, weight.shape, ys, strides, pads, pads_end, !bias.shape.empty());
  if (!found) return std::nullopt;
  const tag layout = found->layout;
  // Whether the convolution's layout is the activations'.
  const bool direct = dnnl::memory::desc(ys, dt::f32, layout) == p.activation_desc(ys);
  dnnl::convolution_forward::primitive_desc fwd_pd = found->pd;
  const dnnl::memory::desc xb_md(xs, dt::bf16, layout);
  const dnnl::memory::desc wb_any(weight.shape, dt::bf16, tag::any);
  const auto w_plain = param_desc(weight);
  const auto b_md = bias_desc(bias, ys[1]);
  const auto attr = user_scratchpad_attr();

  const dnnl::memory xb = p.reorder_if_needed(p.data(x), xb_md, false);
  const dnnl::memory wb = p.param_as(weight.offset, w_plain, fwd_pd.weights_desc());
  const bool has_residual = residual >= 0 && residual != x &&
                            p.desc(residual) == p.activation_desc(ys, p.desc(residual).data_type());
  // The convolution writing `out` (adding the residual as `add` says), or
  // nothing where oneDNN has no fast kernel for that or picks other weights.
  using Add = ResidualAdd;
  auto make_run = [&](const dnnl::memory::desc& out, Add add) {
    const dnnl::primitive_attr run_attr = residual_attr(add, add == Add::none ? out : p.desc(residual));
    const auto kind = p.training() ? prop_kind::forward_training : prop_kind::forward_inference;
    dnnl::convolution_forward::primitive_desc pd(
        dnnl::convolution_forward::desc(kind, algorithm::convolution_direct, xb_md, wb_any, b_md, out, strides, pads,
                                        pads_end),
        run_attr, p.engine(), /*allow_empty=*/true);
    const bool fast = pd && !is_reference(pd.impl_info_str()) && pd.weights_desc() == fwd_pd.weights_desc();
    return fast ? std::optional<dnnl::convolution_forward::primitive_desc>(pd) : std::nullopt;
  };
  // Writing `out`: with the residual added by a post-op where one is fast.
  // The activation type unfused comes before an f32 output fused: an f32
  // output would make the next layers convert.
  Add how = Add::none;
  auto make_out = [&](const dnnl::memory::desc& out) {
    if (direct && has_residual) {
      for (const Add add : {Add::binary, Add::sum}) {
        if (auto r = make_run(out, add)) {
          how = add;
          return r;
        }
      }
    }
    how = Add::none;
    return make_run(out, Add::none);
  };
  dnnl::memory::desc y_out_md(ys, p.activation_type(), layout);
  auto run = make_out(y_out_md);
  if (!run && y_out_md.data_type() != dt::f32) {
    y_out_md = dnnl::memory::desc(ys, dt::f32, layout);
    run = make_out(y_out_md);
  }
  if (!run) {
    y_out_md = dnnl::memory::desc(ys, dt::f32, layout);
    run = fwd_pd;
    how = Add::none;
  }
  fused = how != Add::none;
  const dnnl::convolution_forward::primitive_desc run_pd = *run;
  // Another layout: the reorder out of the convolution's output adds into the spent residual.
  const bool add_into = !direct && has_residual && residual_spent;
  fused = fused || add_into;
  ValueId y;
  if (direct) {
    y = residual_output(p, y_out_md, how, residual, residual_spent);
    Args args{{DNNL_ARG_SRC, xb}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_DST, p.data(y)}};
    if (!bias.shape.empty()) args[DNNL_ARG_BIAS] = p.param(bias.offset, b_md);
    if (how == Add::binary) args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = p.data(residual);
    p.forward(p.make<dnnl::convolution_forward>(run_pd), std::move(args));
  } else {
    const dnnl::memory y_out = p.alloc(y_out_md);
    Args args{{DNNL_ARG_SRC, xb}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_DST, y_out}};
    if (!bias.shape.empty()) args[DNNL_ARG_BIAS] = p.param(bias.offset, b_md);
    p.forward(p.make<dnnl::convolution_forward>(run_pd), std::move(args));
    y = add_into ? p.overwrite(residual, true) : p.new_value(p.activation_desc(ys, y_out_md.data_type()), true);
    p.copy(y_out, p.data(y), false, /*accumulate=*/add_into);
  }

  p.on_backward([=](Program& p) {
    // The residual's gradient is dy itself (see conv2d_impl).
    if (fused && p.needs_grad(residual) && !p.share_grad(residual, y)) p.contribute(residual, p.grad(y));
    const tag back = found->backward_layout;
    const dnnl::memory::desc dyb_md(ys, dt::bf16, back);
    const dnnl::memory dyb = p.reorder_if_needed(p.grad(y), dyb_md, true);
    if (p.needs_grad(x)) {
      dnnl::convolution_backward_data::primitive_desc pd(
          dnnl::convolution_backward_data::desc(algorithm::convolution_direct, dnnl::memory::desc(xs, dt::f32, back),
                                                wb_any, dyb_md, strides, pads, pads_end),
          attr, p.engine(), found->backward_hint);
      append_conv_input_grad(p, pd, x, dyb, p.param_as(weight.offset, w_plain, pd.weights_desc()));
    }
    const dnnl::memory xb_back = p.reorder_if_needed(xb, dnnl::memory::desc(xs, dt::bf16, back), true);
    append_conv_weight_grads(p, found->backward_hint, xb_back, dyb, weight, bias, strides, pads, pads_end);
  });
  return y;
}

}  // namespace

namespace {

// The algorithm an f32 convolution's forward (or, `backward`, its backward
// passes) asks oneDNN for (ConvAlgorithm): Winograd is only ever asked for
// 3x3 stride-1 kernels; by_shape asks for it on CPU engines for channels in
// and out in whole blocks of 16 and enough output tiles per OpenMP thread
// (prefers_winograd). The caller falls back to direct where oneDNN has no
// Winograd kernel.
algorithm f32_conv_algorithm(const Program& p, const dims& xs, const dims& weight_shape, const dims& ys,
                             int64_t stride, bool backward) {
  const ConvAlgorithm setting = p.conv_algorithm();
  const bool three_by_three = weight_shape[2] == 3 && weight_shape[3] == 3 && stride == 1;
  if (setting == ConvAlgorithm::direct || !three_by_three) return algorithm::convolution_direct;
  if (setting == ConvAlgorithm::winograd) return algorithm::convolution_winograd;
  const int64_t tiles = ys[0] * ((ys[2] + 3) / 4) * ((ys[3] + 3) / 4);
  const bool pays = p.engine().get_kind() == dnnl::engine::kind::cpu && xs[1] % 16 == 0 && ys[1] % 16 == 0 &&
                    prefers_winograd(tiles, omp_get_max_threads(), backward);
  return pays ? algorithm::convolution_winograd : algorithm::convolution_direct;
}

// conv2d; with a residual (>= 0), conv2d + residual in one primitive when
// oneDNN has a jit kernel for that (`fused` set): f32 direct, a binary
// post-op reading the residual in the output's layout; f32 Winograd (and
// kernels without that post-op), a sum post-op adding into the output,
// written over a spent residual or first filled with a copy of it; bf16:
// see conv2d_bf16. Else `fused` stays false and the caller adds the
// residual.
ValueId conv2d_impl(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t stride,
                    int64_t padding, int64_t padding_end, ValueId residual, bool residual_spent, bool& fused) {
  const Program::LayerScope layer(p, "convolution");
  fused = false;
  // x [N,Ci,H,W] -> y [N,Co,Ho,Wo]; weight [Co,Ci,k,k], bias [Co]
  const dims xs = p.shape(x);
  require(xs.size() == 4 && weight.shape.size() == 4 && weight.shape[1] == xs[1], "conv2d input/weight mismatch");
  if (padding_end < 0) padding_end = padding;
  const int64_t co = weight.shape[0], k = weight.shape[2];
  const int64_t ho = (xs[2] + padding + padding_end - k) / stride + 1;
  const int64_t wo = (xs[3] + padding + padding_end - k) / stride + 1;
  // The native kernels take dense weights and a bias; a weight slice or no
  // bias runs oneDNN's convolutions.
  if (weight.strides.empty() && !bias.shape.empty()) {
    if (auto y = conv2d_few_channels(p, x, weight, bias, stride, padding, padding_end, residual)) return *y;
  }
  if (auto y = conv2d_bf16(p, x, weight, bias, {xs[0], co, ho, wo}, {stride, stride}, {padding, padding},
                           {padding_end, padding_end}, residual, residual_spent, fused))
    return *y;
  auto y_md = p.activation_desc({xs[0], co, ho, wo});
  const auto w_plain = param_desc(weight);
  const dnnl::memory::desc w_any(weight.shape, dt::f32, tag::any);
  const auto b_md = bias_desc(bias, co);
  const dims strides{stride, stride}, pads{padding, padding}, pads_end{padding_end, padding_end};
  const auto attr = user_scratchpad_attr();
  algorithm alg = f32_conv_algorithm(p, xs, weight.shape, y_md.dims(), stride, /*backward=*/false);
  const algorithm bwd_alg = f32_conv_algorithm(p, xs, weight.shape, y_md.dims(), stride, /*backward=*/true);
  auto make_fwd_with = [&](algorithm a, const dnnl::memory::desc& src, const dnnl::memory::desc& dst,
                           const dnnl::primitive_attr& with, bool allow_empty) {
    return dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(prop_kind::forward_training, a, src, w_any, b_md, dst, strides, pads,
                                        pads_end),
        with, p.engine(), allow_empty);
  };
  auto make_fwd = [&](const dnnl::memory::desc& src, const dnnl::memory::desc& dst,
                      const dnnl::primitive_attr& with = user_scratchpad_attr(), bool allow_empty = false) {
    return make_fwd_with(alg, src, dst, with, allow_empty);
  };
  // The convolution runs on the activations' layout unless that mix of
  // layouts (e.g. a blocked input and a few-channel plain output) only has a
  // reference kernel: then on plain tensors.
  // A bf16 input (a bf16 program's activation) is read through an f32
  // copy, and the output is f32.
  auto x_md = p.desc(x).data_type() == dt::f32 ? p.desc(x) : p.activation_desc(xs);
  // `alg` becomes the algorithm the forward got.
  auto fwd_pd = with_direct_fallback(alg, [&](algorithm a, bool allow_empty) {
    auto pd = make_fwd_with(a, x_md, y_md, attr, allow_empty);
    if (pd) alg = a;
    return pd;
  });
  // A few-channel output of a blocked input (the last convolution) first
  // tries the blocked layout with its channels zero-padded to a block: the
  // jit kernels take it, where plain tensors only have a gemm kernel.
  if (is_channel_blocked(x_md) && !is_channel_blocked(y_md) && y_md.dims()[1] < 16) {
    const dnnl::memory::desc padded(y_md.dims(), dt::f32, tag::nChw16c);
    auto pd = make_fwd(x_md, padded, attr, /*allow_empty=*/true);
    if (pd && std::string(pd.impl_info_str()).rfind("jit", 0) == 0) {
      y_md = padded;
      fwd_pd = pd;
    }
  }
  if (is_reference(fwd_pd.impl_info_str()) && x_md != plain_f32(xs)) {
    x_md = plain_f32(xs);
    y_md = plain_f32(y_md.dims());
    fwd_pd = make_fwd(x_md, y_md);
  }
  const dnnl::memory x_mem = p.reorder_if_needed(p.data(x), x_md, false);
  // The residual add as a post-op: dst = conv(x) + bias + residual. The
  // backward needs no hint of it (fwd_pd stays the plain convolution).
  // Winograd takes no binary post-op but a sum: dst += conv(x) + bias.
  // The brgemm kernels (channels-last) take a sum post-op too, but no binary
  // one over a whole tensor: those get the sum.
  const bool winograd = alg == algorithm::convolution_winograd;
  dnnl::convolution_forward::primitive_desc run_pd = fwd_pd;
  ResidualAdd how = ResidualAdd::none;
  if (residual >= 0 && residual != x && p.desc(residual) == y_md) {
    for (const ResidualAdd add : {ResidualAdd::binary, ResidualAdd::sum}) {
      if (winograd && add == ResidualAdd::binary) continue;
      auto pd = make_fwd(x_md, y_md, residual_attr(add, y_md), /*allow_empty=*/true);
      if (pd && !is_reference(pd.impl_info_str()) && pd.weights_desc() == fwd_pd.weights_desc()) {
        run_pd = pd;
        how = add;
        break;
      }
    }
  }
  fused = how != ResidualAdd::none;
  const bool with_residual = fused;
  const ValueId y = residual_output(p, y_md, how, residual, residual_spent);
  const dnnl::memory w_fwd = p.param_as(weight.offset, w_plain, fwd_pd.weights_desc());
  Args args{{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, w_fwd}, {DNNL_ARG_DST, p.data(y)}};
  if (!bias.shape.empty()) args[DNNL_ARG_BIAS] = p.param(bias.offset, b_md);
  if (how == ResidualAdd::binary) args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = p.data(residual);
  p.forward(p.make<dnnl::convolution_forward>(run_pd), std::move(args));

  p.on_backward([=](Program& p) {
    const dnnl::memory dy = p.grad(y);
    // The residual's gradient is dy itself: shared when it can be (every
    // read of dy below is appended by this code, right after).
    if (with_residual && p.needs_grad(residual) && !p.share_grad(residual, y)) p.contribute(residual, dy);
    if (p.needs_grad(x)) {
      auto make_bwd = [&](const dnnl::memory::desc& diff_src, const dnnl::memory::desc& diff_dst) {
        return with_direct_fallback(bwd_alg, [&](algorithm a, bool allow_empty) {
          return dnnl::convolution_backward_data::primitive_desc(
              dnnl::convolution_backward_data::desc(a, diff_src, w_any, diff_dst, strides, pads, pads_end), attr,
              p.engine(), fwd_pd, allow_empty);
        });
      };
      dnnl::memory::desc dx_md = x_md;
      auto pd = make_bwd(dx_md, y_md);
      dnnl::memory dy_data = dy;
      // A few-channel plain input gradient (the first convolution's) of a
      // blocked dy: jit kernels take it with its channels zero-padded to a
      // block; it is then copied into the plain gradient.
      if (is_reference(pd.impl_info_str()) && is_channel_blocked(y_md) && !is_channel_blocked(x_md) && xs[1] < 16) {
        const dnnl::memory::desc padded(xs, dt::f32, tag::nChw16c);
        auto padded_pd = make_bwd(padded, y_md);
        if (!is_reference(padded_pd.impl_info_str())) {
          dx_md = padded;
          pd = padded_pd;
        }
      }
      // Same fallback as the forward: a few-channel plain gradient of a
      // blocked one only has a reference kernel, so read dy as plain.
      if (is_reference(pd.impl_info_str()) && y_md != plain_f32(y_md.dims())) {
        pd = make_bwd(dx_md, plain_f32(y_md.dims()));
        dy_data = p.reorder_if_needed(dy, pd.diff_dst_desc(), true);
      }
      append_conv_input_grad(p, pd, x, dy_data, p.param_as(weight.offset, w_plain, pd.weights_desc()));
    }
    append_conv_weight_grads(p, fwd_pd, x_mem, dy, weight, bias, strides, pads, pads_end, bwd_alg);
  });
  return y;
}

}  // namespace

ValueId conv2d(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t stride, int64_t padding,
               int64_t padding_end) {
  bool fused = false;
  return conv2d_impl(p, x, weight, bias, stride, padding, padding_end, -1, false, fused);
}

ValueId conv2d_add(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, ValueId residual,
                   int64_t stride, int64_t padding, bool residual_spent) {
  require(residual >= 0, "conv2d_add without a residual");
  bool fused = false;
  const ValueId y = conv2d_impl(p, x, weight, bias, stride, padding, -1, residual, residual_spent, fused);
  return fused ? y : add(p, residual, y);
}

int64_t linear_row_batches(int64_t rows) {
  for (int64_t b = 16; b > 1; --b) {
    if (rows % b == 0 && rows / b >= 128) return b;
  }
  return 1;
}

namespace {

// A linear layer's parameter gradients: d weight = dy^T x ([O, M] x [M, I])
// and d bias = ones^T dy, matmuls over the M rows that write the plain
// gradients directly (the inner-product backward-weights kernel reduces over
// many rows far slower). One such matmul has only a few blocks of its small
// output to share among threads, so with many rows (the attention's
// projections: M = N*S tokens) the rows are split into batches, each
// reduced into partial sums [B, O, I] and [B, 1, O] by a batched matmul, and
// a second matmul with ones adds the B partials.
void linear_param_grads(Program& p, const dnnl::memory& x, const dnnl::memory& dy, int64_t rows, int64_t in,
                        int64_t out, int64_t weight_offset, int64_t bias_offset) {
  const auto attr = user_scratchpad_attr();
  const int64_t batches = linear_row_batches(rows), r = rows / batches;
  // dy [M, O] seen per batch as [B, O, r] (transposed) and [B, r, O]; x as [B, r, I]
  const dnnl::memory::desc dy_t({batches, out, r}, dt::f32, dims{r * out, 1, out});
  const auto dy3 = plain_f32({batches, r, out});
  const auto x3 = plain_f32({batches, r, in});
  const auto dw_md = plain_f32({batches, out, in});
  const auto db_md = plain_f32({batches, 1, out});
  const dnnl::memory ones = layer_util::ones(p, {batches, 1, r});
  const bool split = batches > 1;
  const dnnl::memory dw = split ? p.alloc(dw_md) : view(p.param_grad(weight_offset, plain_f32({out, in})), dw_md);
  const dnnl::memory db = split ? p.alloc(db_md) : view(p.param_grad(bias_offset, plain_f32({out})), db_md);
  dnnl::matmul::primitive_desc dw_pd(dnnl::matmul::desc(dy_t, x3, dw_md), attr, p.engine());
  p.backward(p.make<dnnl::matmul>(dw_pd),
             {{DNNL_ARG_SRC, view(dy, dy_t)}, {DNNL_ARG_WEIGHTS, view(x, x3)}, {DNNL_ARG_DST, dw}});
  dnnl::matmul::primitive_desc db_pd(dnnl::matmul::desc(ones.get_desc(), dy3, db_md), attr, p.engine());
  p.backward(p.make<dnnl::matmul>(db_pd),
             {{DNNL_ARG_SRC, ones}, {DNNL_ARG_WEIGHTS, view(dy, dy3)}, {DNNL_ARG_DST, db}});
  if (!split) return;
  // the partials' sums: [1, B] x [B, O*I] and [1, B] x [B, O]
  const dnnl::memory sum_ones = layer_util::ones(p, {1, batches});
  for (const auto& [partial, offset, size] :
       {std::tuple{dw, weight_offset, out * in}, std::tuple{db, bias_offset, out}}) {
    const auto parts_md = plain_f32({batches, size});
    const auto total_md = plain_f32({1, size});
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(sum_ones.get_desc(), parts_md, total_md), attr, p.engine());
    p.backward(p.make<dnnl::matmul>(pd), {{DNNL_ARG_SRC, sum_ones},
                                          {DNNL_ARG_WEIGHTS, view(partial, parts_md)},
                                          {DNNL_ARG_DST, p.param_grad(offset, total_md)}});
  }
}

}  // namespace

ValueId linear(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias) {
  const Program::LayerScope layer(p, "linear");
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
  const dnnl::memory w_fwd = p.param_as(weight.offset, w_plain, fwd_pd.weights_desc());
  p.forward(p.make<dnnl::inner_product_forward>(fwd_pd), {{DNNL_ARG_SRC, view(p.data(x), x2)},
                                                          {DNNL_ARG_WEIGHTS, w_fwd},
                                                          {DNNL_ARG_BIAS, p.param(bias.offset, b_md)},
                                                          {DNNL_ARG_DST, view(p.data(y), y2)}});

  p.on_backward([=](Program& p) {
    const dnnl::memory dy = view(p.grad(y), y2);
    if (p.needs_grad(x)) {
      // dx = dy w: [M, O] x [O, I], the plain weight as it is. A matmul
      // shares the M rows among threads better than the inner-product
      // backward-data kernel did on the attention's projections (M = N*S
      // tokens; docs/performance.md).
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(y2, w_plain, x2), attr, p.engine());
      const GradSink s = p.sink(x);
      p.backward(p.make<dnnl::matmul>(pd), {{DNNL_ARG_SRC, dy},
                                            {DNNL_ARG_WEIGHTS, p.param(weight.offset, w_plain)},
                                            {DNNL_ARG_DST, view(s.memory, x2)}});
      p.commit(s);
    }
    linear_param_grads(p, p.data(x), dy, rows, in, out, weight.offset, bias.offset);
  });
  return y;
}

namespace {

// The group norm's steps as binary and matmul primitives with post-ops, the
// image-sized passes and the small arithmetic on per-(sample, channel)
// numbers ([N, C] plain f32) alike, so that a pass runs on the engine from
// start to end (no host step, no stream wait: on a GPU engine every wait
// drains the queue).
struct PostOp {
  algorithm kind = algorithm::undef;  // undef: a sum (dst += the result)
  float alpha = 0, beta = 0;          // an eltwise post-op's
  dnnl::memory operand;               // a binary post-op's second input
};
PostOp eltwise_post(algorithm kind, float alpha = 0, float beta = 0) { return {kind, alpha, beta, {}}; }
PostOp binary_post(algorithm kind, const dnnl::memory& operand) { return {kind, 0, 0, operand}; }
PostOp sum_post() { return {}; }

dnnl::primitive_attr post_op_attr(const std::vector<PostOp>& ops, Args& args) {
  dnnl::post_ops chain;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (ops[i].operand) {
      chain.append_binary(ops[i].kind, ops[i].operand.get_desc());
      args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(static_cast<int>(i)) | DNNL_ARG_SRC_1] = ops[i].operand;
    } else if (ops[i].kind == algorithm::undef) {
      chain.append_sum(1.0f);
    } else {
      chain.append_eltwise(1.0f, ops[i].kind, ops[i].alpha, ops[i].beta);
    }
  }
  dnnl::primitive_attr attr = user_scratchpad_attr();
  attr.set_post_ops(chain);
  return attr;
}

void append_step(Program& p, bool in_backward, dnnl::primitive primitive, Args args) {
  if (in_backward)
    p.backward(std::move(primitive), std::move(args));
  else
    p.forward(std::move(primitive), std::move(args));
}

// dst = ops(a `kind` b); b may broadcast.
void binary_step(Program& p, bool in_backward, algorithm kind, const dnnl::memory& a, const dnnl::memory& b,
                 const dnnl::memory& dst, const std::vector<PostOp>& ops = {}) {
  Args args{{DNNL_ARG_SRC_0, a}, {DNNL_ARG_SRC_1, b}, {DNNL_ARG_DST, dst}};
  const dnnl::primitive_attr attr = post_op_attr(ops, args);
  dnnl::binary::primitive_desc pd(dnnl::binary::desc(kind, a.get_desc(), b.get_desc(), dst.get_desc()), attr,
                                  p.engine());
  append_step(p, in_backward, p.make<dnnl::binary>(pd), std::move(args));
}

// dst = ops(a x w).
void matmul_step(Program& p, bool in_backward, const dnnl::memory& a, const dnnl::memory& w, const dnnl::memory& dst,
                 const std::vector<PostOp>& ops = {}) {
  Args args{{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst}};
  const dnnl::primitive_attr attr = post_op_attr(ops, args);
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a.get_desc(), w.get_desc(), dst.get_desc()), attr, p.engine());
  append_step(p, in_backward, p.make<dnnl::matmul>(pd), std::move(args));
}

// Group means, broadcast back to the channels, as one matmul: per-channel
// numbers [rows, C] (a sample's channels in a row, groups of cg adjacent
// channels) seen as [rows * C / k, k] times a block-diagonal [k, k] whose
// cg x cg blocks hold 1/cg (`centred`: the identity minus that, so the
// product is each number minus its group's mean), all times `factor`. k is
// the smallest multiple of cg that is at least 16 and divides C (C itself
// when none does), so every row of the view holds whole groups and the matmul
// does little more than the sums it needs. (The factor is in the matrix, not
// in post-ops: oneDNN 2.6.3's brgemm matmul applies the first linear post-op's
// coefficients to a second one.)
struct GroupMatrix {
  int64_t k = 0;
  dnnl::memory matrix;

  GroupMatrix(Program& p, int64_t c, int64_t cg, bool centred, float factor) : k(c) {
    for (int64_t m = cg; m < c; m += cg) {
      if (m >= 16 && c % m == 0) {
        k = m;
        break;
      }
    }
    char key[96];
    std::snprintf(key, sizeof key, "group_matrix/%lld/%lld/%d/%a", static_cast<long long>(k),
                  static_cast<long long>(cg), centred ? 1 : 0, static_cast<double>(factor));
    const int64_t size = k, group = cg;
    matrix = p.constant(key, plain_f32({k, k}), [=](float* data, size_t) {
      for (int64_t i = 0; i < size; ++i) {
        for (int64_t j = 0; j < size; ++j) {
          const double mean = i / group == j / group ? 1.0 / static_cast<double>(group) : 0.0;
          const double entry = centred ? (i == j ? 1.0 : 0.0) - mean : mean;
          data[i * size + j] = static_cast<float>(entry * static_cast<double>(factor));
        }
      }
    });
  }
  // `rows` x C numbers (plain) as the matmul's [rows * C / k, k] source or destination.
  dnnl::memory rows(const dnnl::memory& numbers) const {
    const int64_t count = static_cast<int64_t>(numbers.get_desc().get_size() / sizeof(float));
    return view(numbers, plain_f32({count / k, k}));
  }
};

// With a shift (>= 0, [N,C]): the group norm of x + shift[:,:,None,None],
// the sum never stored: the shift moves each (n,c)'s mean and nothing else,
// so the statistics take it in and every pass over x reads x itself.
// The native kernel's GroupNorm followed by `act`: SiLU inside the kernel,
// any other activation as a step of its own.
ValueId native_group_norm_act(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups,
                              float eps, std::optional<Activation> act, ValueId shift, ValueId x2 = -1) {
  const bool silu = act && *act == Activation::silu;
  const ValueId y = group_norm_native(p, x, weight, bias, groups, eps, silu, shift, x2);
  return act && !silu ? activation(p, y, *act) : y;
}

ValueId group_norm_impl(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups, float eps,
                        std::optional<Activation> fused, ValueId shift = -1) {
  const Program::LayerScope layer(p, "group_norm");
  // x [N,C,...] -> y [N,C,...], any layout. Forward:
  //   1. batch-norm statistics over the [1, N*C, H, W] view: mean and
  //      (biased) variance of every (n, c) over the spatial positions;
  //   2. per (n, c), by small primitives: the group's mean m and variance v
  //      (the mean over its channels of their variance plus their squared
  //      distance to m), r = 1/sqrt(v + eps), a = gamma r, b = beta - m a;
  //   3. y = x a + b, one binary primitive over the view.
  // A shift t enters step 2 only: the channel means of x + t are those of x
  // plus t, and (x + t - m) is x minus m - t, the per-(n,c) mean "in x's
  // frame" that steps 3 and the backward use.
  const dims xs = p.shape(x);
  require(xs.size() >= 2 && xs[1] % groups == 0, "group_norm channels not divisible by groups");
  require(shift < 0 || p.shape(shift) == dims({xs[0], xs[1]}), "group_norm shift must be [N,C]");
  const int64_t n = xs[0], c = xs[1], cg = c / groups, spatial = product(xs, 2), nc = n * c;
  const auto x_md = p.desc(x);
  // The [1, N*C, H, W] view is the same memory for these two layouts only.
  // bf16 data is normalised into bf16, statistics, scale and shift in f32:
  // by the native kernel, or in inference by the same primitives (oneDNN
  // 2.6's batch-norm backward takes no bf16 data with f32 gradients).
  const dt type = x_md.data_type();
  require(type == dt::f32 || (type == dt::bf16 && (!p.training() || p.native_kernels())),
          "group_norm takes f32 inputs (bf16 in inference programs, or with the native kernel)");
  if (p.native_kernels()) return native_group_norm_act(p, x, weight, bias, groups, eps, fused, shift);
  require(x_md == dnnl::memory::desc(xs, type, plain_format(xs.size())) ||
              (xs.size() == 4 && x_md == dnnl::memory::desc(xs, type, tag::nChw16c)),
          "group_norm takes plain or nChw16c inputs (nhwc with the native kernel)");
  const auto bn_md = per_sample_channels(x_md);
  const auto nc_b = per_channel_operand(bn_md);
  const auto numbers_md = plain_f32({n, c});
  const auto row_md = plain_f32({1, c});
  const auto attr = user_scratchpad_attr();
  using flags = dnnl::normalization_flags;

  // gamma | beta [2C], by the prepare list (once per change of the
  // parameters): one copy when adjacent in the parameters (weight, then bias:
  // the models' module order).
  const dnnl::memory gamma_beta = p.alloc_persistent(plain_f32({2 * c}));
  if (bias.offset == weight.offset + c) {
    p.prepare_copy(p.param(weight.offset, plain_f32({2 * c})), gamma_beta);
  } else {
    p.prepare_copy(p.param(weight.offset, plain_f32({c})), flat_slice(gamma_beta, 0, plain_f32({c})));
    p.prepare_copy(p.param(bias.offset, plain_f32({c})), flat_slice(gamma_beta, c, plain_f32({c})));
  }
  const dnnl::memory gamma = flat_slice(gamma_beta, 0, row_md), beta = flat_slice(gamma_beta, c, row_md);
  const dnnl::memory ones = layer_util::ones(p, {n, c});
  const GroupMatrix group_mean(p, c, cg, false, 1.0f);
  auto numbers = [&] { return p.alloc(numbers_md); };

  // 1. channel statistics (the normalised copy the primitive also writes is not used).
  const dnnl::memory mean_c = numbers(), var_c = numbers();
  dnnl::batch_normalization_forward::primitive_desc stats_pd(
      dnnl::batch_normalization_forward::desc(prop_kind::forward_training, bn_md, eps, flags::none), attr,
      p.engine());
  const dnnl::memory scratch = p.alloc(bn_md);
  p.forward(p.make<dnnl::batch_normalization_forward>(stats_pd),
            {{DNNL_ARG_SRC, view(p.data(x), bn_md)},
             {DNNL_ARG_DST, scratch},
             {DNNL_ARG_MEAN, view(mean_c, plain_f32({nc}))},
             {DNNL_ARG_VARIANCE, view(var_c, plain_f32({nc}))}});
  // 2. the group statistics, in the frame of x + t.
  dnnl::memory shifted_mean = mean_c;
  const dnnl::memory t = shift >= 0 ? p.reorder_if_needed(p.data(shift), numbers_md, false) : dnnl::memory();
  if (shift >= 0) {
    shifted_mean = numbers();
    binary_step(p, false, algorithm::binary_add, mean_c, t, shifted_mean);
  }
  const dnnl::memory group_m = numbers(), spread = numbers(), var_eps = numbers(), rstd = numbers();
  matmul_step(p, false, group_mean.rows(shifted_mean), group_mean.matrix, group_mean.rows(group_m));
  // var_c + (mean_c - m)^2, then its group mean plus eps.
  binary_step(p, false, algorithm::binary_sub, shifted_mean, group_m, spread,
               {eltwise_post(algorithm::eltwise_square), binary_post(algorithm::binary_add, var_c)});
  matmul_step(p, false, group_mean.rows(spread), group_mean.matrix, group_mean.rows(var_eps),
               {eltwise_post(algorithm::eltwise_linear, 1.0f, eps)});
  binary_step(p, false, algorithm::binary_div, ones, var_eps, rstd, {eltwise_post(algorithm::eltwise_sqrt)});
  // The mean in x's frame, and y = x a + b's coefficients.
  dnnl::memory mean = group_m;
  if (shift >= 0) {
    mean = numbers();
    binary_step(p, false, algorithm::binary_sub, group_m, t, mean);
  }
  const dnnl::memory a = numbers(), b = numbers();
  binary_step(p, false, algorithm::binary_mul, rstd, gamma, a);
  binary_step(p, false, algorithm::binary_mul, mean, a, b,
               {eltwise_post(algorithm::eltwise_linear, -1.0f, 0.0f), binary_post(algorithm::binary_add, beta)});

  // 3. y = x * a + b in one binary pass over the view (then the activation as a
  // post-op when fused: the same arithmetic as the separate activation step,
  // so inference and training programs give identical outputs).
  std::vector<PostOp> apply_ops{binary_post(algorithm::binary_add, view(b, nc_b))};
  if (fused) {
    const eltwise_op op = activation_op(*fused);
    apply_ops.push_back(eltwise_post(op.algorithm, op.alpha, op.beta));
  }
  const ValueId y = p.new_value(x_md, !fused);
  binary_step(p, false, algorithm::binary_mul, view(p.data(x), bn_md), view(a, nc_b), view(p.data(y), bn_md),
              apply_ops);
  if (fused) return y;

  p.on_backward([=](Program& p) {
    // 1. batch-norm backward over the [1, N*C, H, W] view with the group mean
    //    and variance as the channel statistics (eps already in the variance)
    //    gives, per (n,c): S1 = sum dy, S2 = sum dy xhat, and
    //    a = gamma r (dy - S1/HW - xhat S2/HW), the gradient as if every
    //    (n,c) were its own group;
    // 2. small primitives: d gamma, d beta (S2, S1 summed over the samples),
    //    and the per-(n,c) B, C that turn the channel means into group
    //    means: dx = a + B x + C, with, over the group's channels j,
    //      B = r^2 (gamma S2 - mean_j(gamma_j S2_j)) / HW,
    //      C = r (gamma S1 - mean_j(gamma_j S1_j)) / HW - m B;
    // 3. one binary primitive: dx = x * B + C + a.
    const auto bwd_flags = flags::use_scale | flags::use_shift;
    dnnl::batch_normalization_forward::primitive_desc hint_pd(
        dnnl::batch_normalization_forward::desc(prop_kind::forward_training, bn_md, 0.0f, bwd_flags), attr,
        p.engine());
    dnnl::batch_normalization_backward::primitive_desc bwd_pd(
        dnnl::batch_normalization_backward::desc(prop_kind::backward, bn_md, bn_md, 0.0f, bwd_flags), attr,
        p.engine(), hint_pd);
    const auto pair_md = plain_f32({2, n, c});
    const dnnl::memory scale = p.alloc(numbers_md);  // gamma per (n, c)
    binary_step(p, true, algorithm::binary_mul, ones, gamma, scale);
    const dnnl::memory sums = p.alloc(pair_md);  // [S2; S1]
    const dnnl::memory a_term = p.alloc(bn_md);
    const auto flat_nc = plain_f32({nc});
    p.backward(p.make<dnnl::batch_normalization_backward>(bwd_pd),
               {{DNNL_ARG_SRC, view(p.data(x), bn_md)},
                {DNNL_ARG_MEAN, view(mean, flat_nc)},
                {DNNL_ARG_VARIANCE, view(var_eps, flat_nc)},
                {DNNL_ARG_SCALE, view(scale, flat_nc)},
                {DNNL_ARG_SHIFT, view(b, flat_nc)},  // required, unused
                {DNNL_ARG_DIFF_DST, view(p.grad(y), bn_md)},
                {DNNL_ARG_DIFF_SRC, a_term},
                {DNNL_ARG_DIFF_SCALE, flat_slice(sums, 0, flat_nc)},
                {DNNL_ARG_DIFF_SHIFT, flat_slice(sums, nc, flat_nc)}});
    // [d gamma; d beta] = ones [1, N] x [S2; S1] (as gamma and beta came in).
    const dnnl::memory ones_n = layer_util::ones(p, {1, 1, n});
    if (bias.offset == weight.offset + c) {
      matmul_step(p, true, ones_n, sums, p.param_grad(weight.offset, plain_f32({2, 1, c})));
    } else {
      const dnnl::memory d = p.alloc(plain_f32({2, 1, c}));
      matmul_step(p, true, ones_n, sums, d);
      p.copy(flat_slice(d, 0, plain_f32({c})), p.param_grad(weight.offset, plain_f32({c})), true);
      p.copy(flat_slice(d, c, plain_f32({c})), p.param_grad(bias.offset, plain_f32({c})), true);
    }
    const bool want_x = p.needs_grad(x), want_shift = shift >= 0 && p.needs_grad(shift);
    if (!want_x && !want_shift) return;
    // u = gamma [S2; S1], then (u - groupmean(u)) / HW.
    const dnnl::memory u = p.alloc(pair_md), w = p.alloc(pair_md);
    binary_step(p, true, algorithm::binary_mul, sums, view(scale, plain_f32({1, n, c})), u);
    const GroupMatrix centre(p, c, cg, true, 1.0f / static_cast<float>(spatial));
    matmul_step(p, true, centre.rows(u), centre.matrix, centre.rows(w));
    const dnnl::memory b_coef = p.alloc(numbers_md), c_part = p.alloc(numbers_md), c_coef = p.alloc(numbers_md);
    binary_step(p, true, algorithm::binary_mul, flat_slice(w, 0, numbers_md), rstd, b_coef,
                 {binary_post(algorithm::binary_mul, rstd)});
    binary_step(p, true, algorithm::binary_mul, flat_slice(w, nc, numbers_md), rstd, c_part);
    binary_step(p, true, algorithm::binary_mul, mean, b_coef, c_coef,
                 {eltwise_post(algorithm::eltwise_linear, -1.0f, 0.0f), binary_post(algorithm::binary_add, c_part)});
    // A later contribution adds into the gradient directly (sum post-op),
    // unless the shift's gradient is read from this contribution alone.
    GradSink s;
    if (want_x) s = p.sink(x, shift < 0);
    const dnnl::memory dx = want_x ? s.memory : p.alloc(x_md);
    std::vector<PostOp> dx_ops{binary_post(algorithm::binary_add, view(c_coef, nc_b)),
                               binary_post(algorithm::binary_add, a_term)};
    if (s.add_into) dx_ops.push_back(sum_post());
    binary_step(p, true, algorithm::binary_mul, view(p.data(x), bn_md), view(b_coef, nc_b), view(dx, bn_md), dx_ops);
    if (want_x) p.commit(s);
    if (!want_shift) return;
    // d shift [N,C] = the sums over H, W of dx (the gradient of x + shift).
    if (spatial == 1) {
      p.contribute(shift, view(dx, p.desc(shift)));
      return;
    }
    const GradSink ts = p.sink(shift);
    append_channel_sums(p, dx, x_md, ts.memory);
    p.commit(ts);
  });
  return y;
}

}  // namespace

ValueId group_norm(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups, float eps) {
  return group_norm_impl(p, x, weight, bias, groups, eps, std::nullopt);
}

namespace {

// Training programs keep the norm's output for the activation's backward,
// unless the native kernel fuses the two (SiLU), recomputing it in backward.
bool separate_activation(const Program& p, Activation act) {
  return p.training() && !(p.native_kernels() && act == Activation::silu);
}

}  // namespace

ValueId group_norm_act(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups, float eps,
                       Activation act) {
  if (separate_activation(p, act)) return activation(p, group_norm_impl(p, x, weight, bias, groups, eps, std::nullopt), act);
  return group_norm_impl(p, x, weight, bias, groups, eps, act);
}

ValueId shifted_group_norm_act(Program& p, ValueId x, ValueId shift, const ParamRef& weight, const ParamRef& bias,
                               int64_t groups, float eps, Activation act) {
  const dims xs = p.shape(x);
  require(xs.size() == 4 && p.shape(shift) == dims({xs[0], xs[1]}), "shifted_group_norm_act shape mismatch");
  if (separate_activation(p, act))
    return activation(p, group_norm_impl(p, x, weight, bias, groups, eps, std::nullopt, shift), act);
  return group_norm_impl(p, x, weight, bias, groups, eps, act, shift);
}

ValueId group_norm_silu(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups,
                        float eps) {
  return group_norm_act(p, x, weight, bias, groups, eps, Activation::silu);
}

ValueId silu(Program& p, ValueId x) { return activation(p, x, Activation::silu); }

ValueId activation(Program& p, ValueId x, Activation act) {
  // SiLU(x) = x * sigmoid(x) (eltwise_swish with alpha = 1), Mish, GELU (erf),
  // ReLU.
  return eltwise(p, x, activation_op(act));
}

ValueId eltwise(Program& p, ValueId x, const eltwise_op& op) {
  const Program::LayerScope layer(p, "elementwise");
  // Shape and layout unchanged; backward from the input.
  const auto x_md = p.desc(x);
  const auto attr = user_scratchpad_attr();
  dnnl::eltwise_forward::primitive_desc fwd_pd(
      dnnl::eltwise_forward::desc(prop_kind::forward_training, op.algorithm, x_md, op.alpha, op.beta), attr,
      p.engine());
  const ValueId y = p.new_value(x_md, true);
  p.forward(p.make<dnnl::eltwise_forward>(fwd_pd), {{DNNL_ARG_SRC, p.data(x)}, {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    if (!p.needs_grad(x)) return;
    const auto dx_md = p.grad_desc(x);
    dnnl::eltwise_backward::primitive_desc pd(
        dnnl::eltwise_backward::desc(op.algorithm, dx_md, dx_md, op.alpha, op.beta), attr, p.engine(), fwd_pd);
    const dnnl::memory x_data = data_as_f32(p, x);
    const GradSink s = p.sink(x);
    p.backward(p.make<dnnl::eltwise_backward>(pd),
               {{DNNL_ARG_SRC, x_data}, {DNNL_ARG_DIFF_DST, p.grad(y)}, {DNNL_ARG_DIFF_SRC, s.memory}});
    p.commit(s);
  });
  return y;
}

ValueId add(Program& p, ValueId a, ValueId b) {
  const Program::LayerScope layer(p, "elementwise");
  // a, b [same shape] -> a + b
  require(p.shape(a) == p.shape(b), "add of different shapes");
  const auto md = p.desc(a);
  dnnl::binary::primitive_desc pd(dnnl::binary::desc(algorithm::binary_add, md, p.desc(b), md),
                                  user_scratchpad_attr(), p.engine());
  const ValueId y = p.new_value(md, true);
  p.forward(p.make<dnnl::binary>(pd),
            {{DNNL_ARG_SRC_0, p.data(a)}, {DNNL_ARG_SRC_1, p.data(b)}, {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    // One input takes dy's memory as its gradient (no copy), the other a copy.
    const bool shared_a = a != b && p.needs_grad(a) && p.share_grad(a, y);
    const bool shared_b = a != b && !shared_a && p.needs_grad(b) && p.share_grad(b, y);
    if (p.needs_grad(a) && !shared_a) p.contribute(a, p.grad(y));
    if (p.needs_grad(b) && !shared_b) p.contribute(b, p.grad(y));
  });
  return y;
}

ValueId add_channel_bias(Program& p, ValueId x, ValueId bias) {
  const Program::LayerScope layer(p, "elementwise");
  // x [N,C,H,W] (any layout) + bias [N,C] broadcast over H, W (the time
  // embedding projection): a per-channel add over the [1, N*C, H, W] view.
  const dims xs = p.shape(x);
  require(xs.size() == 4 && p.shape(bias) == dims({xs[0], xs[1]}), "add_channel_bias shape mismatch");
  const auto x_md = p.desc(x);
  const auto bn_md = per_sample_channels(x_md);
  const int64_t spatial = xs[2] * xs[3];
  const auto b4 = per_channel_operand(bn_md);
  const auto attr = user_scratchpad_attr();
  dnnl::binary::primitive_desc pd(dnnl::binary::desc(algorithm::binary_add, bn_md, b4, bn_md), attr, p.engine());
  const ValueId y = p.new_value(x_md, true);
  p.forward(p.make<dnnl::binary>(pd), {{DNNL_ARG_SRC_0, view(p.data(x), bn_md)},
                                       {DNNL_ARG_SRC_1, view(p.data(bias), b4)},
                                       {DNNL_ARG_DST, view(p.data(y), bn_md)}});
  p.on_backward([=](Program& p) {
    const dnnl::memory dy = p.grad(y);
    if (p.needs_grad(x) && !p.share_grad(x, y)) p.contribute(x, dy);
    if (!p.needs_grad(bias)) return;
    if (spatial == 1) {
      p.contribute(bias, view(dy, p.desc(bias)));
      return;
    }
    // d bias[n,c] = sum over H, W of dy.
    const GradSink s = p.sink(bias);
    append_channel_sums(p, dy, x_md, s.memory);
    p.commit(s);
  });
  return y;
}

bool group_norm_reads_two(const Program& p, ValueId a, ValueId b) {
  const dims as = p.shape(a), bs = p.shape(b);
  return p.native_kernels() && as.size() == 4 && bs.size() == 4 && as[0] == bs[0] && as[2] == bs[2] &&
         as[3] == bs[3] && p.in_activation_layout(p.desc(a)) && p.in_activation_layout(p.desc(b)) &&
         p.desc(a).data_type() == p.desc(b).data_type();
}

ValueId group_norm_act_two(Program& p, ValueId a, ValueId b, const ParamRef& weight, const ParamRef& bias,
                           int64_t groups, float eps, Activation act) {
  require(group_norm_reads_two(p, a, b),
          "group_norm of two sources: needs the native kernel and inputs in the activations' 16-channel layout");
  require((p.shape(a)[1] + p.shape(b)[1]) % groups == 0, "group_norm channels not divisible by groups");
  return native_group_norm_act(p, a, weight, bias, groups, eps, act, -1, b);
}

ValueId concat_channels(Program& p, ValueId a, ValueId b) {
  // a [N,Ca,H,W], b [N,Cb,H,W] -> [N,Ca+Cb,H,W]; backward: the two channel
  // slices of dy, seen as sub-memory views and copied (or added) out.
  const dims as = p.shape(a), bs = p.shape(b);
  require(as.size() == 4 && bs.size() == 4 && as[0] == bs[0] && as[2] == bs[2] && as[3] == bs[3],
          "concat of incompatible shapes");
  // Channel-blocked output when the split falls on a block boundary (so the
  // backward's channel slices are block-aligned sub-memories).
  const dims ys{as[0], as[1] + bs[1], as[2], as[3]};
  // One data type for all three: bf16 if either input is (a bf16 program's
  // activations, next to an f32 one such as the first convolution's
  // output), the other converted.
  const dt type = p.desc(a).data_type() == p.desc(b).data_type() ? p.desc(a).data_type() : dt::bf16;
  const auto y_md = as[1] % 16 == 0 ? p.activation_desc(ys, type) : with_type(plain_f32(ys), type);
  const dnnl::memory a_mem = p.reorder_if_needed(p.data(a), with_type(p.desc(a), type), false);
  const dnnl::memory b_mem = p.reorder_if_needed(p.data(b), with_type(p.desc(b), type), false);
  dnnl::concat::primitive_desc pd(y_md, 1, {a_mem.get_desc(), b_mem.get_desc()}, p.engine(), user_scratchpad_attr());
  const ValueId y = p.new_value(y_md, true);
  p.forward(p.make<dnnl::concat>(pd), {{DNNL_ARG_MULTIPLE_SRC + 0, a_mem},
                                       {DNNL_ARG_MULTIPLE_SRC + 1, b_mem},
                                       {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    const dnnl::memory dy = p.grad(y);
    const auto dy_md = p.grad_desc(y);
    if (p.needs_grad(a)) p.contribute(a, view(dy, dy_md.submemory_desc(as, {0, 0, 0, 0})));
    if (p.needs_grad(b)) p.contribute(b, view(dy, dy_md.submemory_desc(bs, {0, as[1], 0, 0})));
  });
  return y;
}

ValueId upsample_nearest2x(Program& p, ValueId x) {
  // x [N,C,H,W] -> [N,C,2H,2W], up[y,x] = in[y/2, x/2]
  const dims xs = p.shape(x);
  const auto x_md = p.desc(x);
  const dims ys{xs[0], xs[1], 2 * xs[2], 2 * xs[3]};
  const auto y_md = p.in_activation_layout(x_md) ? p.activation_desc(ys, x_md.data_type())
                                                 : with_type(plain_f32(ys), x_md.data_type());
  const auto attr = user_scratchpad_attr();
  dnnl::resampling_forward::primitive_desc fwd_pd(
      dnnl::resampling_forward::desc(prop_kind::forward_training, algorithm::resampling_nearest, x_md, y_md), attr,
      p.engine());
  const ValueId y = p.new_value(y_md, true);
  p.forward(p.make<dnnl::resampling_forward>(fwd_pd), {{DNNL_ARG_SRC, p.data(x)}, {DNNL_ARG_DST, p.data(y)}});
  p.on_backward([=](Program& p) {
    if (!p.needs_grad(x)) return;
    dnnl::resampling_backward::primitive_desc pd(
        dnnl::resampling_backward::desc(algorithm::resampling_nearest, p.grad_desc(x), p.grad_desc(y)), attr,
        p.engine(), fwd_pd);
    const GradSink s = p.sink(x);
    p.backward(p.make<dnnl::resampling_backward>(pd), {{DNNL_ARG_DIFF_DST, p.grad(y)}, {DNNL_ARG_DIFF_SRC, s.memory}});
    p.commit(s);
  });
  return y;
}

namespace {

// Plain [N,S,C] tokens (token s = y*W + x) are [N,C,H,W] in nhwc order.
dnnl::memory::desc tokens_as_nchw(const dims& nchw) { return dnnl::memory::desc(nchw, dt::f32, tag::nhwc); }

}  // namespace

ValueId to_tokens(Program& p, ValueId x) {
  // x [N,C,H,W] (any layout) -> [N,S,C] (a reorder to nhwc)
  const dims xs = p.shape(x);
  const ValueId y = p.new_value(plain_f32({xs[0], xs[2] * xs[3], xs[1]}), true);
  p.copy(p.data(x), view(p.data(y), tokens_as_nchw(xs)), false);
  p.on_backward([=](Program& p) {
    if (p.needs_grad(x)) p.contribute(x, view(p.grad(y), tokens_as_nchw(xs)));
  });
  return y;
}

ValueId from_tokens(Program& p, ValueId tokens, const dims& nchw) {
  // [N,S,C] -> [N,C,H,W] in the activation layout
  require(p.shape(tokens) == dims({nchw[0], nchw[2] * nchw[3], nchw[1]}), "from_tokens shape mismatch");
  const ValueId y = p.new_value(p.activation_desc(nchw, p.activation_type()), true);
  p.copy(view(p.data(tokens), tokens_as_nchw(nchw)), p.data(y), false);
  p.on_backward([=](Program& p) {
    if (!p.needs_grad(tokens)) return;
    const GradSink s = p.sink(tokens);
    p.copy(p.grad(y), view(s.memory, tokens_as_nchw(nchw)), true);
    p.commit(s);
  });
  return y;
}

ValueId attention_core(Program& p, ValueId q, ValueId k, ValueId v, int64_t batch, int64_t head_dim) {
  const Program::LayerScope layer(p, "attention");
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
  // The softmax over each row of scores: a native step on CPU engines
  // (oneDNN's is slow on rows this short), else the primitive.
  const bool native = p.native_kernels();
  std::optional<dnnl::softmax_forward::primitive_desc> softmax_pd;
  if (native) {
    softmax_native_forward(p, probs, b * s, s);
  } else {
    softmax_pd.emplace(dnnl::softmax_forward::desc(prop_kind::forward_training, bss, 2), attr, p.engine());
    p.forward(p.make<dnnl::softmax_forward>(*softmax_pd), {{DNNL_ARG_SRC, probs}, {DNNL_ARG_DST, probs}});
  }
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
    if (native) {
      softmax_native_backward(p, probs, dprobs, dscores, b * s, s);
    } else {
      dnnl::softmax_backward::primitive_desc sb_pd(dnnl::softmax_backward::desc(bss, bss, 2), attr, p.engine(),
                                                   *softmax_pd);
      p.backward(p.make<dnnl::softmax_backward>(sb_pd),
                 {{DNNL_ARG_DST, probs}, {DNNL_ARG_DIFF_DST, dprobs}, {DNNL_ARG_DIFF_SRC, dscores}});
    }
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

void timestep_embedding_table(const std::vector<float>& timesteps, int64_t dim, float* out, bool flip_sin_to_cos,
                              double freq_shift) {
  // Host computation (see the header): float32 throughout, as the reference.
  const int64_t half = dim / 2;
  const float log_max = std::log(10000.0f);
  const float denominator = static_cast<float>(static_cast<double>(half) - freq_shift);
  const int64_t cos_at = flip_sin_to_cos ? 0 : half, sin_at = flip_sin_to_cos ? half : 0;
  for (size_t n = 0; n < timesteps.size(); ++n) {
    const float t = timesteps[n];
    float* row = out + static_cast<int64_t>(n) * dim;
    for (int64_t j = 0; j < half; ++j) {
      const float exponent = (-log_max * static_cast<float>(j)) / denominator;
      const float arg = t * std::exp(exponent);
      row[cos_at + j] = std::cos(arg);
      row[sin_at + j] = std::sin(arg);
    }
    for (int64_t j = 2 * half; j < dim; ++j) row[j] = 0.0f;
  }
}

void write_timestep_embedding(const std::vector<float>& timesteps, int64_t dim, const dnnl::memory& temb0,
                              bool flip_sin_to_cos, double freq_shift) {
  std::vector<float> table(timesteps.size() * static_cast<size_t>(dim));
  timestep_embedding_table(timesteps, dim, table.data(), flip_sin_to_cos, freq_shift);
  HostMap<float> host(temb0);
  if (host.size() != table.size()) throw std::invalid_argument("model layer: time embedding input of the wrong size");
  std::copy(table.begin(), table.end(), host.begin());
}

std::vector<float> embedding_timesteps(const Tensor& t, const std::string& what) {
  if (t.rank() == 1 && t.dtype() == DType::f32) return t.to_vector();
  if (t.rank() == 1 && (t.dtype() == DType::s32 || t.dtype() == DType::s64)) {
    std::vector<float> out;
    for (int64_t v : t.to_int64_vector()) out.push_back(static_cast<float>(v));
    return out;
  }
  throw std::invalid_argument(what + ": t must be s32, s64 or f32 [N], got " + dtype_name(t.dtype()) + " " +
                              shape_str(t.shape()));
}

}  // namespace diffuflow
