// The layers whose CPU version is a native step, a kernel of the project's
// own, which programs on CPU engines use instead of the primitives of
// layers.cpp: GroupNorm (optionally followed by SiLU, optionally of x plus a
// per-(sample, channel) shift; group_norm_kernel.hpp), the convolutions
// with a few channels on one side (few_channel_conv_kernel.hpp) and
// attention's softmax (softmax_kernel.hpp).
#include "nodes/model/few_channel_conv_kernel.hpp"
#include "nodes/model/group_norm_kernel.hpp"
#include "nodes/model/layer_util.hpp"
#include "nodes/model/softmax_kernel.hpp"

#include <optional>

namespace diffuflow::layer_util {

namespace {

namespace kernel = group_norm_kernel;

constexpr int64_t kFewChannels = 8;

float* floats(const Args& args, int key) { return static_cast<float*>(args.at(key).get_data_handle()); }
const float* floats_or_null(const Args& args, int key) {
  const auto it = args.find(key);
  return it == args.end() ? nullptr : static_cast<const float*>(it->second.get_data_handle());
}

// The arguments GroupNorm's forward and backward steps read alike: gamma,
// beta, the shift (or null) and the group statistics.
template <typename Step>
void read_norm_args(const Args& a, Step& step) {
  step.gamma = floats(a, DNNL_ARG_SCALE);
  step.beta = floats(a, DNNL_ARG_SHIFT);
  step.shift = floats_or_null(a, DNNL_ARG_SRC_1);
  step.mean = floats(a, DNNL_ARG_MEAN);
  step.rstd = floats(a, DNNL_ARG_VARIANCE);
}

}  // namespace

ValueId group_norm_native(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups,
                          float eps, bool silu, ValueId shift, ValueId x2) {
  // x [N,C,...] plain, or nChw16c or nhwc (C a multiple of 16), f32 or bf16
  // -> y, x's descriptor (the gradients f32 in x's layout). With x2
  // [N,C2,...] (in x's 16-channel layout and type; C a multiple of 16): the
  // norm of their concatenation [N,C+C2,...],
  // which is never written. Forward arguments: SRC x, SRC_2 x2, DST y,
  // SCALE gamma, SHIFT beta, SRC_1 the shift [N,C] (plain), MEAN and
  // VARIANCE the group mean and 1/sqrt(var + eps) [N * groups], which
  // backward reads.
  const Program::LayerScope layer(p, "group_norm");
  const dims xs = p.shape(x);
  const auto x_md = p.desc(x);
  const int64_t n = xs[0], c_first = x2 >= 0 ? xs[1] : 0, c = xs[1] + (x2 >= 0 ? p.shape(x2)[1] : 0);
  // nhwc in whole blocks of 16 (at one position also plain's memory, which
  // this layout reads alike).
  const auto nhwc16 = [](const dnnl::memory::desc& md) {
    const dims d = md.dims();
    return d.size() == 4 && d[1] % 16 == 0 && md == dnnl::memory::desc(d, md.data_type(), tag::nhwc);
  };
  const bool channels_last = nhwc16(x_md);
  const kernel::Layout layout = channels_last                ? kernel::Layout::channels_last16
                                : is_channel_blocked(x_md) ? kernel::Layout::blocked16
                                                           : kernel::Layout::plain;
  require(layout != kernel::Layout::plain || x_md == with_type(plain_f32(xs), x_md.data_type()),
          "group_norm takes plain, nChw16c or nhwc inputs (nhwc with channels in whole blocks of 16)");
  const kernel::Shape shape{n, c, product(xs, 2), groups, layout, c_first};
  if (x2 >= 0) {
    const dims x2s = p.shape(x2);
    const auto x2_md = p.desc(x2);
    const bool same_layout =
        channels_last ? nhwc16(x2_md) : is_channel_blocked(x_md) && is_channel_blocked(x2_md);
    require(same_layout && c_first % 16 == 0 && x2s[0] == n && product(x2s, 2) == shape.spatial &&
                x2_md.data_type() == x_md.data_type(),
            "group_norm of two sources takes inputs of one 16-channel layout, type and shape, the first of whole "
            "blocks");
  }
  const kernel::DataType type =
      x_md.data_type() == dnnl::memory::data_type::bf16 ? kernel::DataType::bf16 : kernel::DataType::f32;
  const auto numbers_md = plain_f32({n, c});
  const dnnl::memory mean = p.alloc(plain_f32({n * groups})), rstd = p.alloc(plain_f32({n * groups}));
  const dnnl::memory gamma = p.param(weight.offset, plain_f32({c})), beta = p.param(bias.offset, plain_f32({c}));
  const dnnl::memory t = shift >= 0 ? p.reorder_if_needed(p.data(shift), numbers_md, false) : dnnl::memory();
  dims ys = xs;
  ys[1] = c;
  // Two sources: y in their layout.
  const ValueId y = p.new_value(
      x2 >= 0 ? dnnl::memory::desc(ys, x_md.data_type(), channels_last ? tag::nhwc : tag::nChw16c) : x_md, true);

  Args args{{DNNL_ARG_SRC, p.data(x)}, {DNNL_ARG_DST, p.data(y)}, {DNNL_ARG_SCALE, gamma},
            {DNNL_ARG_SHIFT, beta},    {DNNL_ARG_MEAN, mean},    {DNNL_ARG_VARIANCE, rstd}};
  if (t) args[DNNL_ARG_SRC_1] = t;
  if (x2 >= 0) args[DNNL_ARG_SRC_2] = p.data(x2);
  p.native_forward(
      [shape, type, eps, silu](const Args& a) {
        kernel::Forward f;
        f.shape = shape;
        f.eps = eps;
        f.silu = silu;
        f.type = type;
        f.x = a.at(DNNL_ARG_SRC).get_data_handle();
        if (shape.c_first > 0) f.x2 = a.at(DNNL_ARG_SRC_2).get_data_handle();
        f.y = a.at(DNNL_ARG_DST).get_data_handle();
        read_norm_args(a, f);
        kernel::forward(f);
      },
      std::move(args));

  p.on_backward([=](Program& p) {
    // Reads x and the gradient of y twice; writes dx (adding into an earlier
    // contribution in place), d gamma, d beta and d shift. With SiLU it may
    // also write the gradient before the SiLU over y's gradient: this step is
    // the last to read that memory (the layers after y write it, only y's
    // producer reads it, and a gradient that a later value shares with y had
    // its other readers appended before this step).
    Args args{{DNNL_ARG_SRC, p.data(x)},
              {DNNL_ARG_DIFF_DST, p.grad(y)},
              {DNNL_ARG_SCALE, gamma},
              {DNNL_ARG_SHIFT, beta},
              {DNNL_ARG_MEAN, mean},
              {DNNL_ARG_VARIANCE, rstd},
              {DNNL_ARG_DIFF_SCALE, p.param_grad(weight.offset, plain_f32({c}))},
              {DNNL_ARG_DIFF_SHIFT, p.param_grad(bias.offset, plain_f32({c}))}};
    if (t) args[DNNL_ARG_SRC_1] = t;
    if (x2 >= 0) args[DNNL_ARG_SRC_2] = p.data(x2);
    // Each source's gradient straight into its sink.
    const auto input_sink = [&](ValueId v, int key) {
      GradSink sink;
      if (v < 0 || !p.needs_grad(v)) return sink;
      sink = p.sink(v, true);
      require(sink.memory.get_desc() == p.grad_desc(v), "group_norm gradient in another layout than its input");
      args[key] = sink.memory;
      return sink;
    };
    const GradSink xs_sink = input_sink(x, DNNL_ARG_DIFF_SRC), x2_sink = input_sink(x2, DNNL_ARG_DIFF_SRC_2);
    // The shift's gradient in plain [N,C]: the sink's memory when it is
    // that, else a temporary copied (added) into it after the step.
    GradSink shift_sink;
    dnnl::memory dshift;
    const bool want_shift = shift >= 0 && p.needs_grad(shift);
    if (want_shift) {
      shift_sink = p.sink(shift, true);
      dshift = shift_sink.memory.get_desc() == numbers_md ? shift_sink.memory : p.alloc(numbers_md);
      args[DNNL_ARG_DIFF_SRC_1] = dshift;
    }
    const bool dx_add = xs_sink.add_into, dx2_add = x2_sink.add_into;
    const bool dshift_add = want_shift && dshift == shift_sink.memory && shift_sink.add_into;
    p.native_backward(
        [shape, type, silu, dx_add, dx2_add, dshift_add](const Args& a) {
          kernel::Backward b;
          b.shape = shape;
          b.silu = silu;
          b.type = type;
          b.x = a.at(DNNL_ARG_SRC).get_data_handle();
          if (shape.c_first > 0) b.x2 = a.at(DNNL_ARG_SRC_2).get_data_handle();
          b.dz = floats(a, DNNL_ARG_DIFF_DST);
          read_norm_args(a, b);
          b.dx = const_cast<float*>(floats_or_null(a, DNNL_ARG_DIFF_SRC));
          b.dx_add = dx_add;
          b.dx2 = const_cast<float*>(floats_or_null(a, DNNL_ARG_DIFF_SRC_2));
          b.dx2_add = dx2_add;
          b.dgamma = floats(a, DNNL_ARG_DIFF_SCALE);
          b.dbeta = floats(a, DNNL_ARG_DIFF_SHIFT);
          b.dshift = const_cast<float*>(floats_or_null(a, DNNL_ARG_DIFF_SRC_1));
          b.dshift_add = dshift_add;
          kernel::backward(b);
        },
        std::move(args));
    if (xs_sink.memory) p.commit(xs_sink);
    if (x2_sink.memory) p.commit(x2_sink);
    if (want_shift) {
      if (dshift != shift_sink.memory) p.copy(dshift, shift_sink.memory, true, shift_sink.add_into);
      p.commit(shift_sink);
    }
  });
  return y;
}

void softmax_native_forward(Program& p, const dnnl::memory& probs, int64_t rows, int64_t length) {
  p.native_forward(
      [rows, length](const Args& a) {
        softmax_kernel::forward(floats(a, DNNL_ARG_SRC), floats(a, DNNL_ARG_DST), rows, length);
      },
      {{DNNL_ARG_SRC, probs}, {DNNL_ARG_DST, probs}});
}

void softmax_native_backward(Program& p, const dnnl::memory& probs, const dnnl::memory& dprobs,
                             const dnnl::memory& dscores, int64_t rows, int64_t length) {
  p.native_backward(
      [rows, length](const Args& a) {
        softmax_kernel::backward(floats(a, DNNL_ARG_DST), floats(a, DNNL_ARG_DIFF_DST), floats(a, DNNL_ARG_DIFF_SRC),
                                 rows, length);
      },
      {{DNNL_ARG_DST, probs}, {DNNL_ARG_DIFF_DST, dprobs}, {DNNL_ARG_DIFF_SRC, dscores}});
}

std::optional<ValueId> conv2d_few_channels(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias,
                                           int64_t stride, int64_t padding, int64_t padding_end, ValueId residual) {
  // x [N,Ci,H,W] -> y [N,Co,Ho,Wo], stride 1, one padding all round, no
  // residual, and a few channels on one side and a multiple of 16 on the
  // other: narrowing (Co few) reads x nChw16c and writes y plain; widening
  // (Ci few) reads x plain and writes y nChw16c. Anything else: nothing (the
  // caller runs oneDNN's convolution). In a channels-last program the wide
  // side is reordered to and from nChw16c around the kernel.
  const dims xs = p.shape(x);
  const int64_t ci = xs[1], co = weight.shape[0], k = weight.shape[2];
  const bool narrowing = co <= kFewChannels && ci % 16 == 0, widening = ci <= kFewChannels && co % 16 == 0;
  if (!p.native_kernels() || stride != 1 || padding != padding_end || residual >= 0 || weight.shape[3] != k ||
      !(narrowing || widening))
    return std::nullopt;
  const few_channel_conv::Geometry g{xs[0], xs[2], xs[3], k, padding};
  const dims ys{xs[0], co, g.ho(), g.wo()};
  const auto wide_x_md = dnnl::memory::desc(xs, dnnl::memory::data_type::f32, tag::nChw16c);
  const auto wide_y_md = dnnl::memory::desc(ys, dnnl::memory::data_type::f32, tag::nChw16c);
  const auto x_md = narrowing ? wide_x_md : plain_f32(xs);
  const auto y_md = narrowing ? plain_f32(ys) : wide_y_md;
  const Program::LayerScope layer(p, "convolution");
  const int64_t few = narrowing ? co : ci, wide = narrowing ? ci : co;
  const double flops = 2.0 * static_cast<double>(xs[0] * g.ho() * g.wo() * co * ci * k * k);
  // A narrowing convolution reads a bf16 input (a bf16 program's activation)
  // in bf16, in nChw16c; anything else in x_md's layout and f32.
  const bool bf16_in = narrowing && p.desc(x).data_type() == dnnl::memory::data_type::bf16;
  const dnnl::memory x_mem = p.reorder_if_needed(
      p.data(x), bf16_in ? with_type(wide_x_md, dnnl::memory::data_type::bf16) : x_md, false);
  const dnnl::memory w = p.param(weight.offset, plain_f32(weight.shape)), b = p.param(bias.offset, plain_f32({co}));
  const ValueId y = p.new_value(y_md, true);
  p.native_forward(
      [g, few, wide, narrowing, bf16_in](const Args& a) {
        const float* in = floats(a, DNNL_ARG_SRC);
        if (bf16_in)
          few_channel_conv::narrow(g, few, wide, static_cast<const uint16_t*>(a.at(DNNL_ARG_SRC).get_data_handle()),
                                   floats(a, DNNL_ARG_WEIGHTS), floats(a, DNNL_ARG_BIAS), floats(a, DNNL_ARG_DST));
        else if (narrowing)
          few_channel_conv::narrow(g, few, wide, in, floats(a, DNNL_ARG_WEIGHTS), floats(a, DNNL_ARG_BIAS),
                                   floats(a, DNNL_ARG_DST), false, false);
        else
          few_channel_conv::widen(g, few, wide, in, floats(a, DNNL_ARG_WEIGHTS), floats(a, DNNL_ARG_BIAS),
                                  floats(a, DNNL_ARG_DST), false, false);
      },
      {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, p.data(y)}}, flops);

  p.on_backward([=](Program& p) {
    // The input gradient (when wanted) is the other direction over dy's grid
    // with the weights transposed and flipped; then the weight and bias
    // gradients. One step.
    Args args{{DNNL_ARG_SRC, x_mem},
              {DNNL_ARG_DIFF_DST, p.grad(y)},
              {DNNL_ARG_WEIGHTS, w},
              {DNNL_ARG_DIFF_WEIGHTS, p.param_grad(weight.offset, plain_f32(weight.shape))},
              {DNNL_ARG_DIFF_BIAS, p.param_grad(bias.offset, plain_f32({co}))}};
    GradSink s;
    dnnl::memory dx;
    if (p.needs_grad(x)) {
      s = p.sink(x, true);
      dx = s.memory.get_desc() == x_md ? s.memory : p.alloc(x_md);  // f32, in x_md's layout
      args[DNNL_ARG_DIFF_SRC] = dx;
    }
    const bool add = dx && dx == s.memory && s.add_into;
    const few_channel_conv::Geometry back{g.n, g.ho(), g.wo(), k, k - 1 - padding};
    p.native_backward(
        [g, back, few, wide, narrowing, add, bf16_in](const Args& a) {
          float* dx = const_cast<float*>(floats_or_null(a, DNNL_ARG_DIFF_SRC));
          const float* dy = floats(a, DNNL_ARG_DIFF_DST);
          if (dx && narrowing)
            few_channel_conv::widen(back, few, wide, dy, floats(a, DNNL_ARG_WEIGHTS), nullptr, dx, true, add);
          else if (dx)
            few_channel_conv::narrow(back, few, wide, dy, floats(a, DNNL_ARG_WEIGHTS), nullptr, dx, true, add);
          if (bf16_in)
            few_channel_conv::weight_grad(g, few, wide, static_cast<const uint16_t*>(a.at(DNNL_ARG_SRC).get_data_handle()),
                                          dy, floats(a, DNNL_ARG_DIFF_WEIGHTS), floats(a, DNNL_ARG_DIFF_BIAS));
          else
            few_channel_conv::weight_grad(g, few, wide, narrowing, floats(a, DNNL_ARG_SRC), dy,
                                          floats(a, DNNL_ARG_DIFF_WEIGHTS), floats(a, DNNL_ARG_DIFF_BIAS));
        },
        std::move(args), (dx ? 2.0 : 1.0) * flops);
    if (dx && dx != s.memory) p.copy(dx, s.memory, true, s.add_into);
    if (s.memory) p.commit(s);
  });
  if (!narrowing && p.activation_desc(ys) != wide_y_md) return relayout(p, y, p.activation_desc(ys));
  return y;
}

}  // namespace diffuflow::layer_util
