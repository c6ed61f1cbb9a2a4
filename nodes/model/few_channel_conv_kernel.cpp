#include "nodes/model/few_channel_conv_kernel.hpp"

#include "nodes/model/vector16.hpp"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace diffuflow::few_channel_conv {

namespace {

using namespace vector16;

// Weights packed per (few channel, wide block, tap) as 16 lanes over the wide
// block's channels: packed[(f * blocks + cb) * taps + tap][l]. `wide_first`:
// the parameter is [C, F, k, k], else [F, C, k, k]; `flipped`: tap (kh, kw)
// reads the parameter's (k-1-kh, k-1-kw).
std::vector<float> pack(const float* weight, int64_t few, int64_t wide, int64_t k, bool wide_first, bool flipped) {
  const int64_t taps = k * k, blocks = wide / kLanes;
  std::vector<float> packed(static_cast<size_t>(few * wide * taps));
  for (int64_t f = 0; f < few; ++f)
    for (int64_t c = 0; c < wide; ++c)
      for (int64_t tap = 0; tap < taps; ++tap) {
        const int64_t from = flipped ? taps - 1 - tap : tap;
        const int64_t at = wide_first ? (c * few + f) * taps + from : (f * wide + c) * taps + from;
        packed[static_cast<size_t>(((f * blocks + c / kLanes) * taps + tap) * kLanes + c % kLanes)] = weight[at];
      }
  return packed;
}

// One output row (sample n, row oh) of each kind. Taps that fall in the
// padding are skipped by range (no test per tap): for output column ow, kw
// runs over [kw_begin(ow), kw_end(ow)), and for tap kw the output columns
// that read the image are [ow_begin(kw), ow_end(kw)).
struct Row {
  const Geometry& g;
  int64_t few, blocks, n, oh;
  int64_t taps() const { return g.k * g.k; }
  int64_t kh_begin() const { return std::max<int64_t>(0, g.pad - oh); }
  int64_t kh_end() const { return std::min<int64_t>(g.k, g.h + g.pad - oh); }
  int64_t kw_begin(int64_t ow) const { return std::max<int64_t>(0, g.pad - ow); }
  int64_t kw_end(int64_t ow) const { return std::min<int64_t>(g.k, g.w + g.pad - ow); }
  int64_t ow_begin(int64_t kw) const { return std::max<int64_t>(0, g.pad - kw); }
  int64_t ow_end(int64_t kw) const { return std::min<int64_t>(g.wo(), g.w + g.pad - kw); }
  // Image row `row` (of `rows`) of block cb / channel f, and a block's stride.
  template <typename T>
  const T* wide_row(const T* image, int64_t cb, int64_t row, int64_t rows, int64_t cols) const {
    return image + (((n * blocks + cb) * rows + row) * cols) * kLanes;
  }
  const float* few_row(const float* image, int64_t f, int64_t row, int64_t rows, int64_t cols) const {
    return image + ((n * few + f) * rows + row) * cols;
  }
};

// Both directions run tap by tap over a stretch of the row (the inner loop
// over output columns), so the multiply-adds of neighbouring columns are
// independent and overlap; per column and tap a sum would wait on the one
// before.
constexpr int64_t kStretch = 64;

template <typename T>
DIFFUFLOW_INLINE void narrow_row(const Row& r, const T* x, const float* packed, const float* bias, float* y, bool add) {
  const Geometry& g = r.g;
  const int64_t taps = r.taps(), block_stride = g.h * g.w * kLanes;
  float sums[kStretch * kLanes];
  for (int64_t f = 0; f < r.few; ++f) {
    float* out = const_cast<float*>(r.few_row(y, f, r.oh, g.ho(), g.wo()));
    const float b = bias ? bias[f] : 0.0f;
    for (int64_t from = 0; from < g.wo(); from += kStretch) {
      const int64_t to = std::min(g.wo(), from + kStretch);
      std::fill(sums, sums + (to - from) * kLanes, 0.0f);
      for (int64_t kh = r.kh_begin(); kh < r.kh_end(); ++kh) {
        const T* image = r.wide_row(x, 0, r.oh + kh - g.pad, g.h, g.w);
        for (int64_t kw = 0; kw < g.k; ++kw) {
          const int64_t begin = std::max(from, r.ow_begin(kw)), end = std::min(to, r.ow_end(kw));
          for (int64_t cb = 0; cb < r.blocks; ++cb) {
            const vf w = load16(packed + ((f * r.blocks + cb) * taps + kh * g.k + kw) * kLanes);
            const T* in = image + cb * block_stride + (kw - g.pad) * kLanes;
            for (int64_t ow = begin; ow < end; ++ow) {
              float* s = sums + (ow - from) * kLanes;
              store16(s, load16(s) + w * load16(in + ow * kLanes));
            }
          }
        }
      }
      for (int64_t ow = from; ow < to; ++ow) {
        const float v = sum_lanes(load16(sums + (ow - from) * kLanes)) + b;
        out[ow] = add ? out[ow] + v : v;
      }
    }
  }
}

DIFFUFLOW_SPAN_CLONES void narrow_row_f32(const Row& r, const float* x, const float* packed, const float* bias,
                                          float* y, bool add) {
  narrow_row(r, x, packed, bias, y, add);
}
DIFFUFLOW_SPAN_CLONES void narrow_row_bf16(const Row& r, const uint16_t* x, const float* packed, const float* bias,
                                           float* y, bool add) {
  narrow_row(r, x, packed, bias, y, add);
}

DIFFUFLOW_SPAN_CLONES void widen_row(const Row& r, const float* x, const float* packed, const float* bias, float* y,
                                     bool add) {
  const Geometry& g = r.g;
  const int64_t taps = r.taps();
  for (int64_t cb = 0; cb < r.blocks; ++cb) {
    float* out = const_cast<float*>(r.wide_row(y, cb, r.oh, g.ho(), g.wo()));
    const vf b = bias ? load16(bias + cb * kLanes) : splat(0.0f);
    for (int64_t ow = 0; ow < g.wo(); ++ow) {
      float* o = out + ow * kLanes;
      store16(o, add ? load16(o) + b : b);
    }
    for (int64_t f = 0; f < r.few; ++f) {
      for (int64_t kh = r.kh_begin(); kh < r.kh_end(); ++kh) {
        const float* image = r.few_row(x, f, r.oh + kh - g.pad, g.h, g.w) - g.pad;
        for (int64_t kw = 0; kw < g.k; ++kw) {
          const vf w = load16(packed + ((f * r.blocks + cb) * taps + kh * g.k + kw) * kLanes);
          for (int64_t ow = r.ow_begin(kw); ow < r.ow_end(kw); ++ow) {
            float* o = out + ow * kLanes;
            store16(o, load16(o) + splat(image[ow + kw]) * w);
          }
        }
      }
    }
  }
}

// sum[0..3] += few_at[ow] * wide_at[ow] (16 lanes) over [begin, end), in
// four partial sums so that four multiply-adds are in flight.
template <typename W>
DIFFUFLOW_INLINE void row_products(const float* few_at, const W* wide_at, int64_t begin, int64_t end, vf* sum) {
  int64_t ow = begin;
  for (; ow + 4 <= end; ow += 4)
    for (int u = 0; u < 4; ++u) sum[u] += splat(few_at[ow + u]) * load16(wide_at + (ow + u) * kLanes);
  for (; ow < end; ++ow) sum[0] += splat(few_at[ow]) * load16(wide_at + ow * kLanes);
}

// Adds one output row's products into acc[(f * blocks + cb) * taps + tap]
// (16 lanes each) and the bias sums: few_bias[f] (few_out) or
// wide_bias[cb] (16 lanes). Each (f, cb, tap) sums along the row in a
// register.
// X: the type of x, which is the wide side's when FewOut (f32 or bf16) and
// f32 otherwise.
template <bool FewOut, typename X>
DIFFUFLOW_INLINE void weight_grad_row(const Row& r, const X* x, const float* dy, float* acc, float* few_bias,
                                      float* wide_bias) {
  const Geometry& g = r.g;
  const int64_t taps = r.taps(), ho = g.ho(), wo = g.wo();
  if constexpr (FewOut) {
    for (int64_t f = 0; f < r.few; ++f) {
      const float* d = r.few_row(dy, f, r.oh, ho, wo);
      float total = 0.0f;
      for (int64_t ow = 0; ow < wo; ++ow) total += d[ow];
      few_bias[f] += total;
    }
  } else {
    for (int64_t cb = 0; cb < r.blocks; ++cb) {
      const float* d = r.wide_row(dy, cb, r.oh, ho, wo);
      vf total = load16(wide_bias + cb * kLanes);
      for (int64_t ow = 0; ow < wo; ++ow) total += load16(d + ow * kLanes);
      store16(wide_bias + cb * kLanes, total);
    }
  }
  for (int64_t f = 0; f < r.few; ++f) {
    for (int64_t cb = 0; cb < r.blocks; ++cb) {
      for (int64_t kh = r.kh_begin(); kh < r.kh_end(); ++kh) {
        const int64_t ih = r.oh + kh - g.pad;
        for (int64_t kw = 0; kw < g.k; ++kw) {
          // Output column ow meets image column ow + kw - pad.
          vf sum[4] = {splat(0.0f), splat(0.0f), splat(0.0f), splat(0.0f)};
          if constexpr (FewOut)
            row_products(r.few_row(dy, f, r.oh, ho, wo), r.wide_row(x, cb, ih, g.h, g.w) + (kw - g.pad) * kLanes,
                         r.ow_begin(kw), r.ow_end(kw), sum);
          else
            row_products(r.few_row(x, f, ih, g.h, g.w) + kw - g.pad, r.wide_row(dy, cb, r.oh, ho, wo),
                         r.ow_begin(kw), r.ow_end(kw), sum);
          float* a = acc + ((f * r.blocks + cb) * taps + kh * g.k + kw) * kLanes;
          store16(a, load16(a) + ((sum[0] + sum[1]) + (sum[2] + sum[3])));
        }
      }
    }
  }
}

DIFFUFLOW_SPAN_CLONES void weight_grad_row_f32(const Row& r, bool few_out, const float* x, const float* dy,
                                               float* acc, float* few_bias, float* wide_bias) {
  few_out ? weight_grad_row<true>(r, x, dy, acc, few_bias, wide_bias)
          : weight_grad_row<false>(r, x, dy, acc, few_bias, wide_bias);
}
DIFFUFLOW_SPAN_CLONES void weight_grad_row_bf16(const Row& r, const uint16_t* x, const float* dy, float* acc,
                                                float* few_bias) {
  weight_grad_row<true>(r, x, dy, acc, few_bias, nullptr);
}

// Rows are the pieces of work: at least 64 of them where the output has
// that many, in a split that does not depend on the thread count.
constexpr int64_t kMinItems = 64;

}  // namespace

namespace {

template <typename T>
void narrow_rows(const Geometry& g, int64_t few, int64_t wide, const T* x_wide, const float* weight,
                 const float* bias, float* y_few, bool transposed, bool add) {
  const std::vector<float> packed = pack(weight, few, wide, g.k, transposed, transposed);
  const int64_t rows = g.n * g.ho(), blocks = wide / kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const Row r{g, few, blocks, row / g.ho(), row % g.ho()};
    if constexpr (std::is_same_v<T, float>)
      narrow_row_f32(r, x_wide, packed.data(), bias, y_few, add);
    else
      narrow_row_bf16(r, x_wide, packed.data(), bias, y_few, add);
  }
}

}  // namespace

void narrow(const Geometry& g, int64_t few, int64_t wide, const float* x_wide, const float* weight, const float* bias,
            float* y_few, bool transposed, bool add) {
  narrow_rows(g, few, wide, x_wide, weight, bias, y_few, transposed, add);
}

void narrow(const Geometry& g, int64_t few, int64_t wide, const uint16_t* x_wide, const float* weight,
            const float* bias, float* y_few) {
  narrow_rows(g, few, wide, x_wide, weight, bias, y_few, false, false);
}

void widen(const Geometry& g, int64_t few, int64_t wide, const float* x_few, const float* weight, const float* bias,
           float* y_wide, bool transposed, bool add) {
  const std::vector<float> packed = pack(weight, few, wide, g.k, !transposed, transposed);
  const int64_t rows = g.n * g.ho(), blocks = wide / kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row)
    widen_row(Row{g, few, blocks, row / g.ho(), row % g.ho()}, x_few, packed.data(), bias, y_wide, add);
}

namespace {

// The weight and bias gradients from `row(Row, acc, few_bias, wide_bias)`,
// which adds one output row's products.
template <typename RowFn>
void weight_grad_rows(const Geometry& g, int64_t few, int64_t wide, bool few_out, float* dweight, float* dbias,
                      RowFn row_fn) {
  const int64_t taps = g.k * g.k, blocks = wide / kLanes, ho = g.ho();
  // Items: (sample, group of rows); per item the sums in f32, then all items
  // added in double in item order.
  const int64_t groups = std::max<int64_t>(1, std::min(ho, (kMinItems + g.n - 1) / g.n)), items = g.n * groups;
  const int64_t acc_size = few * wide * taps, bias_size = few_out ? few : wide;
  std::vector<float> partial(static_cast<size_t>(items * (acc_size + bias_size)), 0.0f);
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t n = item / groups, group = item % groups;
    float* acc = &partial[static_cast<size_t>(item * (acc_size + bias_size))];
    float* b = acc + acc_size;
    for (int64_t oh = group * ho / groups; oh < (group + 1) * ho / groups; ++oh)
      row_fn(Row{g, few, blocks, n, oh}, acc, few_out ? b : nullptr, few_out ? nullptr : b);
  }
  std::vector<double> total(static_cast<size_t>(acc_size + bias_size), 0.0);
  for (int64_t item = 0; item < items; ++item)
    for (size_t i = 0; i < total.size(); ++i)
      total[i] += partial[static_cast<size_t>(item * (acc_size + bias_size)) + i];
  // acc[(f * blocks + cb) * taps + tap][l] -> the parameter's layout.
  for (int64_t f = 0; f < few; ++f)
    for (int64_t c = 0; c < wide; ++c)
      for (int64_t tap = 0; tap < taps; ++tap) {
        const double v = total[static_cast<size_t>(((f * blocks + c / kLanes) * taps + tap) * kLanes + c % kLanes)];
        const int64_t at = few_out ? (f * wide + c) * taps + tap : (c * few + f) * taps + tap;
        dweight[at] = static_cast<float>(v);
      }
  for (int64_t i = 0; i < bias_size; ++i) dbias[i] = static_cast<float>(total[static_cast<size_t>(acc_size + i)]);
}

}  // namespace

void weight_grad(const Geometry& g, int64_t few, int64_t wide, bool few_out, const float* x, const float* dy,
                 float* dweight, float* dbias) {
  weight_grad_rows(g, few, wide, few_out, dweight, dbias, [&](const Row& r, float* acc, float* fb, float* wb) {
    weight_grad_row_f32(r, few_out, x, dy, acc, fb, wb);
  });
}

void weight_grad(const Geometry& g, int64_t few, int64_t wide, const uint16_t* x_wide, const float* dy,
                 float* dweight, float* dbias) {
  weight_grad_rows(g, few, wide, true, dweight, dbias, [&](const Row& r, float* acc, float* fb, float*) {
    weight_grad_row_bf16(r, x_wide, dy, acc, fb);
  });
}

}  // namespace diffuflow::few_channel_conv
