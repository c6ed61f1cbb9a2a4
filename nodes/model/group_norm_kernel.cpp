#include "nodes/model/group_norm_kernel.hpp"

#include "nodes/model/vector16.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <omp.h>
#include <unistd.h>

namespace diffuflow::group_norm_kernel {

namespace {

using namespace vector16;

// The spans below work on 16 lanes at once: a channel block of nChw16c or of
// nhwc, or 16 neighbouring positions of one channel in the plain layout, with
// per-lane coefficients and accumulators. A span is `count` elements (its
// lanes' values at count / 16 positions); each pointer comes with its stride,
// the elements from one position's 16 lanes to the next: 16 where they are
// contiguous (plain, nChw16c, a scratch), the tensor's channel count in nhwc.
// Only contiguous spans (stride 16) have a tail of count % 16.

// The two halves of 16 lanes in double.
DIFFUFLOW_INLINE void widen(vf v, vd* lo, vd* hi) {
  half_vf a, b;
  std::memcpy(&a, &v, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
  *lo = __builtin_convertvector(a, vd);
  *hi = __builtin_convertvector(b, vd);
}

// 16 per-lane sums in double.
struct Sums {
  vd lo{}, hi{};
  DIFFUFLOW_INLINE void add(vd a, vd b) {
    lo += a;
    hi += b;
  }
  DIFFUFLOW_INLINE void add_to(double* out) const {
    double lanes[kLanes];
    std::memcpy(lanes, &lo, sizeof lo);
    std::memcpy(lanes + kLanes / 2, &hi, sizeof hi);
    for (int l = 0; l < kLanes; ++l) out[l] += lanes[l];
  }
};

// dy from dz: through SiLU's derivative at y = a x + b.
template <bool Silu>
DIFFUFLOW_INLINE vf input_grad(vf x, vf dz, vf a, vf b) {
  if (!Silu) return dz;
  const vf y = a * x + b;
  const vf s = sigmoid(y);
  return dz * (s + y * s * (1.0f - s));
}

// A span's last count % 16 elements through the 16-lane code: copied into
// zeroed lanes (zeros add nothing to any sum), results copied back.
template <typename T>
struct Tail {
  T lanes[kLanes] = {};
  int64_t count;
  Tail(const T* from, int64_t n) : count(n) { std::copy(from, from + n, lanes); }
  void copy_to(T* to) const { std::copy(lanes, lanes + count, to); }
};

// --- spans: `count` contiguous elements, lane = index % 16 ------------------

template <typename T>
DIFFUFLOW_INLINE void stats_step(const T* x, Sums* s, Sums* q) {
  vd a, b;
  widen(load16(x), &a, &b);
  s->add(a, b);
  q->add(a * a, b * b);
}

template <typename T>
DIFFUFLOW_INLINE void stats_span(const T* x, int64_t count, int64_t xs, double* s, double* q) {
  Sums ls, lq;
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes, x += xs) stats_step(x, &ls, &lq);
  if (i < count) stats_step(Tail<T>(x, count - i).lanes, &ls, &lq);
  ls.add_to(s);
  lq.add_to(q);
}

template <typename T, bool Silu>
DIFFUFLOW_INLINE void apply_step(const T* x, T* y, vf a, vf b) {
  vf v = a * load16(x) + b;
  if (Silu) v = v * sigmoid(v);
  store16(y, v);
}

template <typename T, bool Silu>
DIFFUFLOW_INLINE void apply_span(const T* __restrict x, T* __restrict y, int64_t count, int64_t xs, int64_t ys,
                                 const float* a, const float* b) {
  const vf va = load16(a), vb = load16(b);
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes, x += xs, y += ys) apply_step<T, Silu>(x, y, va, vb);
  if (i < count) {
    const Tail<T> in(x, count - i);
    Tail<T> out(y, count - i);
    apply_step<T, Silu>(in.lanes, out.lanes, va, vb);
    out.copy_to(y);
  }
}

// The strides of a backward span's pointers (see above).
struct Strides {
  int64_t x = kLanes, dz = kLanes, dy = kLanes, dx = kLanes;
};

// With SiLU the gradient before it, dy, is written out (over dz, or to a
// sample's scratch), so that the second pass reads it instead of computing
// the sigmoid again.
template <typename T, bool Silu>
DIFFUFLOW_INLINE void grad_sums_step(const T* x, const float* dz, float* dy_out, vf a, vf b, Sums* s1, Sums* sx,
                                     Sums* sdx) {
  const vf xv = load16(x);
  const vf dy = input_grad<Silu>(xv, load16(dz), a, b);
  if (Silu) store16(dy_out, dy);
  vd dlo, dhi, xlo, xhi;
  widen(dy, &dlo, &dhi);
  widen(xv, &xlo, &xhi);
  s1->add(dlo, dhi);
  sx->add(xlo, xhi);
  sdx->add(dlo * xlo, dhi * xhi);
}

template <typename T, bool Silu>
DIFFUFLOW_INLINE void grad_sums_span(const T* x, const float* dz, float* dy, int64_t count, const Strides& st,
                                     const float* a, const float* b, double* s1, double* sx, double* sdx) {
  const vf va = load16(a), vb = load16(b);
  Sums l1, lx, ldx;
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes, x += st.x, dz += st.dz, dy += st.dy)
    grad_sums_step<T, Silu>(x, dz, dy, va, vb, &l1, &lx, &ldx);
  if (i < count) {
    Tail<float> tail(dz, count - i);
    grad_sums_step<T, Silu>(Tail<T>(x, count - i).lanes, tail.lanes, tail.lanes, va, vb, &l1, &lx, &ldx);
    if (Silu) tail.copy_to(dy);
  }
  l1.add_to(s1);
  lx.add_to(sx);
  ldx.add_to(sdx);
}

struct GradCoefficients {
  vf alpha, beta, delta;  // dx = alpha dy + beta x + delta
};

template <typename T, bool Add>
DIFFUFLOW_INLINE void grad_apply_step(const T* x, const float* dy, float* dx, const GradCoefficients& k) {
  vf g = k.alpha * load16(dy) + k.beta * load16(x) + k.delta;
  if (Add) g += load16(dx);
  store16(dx, g);
}

template <typename T, bool Add>
DIFFUFLOW_INLINE void grad_apply_span(const T* __restrict x, const float* __restrict dy, float* __restrict dx,
                                      int64_t count, const Strides& st, const GradCoefficients& k) {
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes, x += st.x, dy += st.dy, dx += st.dx) grad_apply_step<T, Add>(x, dy, dx, k);
  if (i < count) {
    Tail<float> out(dx, count - i);
    grad_apply_step<T, Add>(Tail<T>(x, count - i).lanes, Tail<float>(dy, count - i).lanes, out.lanes, k);
    out.copy_to(dx);
  }
}

template <typename T>
DIFFUFLOW_INLINE void grad_sums_any(const T* x, const float* dz, float* dy, int64_t count, const Strides& st,
                                    const float* a, const float* b, bool silu, double* s1, double* sx, double* sdx) {
  silu ? grad_sums_span<T, true>(x, dz, dy, count, st, a, b, s1, sx, sdx)
       : grad_sums_span<T, false>(x, dz, dy, count, st, a, b, s1, sx, sdx);
}

template <typename T>
DIFFUFLOW_INLINE void grad_apply_any(const T* x, const float* dy, float* dx, int64_t count, const Strides& st,
                                     const float* alpha, const float* beta, const float* delta, bool add) {
  const GradCoefficients k{load16(alpha), load16(beta), load16(delta)};
  add ? grad_apply_span<T, true>(x, dy, dx, count, st, k) : grad_apply_span<T, false>(x, dy, dx, count, st, k);
}

// --- tiles: a few neighbouring 16-channel blocks of nhwc over one position range
//
// A block's span alone would read 16 channels of each row of C, a row apart;
// a tile reads up to kTileBlocks blocks of each row in turn, so a row's
// channels are read together. Each block keeps its own accumulators and adds
// its positions in its span's order: a tile gives the bits its blocks' spans
// give. A Walk says where the next block and the next position are.
constexpr int kTileBlocks = 4;
struct Walk {
  int64_t block = kLanes, position = kLanes;
};

template <typename T>
DIFFUFLOW_INLINE void stats_tile(const T* x, Walk xw, int64_t positions, int nb, double* out, int64_t out_block) {
  Sums s[kTileBlocks], q[kTileBlocks];
  for (int64_t p = 0; p < positions; ++p, x += xw.position)
    for (int b = 0; b < nb; ++b) stats_step(x + b * xw.block, &s[b], &q[b]);
  for (int b = 0; b < nb; ++b) {
    s[b].add_to(out + b * out_block);
    q[b].add_to(out + b * out_block + kLanes);
  }
}

template <typename T, bool Silu>
DIFFUFLOW_INLINE void apply_tile(const T* __restrict x, Walk xw, T* __restrict y, Walk yw, int64_t positions, int nb,
                                 const float* a, const float* b) {
  vf va[kTileBlocks], vb[kTileBlocks];
  for (int j = 0; j < nb; ++j) va[j] = load16(a + j * kLanes), vb[j] = load16(b + j * kLanes);
  for (int64_t p = 0; p < positions; ++p, x += xw.position, y += yw.position)
    for (int j = 0; j < nb; ++j) apply_step<T, Silu>(x + j * xw.block, y + j * yw.block, va[j], vb[j]);
}

template <typename T, bool Silu>
DIFFUFLOW_INLINE void grad_sums_tile(const T* x, Walk xw, const float* dz, Walk zw, float* dy, Walk yw,
                                     int64_t positions, int nb, const float* a, const float* b, double* out,
                                     int64_t out_block) {
  vf va[kTileBlocks], vb[kTileBlocks];
  for (int j = 0; j < nb; ++j) va[j] = load16(a + j * kLanes), vb[j] = load16(b + j * kLanes);
  Sums l1[kTileBlocks], lx[kTileBlocks], ldx[kTileBlocks];
  for (int64_t p = 0; p < positions; ++p, x += xw.position, dz += zw.position, dy += yw.position)
    for (int j = 0; j < nb; ++j)
      grad_sums_step<T, Silu>(x + j * xw.block, dz + j * zw.block, dy + j * yw.block, va[j], vb[j], &l1[j], &lx[j],
                              &ldx[j]);
  for (int j = 0; j < nb; ++j) {
    l1[j].add_to(out + j * out_block);
    lx[j].add_to(out + j * out_block + kLanes);
    ldx[j].add_to(out + j * out_block + 2 * kLanes);
  }
}

template <typename T, bool Add>
DIFFUFLOW_INLINE void grad_apply_tile(const T* __restrict x, Walk xw, const float* __restrict dy, Walk yw,
                                      float* __restrict dx, Walk dxw, int64_t positions, int nb, const float* alpha,
                                      const float* beta, const float* delta) {
  GradCoefficients k[kTileBlocks];
  for (int j = 0; j < nb; ++j)
    k[j] = {load16(alpha + j * kLanes), load16(beta + j * kLanes), load16(delta + j * kLanes)};
  for (int64_t p = 0; p < positions; ++p, x += xw.position, dy += yw.position, dx += dxw.position)
    for (int j = 0; j < nb; ++j) grad_apply_step<T, Add>(x + j * xw.block, dy + j * yw.block, dx + j * dxw.block, k[j]);
}

// The tiles' entry points take both types' pointers through these.
template <typename T>
DIFFUFLOW_INLINE void apply_tile_any(const T* x, Walk xw, T* y, Walk yw, int64_t positions, int nb, const float* a,
                                     const float* b, bool silu) {
  silu ? apply_tile<T, true>(x, xw, y, yw, positions, nb, a, b)
       : apply_tile<T, false>(x, xw, y, yw, positions, nb, a, b);
}
template <typename T>
DIFFUFLOW_INLINE void grad_sums_tile_any(const T* x, Walk xw, const float* dz, Walk zw, float* dy, Walk yw,
                                         int64_t positions, int nb, const float* a, const float* b, bool silu,
                                         double* out, int64_t out_block) {
  silu ? grad_sums_tile<T, true>(x, xw, dz, zw, dy, yw, positions, nb, a, b, out, out_block)
       : grad_sums_tile<T, false>(x, xw, dz, zw, dy, yw, positions, nb, a, b, out, out_block);
}
template <typename T>
DIFFUFLOW_INLINE void grad_apply_tile_any(const T* x, Walk xw, const float* dy, Walk yw, float* dx, Walk dxw,
                                          int64_t positions, int nb, const float* alpha, const float* beta,
                                          const float* delta, bool add) {
  add ? grad_apply_tile<T, true>(x, xw, dy, yw, dx, dxw, positions, nb, alpha, beta, delta)
      : grad_apply_tile<T, false>(x, xw, dy, yw, dx, dxw, positions, nb, alpha, beta, delta);
}

// The compiled entry points, one per combination the models use.
DIFFUFLOW_SPAN_CLONES void stats_f32(const float* x, int64_t count, int64_t xs, double* s, double* q) {
  stats_span(x, count, xs, s, q);
}
DIFFUFLOW_SPAN_CLONES void stats_bf16(const uint16_t* x, int64_t count, int64_t xs, double* s, double* q) {
  stats_span(x, count, xs, s, q);
}
DIFFUFLOW_SPAN_CLONES void apply_f32(const float* x, float* y, int64_t count, int64_t xs, int64_t ys, const float* a,
                                     const float* b, bool silu) {
  silu ? apply_span<float, true>(x, y, count, xs, ys, a, b) : apply_span<float, false>(x, y, count, xs, ys, a, b);
}
DIFFUFLOW_SPAN_CLONES void apply_bf16(const uint16_t* x, uint16_t* y, int64_t count, int64_t xs, int64_t ys,
                                      const float* a, const float* b, bool silu) {
  silu ? apply_span<uint16_t, true>(x, y, count, xs, ys, a, b)
       : apply_span<uint16_t, false>(x, y, count, xs, ys, a, b);
}
DIFFUFLOW_SPAN_CLONES void grad_sums_f32(const float* x, const float* dz, float* dy, int64_t count, const Strides& st,
                                         const float* a, const float* b, bool silu, double* s1, double* sx,
                                         double* sdx) {
  grad_sums_any(x, dz, dy, count, st, a, b, silu, s1, sx, sdx);
}
DIFFUFLOW_SPAN_CLONES void grad_sums_bf16(const uint16_t* x, const float* dz, float* dy, int64_t count,
                                          const Strides& st, const float* a, const float* b, bool silu, double* s1,
                                          double* sx, double* sdx) {
  grad_sums_any(x, dz, dy, count, st, a, b, silu, s1, sx, sdx);
}
DIFFUFLOW_SPAN_CLONES void grad_apply_f32(const float* x, const float* dy, float* dx, int64_t count,
                                          const Strides& st, const float* alpha, const float* beta,
                                          const float* delta, bool add) {
  grad_apply_any(x, dy, dx, count, st, alpha, beta, delta, add);
}
DIFFUFLOW_SPAN_CLONES void grad_apply_bf16(const uint16_t* x, const float* dy, float* dx, int64_t count,
                                           const Strides& st, const float* alpha, const float* beta,
                                           const float* delta, bool add) {
  grad_apply_any(x, dy, dx, count, st, alpha, beta, delta, add);
}

// Tiles, f32 and bf16 (T: float, uint16_t; the bf16 entry points through the
// CPU's instructions below use bf16_bits).
#define DIFFUFLOW_TILE_ENTRIES(ATTR, SUFFIX, T, IN)                                                                  \
  ATTR void stats_tile##SUFFIX(const T* x, Walk xw, int64_t positions, int nb, double* out, int64_t out_block) {    \
    stats_tile(reinterpret_cast<const IN*>(x), xw, positions, nb, out, out_block);                                   \
  }                                                                                                                  \
  ATTR void apply_tile##SUFFIX(const T* x, Walk xw, T* y, Walk yw, int64_t positions, int nb, const float* a,        \
                               const float* b, bool silu) {                                                          \
    apply_tile_any(reinterpret_cast<const IN*>(x), xw, reinterpret_cast<IN*>(y), yw, positions, nb, a, b, silu);     \
  }                                                                                                                  \
  ATTR void grad_sums_tile##SUFFIX(const T* x, Walk xw, const float* dz, Walk zw, float* dy, Walk yw,                \
                                   int64_t positions, int nb, const float* a, const float* b, bool silu, double* out, \
                                   int64_t out_block) {                                                              \
    grad_sums_tile_any(reinterpret_cast<const IN*>(x), xw, dz, zw, dy, yw, positions, nb, a, b, silu, out,           \
                       out_block);                                                                                   \
  }                                                                                                                  \
  ATTR void grad_apply_tile##SUFFIX(const T* x, Walk xw, const float* dy, Walk yw, float* dx, Walk dxw,              \
                                    int64_t positions, int nb, const float* alpha, const float* beta,                \
                                    const float* delta, bool add) {                                                  \
    grad_apply_tile_any(reinterpret_cast<const IN*>(x), xw, dy, yw, dx, dxw, positions, nb, alpha, beta, delta, add); \
  }
DIFFUFLOW_TILE_ENTRIES(DIFFUFLOW_SPAN_CLONES, _f32, float, float)
DIFFUFLOW_TILE_ENTRIES(DIFFUFLOW_SPAN_CLONES, _bf16, uint16_t, uint16_t)

#ifdef DIFFUFLOW_VECTOR16_CLONES
DIFFUFLOW_TILE_ENTRIES(DIFFUFLOW_BF16_ENTRY, _bf16_isa, uint16_t, bf16_bits)

// The bf16 entry points again, converting with AVX512-BF16's instructions.
DIFFUFLOW_BF16_ENTRY void stats_bf16_isa(const uint16_t* x, int64_t count, int64_t xs, double* s, double* q) {
  stats_span(reinterpret_cast<const bf16_bits*>(x), count, xs, s, q);
}
DIFFUFLOW_BF16_ENTRY void apply_bf16_isa(const uint16_t* x, uint16_t* y, int64_t count, int64_t xs, int64_t ys,
                                         const float* a, const float* b, bool silu) {
  const auto* in = reinterpret_cast<const bf16_bits*>(x);
  auto* out = reinterpret_cast<bf16_bits*>(y);
  silu ? apply_span<bf16_bits, true>(in, out, count, xs, ys, a, b)
       : apply_span<bf16_bits, false>(in, out, count, xs, ys, a, b);
}
DIFFUFLOW_BF16_ENTRY void grad_sums_bf16_isa(const uint16_t* x, const float* dz, float* dy, int64_t count,
                                             const Strides& st, const float* a, const float* b, bool silu,
                                             double* s1, double* sx, double* sdx) {
  grad_sums_any(reinterpret_cast<const bf16_bits*>(x), dz, dy, count, st, a, b, silu, s1, sx, sdx);
}
DIFFUFLOW_BF16_ENTRY void grad_apply_bf16_isa(const uint16_t* x, const float* dy, float* dx, int64_t count,
                                              const Strides& st, const float* alpha, const float* beta,
                                              const float* delta, bool add) {
  grad_apply_any(reinterpret_cast<const bf16_bits*>(x), dy, dx, count, st, alpha, beta, delta, add);
}
#endif

// The bf16 entry points: with the CPU's bf16 instructions or without.
struct Bf16Spans {
  decltype(&stats_bf16) stats = stats_bf16;
  decltype(&apply_bf16) apply = apply_bf16;
  decltype(&grad_sums_bf16) grad_sums = grad_sums_bf16;
  decltype(&grad_apply_bf16) grad_apply = grad_apply_bf16;
  decltype(&stats_tile_bf16) stats_tile = stats_tile_bf16;
  decltype(&apply_tile_bf16) apply_tile = apply_tile_bf16;
  decltype(&grad_sums_tile_bf16) grad_sums_tile = grad_sums_tile_bf16;
  decltype(&grad_apply_tile_bf16) grad_apply_tile = grad_apply_tile_bf16;
  explicit Bf16Spans(bool instructions) {
#ifdef DIFFUFLOW_VECTOR16_CLONES
    if (!instructions) return;
    stats = stats_bf16_isa;
    apply = apply_bf16_isa;
    grad_sums = grad_sums_bf16_isa;
    grad_apply = grad_apply_bf16_isa;
    stats_tile = stats_tile_bf16_isa;
    apply_tile = apply_tile_bf16_isa;
    grad_sums_tile = grad_sums_tile_bf16_isa;
    grad_apply_tile = grad_apply_tile_bf16_isa;
#endif
  }
};
std::atomic<bool> bf16_instructions_allowed{true};
const Bf16Spans& bf16_spans() {
  static const Bf16Spans portable(false), instructions(true);
#ifdef DIFFUFLOW_VECTOR16_CLONES
  if (bf16_instructions_allowed.load(std::memory_order_relaxed) && bf16_instructions()) return instructions;
#endif
  return portable;
}

// --- the work split -----------------------------------------------------------
//
// A unit is the run that one coefficient vector covers: a (sample, 16-channel
// block) of nChw16c (contiguous) or of nhwc (the block's 16 channels at each
// position, a row of channels apart), or a (sample, channel) row of the plain
// layout. Items count elements in nChw16c's order whatever the layout (their
// `at`), so the two 16-channel layouts split and sum alike; y_at and
// source() place them in memory. Units are cut into chunks of whole 16-element vectors so that
// there are at least kMinItems items whatever the batch: a sampler's batch of
// one still spreads over the cores. A sample's items are consecutive. Each
// item sums into lanes of its own, and a channel's sums gather its sample's
// items in order, so neither the thread count nor the schedule (below)
// changes a bit of the results.
constexpr int64_t kMinItems = 64;

struct Split {
  int64_t units = 0, elements = 0, vectors = 0, chunks = 1, blocks = 0, units_per_sample = 0, units_first = 0;
  Layout layout = Layout::plain;
  int64_t c = 0, spatial = 0, c_first = 0;

  explicit Split(const Shape& s)
      : layout(s.layout), c(s.c), spatial(s.spatial), c_first(s.c_first <= 0 ? s.c : s.c_first) {
    const bool wide = s.layout != Layout::plain;
    blocks = (s.c + kLanes - 1) / kLanes;
    units_per_sample = wide ? blocks : s.c;
    units_first = s.c_first <= 0 ? units_per_sample : wide ? s.c_first / kLanes : s.c_first;
    units = s.n * units_per_sample;
    elements = wide ? s.spatial * kLanes : s.spatial;
    vectors = (elements + kLanes - 1) / kLanes;
    chunks = std::max<int64_t>(1, std::min(vectors, (kMinItems + units - 1) / units));
    if (channels_last()) {
      // Each source's blocks in groups of up to kTileBlocks.
      const int64_t bounds[] = {0, units_first, units_per_sample};
      for (int source = 0; source < 2; ++source)
        for (int64_t b = bounds[source]; b < bounds[source + 1]; b += kTileBlocks)
          groups.push_back({b, std::min<int64_t>(kTileBlocks, bounds[source + 1] - b)});
    }
  }
  int64_t items() const { return units * chunks; }
  int64_t items_per_sample() const { return units_per_sample * chunks; }
  int64_t sample_elements() const { return units_per_sample * elements; }
  // An item's unit, the offset of its first element, and its element count.
  struct Item {
    int64_t unit, at, count;
  };
  Item item(int64_t i) const {
    const int64_t unit = i / chunks, k = i % chunks;
    const int64_t begin = std::min(elements, k * vectors / chunks * kLanes);
    const int64_t end = std::min(elements, (k + 1) * vectors / chunks * kLanes);
    return {unit, unit * elements + begin, end - begin};
  }
  bool channels_last() const { return layout == Layout::channels_last16; }

  // The pieces the passes run in parallel: items, or in nhwc tiles (each
  // chunk of each group of blocks of one source, a sample's chunk by chunk).
  struct Group {
    int64_t first, blocks;
  };
  std::vector<Group> groups;  // nhwc only
  int64_t pieces_per_sample() const {
    return channels_last() ? chunks * static_cast<int64_t>(groups.size()) : items_per_sample();
  }
  int64_t pieces() const { return pieces_per_sample() * (units / units_per_sample); }
  int64_t sample_of_piece(int64_t p) const { return p / pieces_per_sample(); }
  // A piece's first item, and its count of items (its blocks; 1 but in nhwc).
  // A piece's items are chunks apart.
  std::pair<int64_t, int64_t> piece_items(int64_t p) const {
    if (!channels_last()) return {p, 1};
    const int64_t n = p / pieces_per_sample(), r = p % pieces_per_sample();
    const int64_t k = r / static_cast<int64_t>(groups.size());
    const Group& g = groups[static_cast<size_t>(r % static_cast<int64_t>(groups.size()))];
    return {(n * units_per_sample + g.first) * chunks + k, g.blocks};
  }
  // Where an item's elements are in a tensor of all C channels (y and the
  // gradients of y), and the stride between its positions there.
  int64_t y_at(const Item& it) const {
    if (!channels_last()) return it.at;
    const int64_t n = it.unit / blocks, k = it.unit % blocks, position = (it.at - it.unit * elements) / kLanes;
    return (n * spatial + position) * c + k * kLanes;
  }
  int64_t y_stride() const { return channels_last() ? c : kLanes; }
  // Where an item's elements are in the sources: the first (x) or the second
  // (x2), the offset there, and the stride between positions. With one
  // source, x where y_at places the item.
  struct Source {
    bool second;
    int64_t at, stride;
  };
  Source source(const Item& it) const {
    const int64_t n = it.unit / units_per_sample, k = it.unit % units_per_sample, begin = it.at - it.unit * elements;
    const bool second = k >= units_first;
    if (channels_last()) {
      const int64_t channels = second ? c - c_first : c_first, block = second ? k - units_first : k;
      return {second, (n * spatial + begin / kLanes) * channels + block * kLanes, channels};
    }
    if (!second) return {false, (n * units_first + k) * elements + begin, kLanes};
    return {true, (n * (units_per_sample - units_first) + k - units_first) * elements + begin, kLanes};
  }
  // The 16 lanes' values, for a unit, of per-channel numbers `per_c` of the
  // unit's sample (0 past C).
  void lanes(int64_t unit, const float* per_c, float* out) const {
    if (layout != Layout::plain) {
      const int64_t first = unit % blocks * kLanes;
      for (int l = 0; l < kLanes; ++l) out[l] = first + l < c ? per_c[first + l] : 0.0f;
    } else {
      std::fill(out, out + kLanes, per_c[unit % c]);
    }
  }
  // Adds a unit's 16 lane sums into its sample's per-channel sums.
  void gather(int64_t unit, const double* lane_sums, double* per_c) const {
    if (layout != Layout::plain) {
      const int64_t first = unit % blocks * kLanes;
      for (int l = 0; l < kLanes && first + l < c; ++l) per_c[first + l] += lane_sums[l];
    } else {
      double total = 0;
      for (int l = 0; l < kLanes; ++l) total += lane_sums[l];
      per_c[unit % c] += total;
    }
  }
  // Sample n's per-channel sums ([kinds][C], overwritten) from the lane sums
  // of its items ([items of n][kinds][16]), gathered in item order.
  void gather_sample(int64_t n, const double* partial, int kinds, double* per_c) const {
    std::fill(per_c, per_c + kinds * c, 0.0);
    for (int64_t j = 0; j < items_per_sample(); ++j) {
      const int64_t unit = (n * items_per_sample() + j) / chunks;
      for (int k = 0; k < kinds; ++k) gather(unit, partial + (j * kinds + k) * kLanes, per_c + k * c);
    }
  }
};

// --- the schedule ---------------------------------------------------------------
//
// whole_tensor: each pass over the whole tensor, every item in parallel, the
// per-sample arithmetic in between; the image is read from memory in each
// pass. per_sample: the samples in parallel, each thread running both passes
// over one sample before the next, so the second pass reads what the first
// left in the thread's L2 cache: forward one read of x from memory instead of
// two, backward one of x and of dz (and no write of dy) instead of two each
// and a write.
std::atomic<Schedule> schedule_setting{Schedule::by_size};

int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return reported > 0 ? static_cast<int64_t>(reported) : int64_t{1} << 20;
  }();
  return bytes;
}

int64_t sample_elements(const Shape& s) {
  return s.spatial * (s.layout != Layout::plain ? (s.c + kLanes - 1) / kLanes * kLanes : s.c);
}

float shift_at(const float* shift, int64_t i) { return shift ? shift[i] : 0.0f; }

// Sample n's coefficients of y = a x + b ([C] each) from its group
// statistics as stored (forward and backward compute them alike):
// a = gamma r, b = beta + (t - m) a.
template <typename Step>
void affine_coefficients(const Step& step, int64_t n, float* a, float* b) {
  const Shape& s = step.shape;
  const int64_t cg = s.c / s.groups;
  for (int64_t c = 0; c < s.c; ++c) {
    const int64_t g = n * s.groups + c / cg;
    const double ac = static_cast<double>(step.gamma[c]) * step.rstd[g];
    a[c] = static_cast<float>(ac);
    const float t = shift_at(step.shift, n * s.c + c);
    b[c] = static_cast<float>(static_cast<double>(step.beta[c]) + (t - step.mean[g]) * ac);
  }
}

// --- forward ----------------------------------------------------------------------

struct ForwardPasses {
  const Forward& f;
  const Split& split;
  const Bf16Spans& spans;

  // The lane sums of x and x^2 ([2][16], overwritten) of piece p's items,
  // item i's at base + (i - base_item) * 2 * 16.
  void stats(int64_t p, double* base, int64_t base_item) const {
    const auto [first, nb] = split.piece_items(p);
    double* sums = base + (first - base_item) * 2 * kLanes;
    const int64_t out_block = split.chunks * 2 * kLanes;
    for (int64_t j = 0; j < nb; ++j) std::fill(sums + j * out_block, sums + j * out_block + 2 * kLanes, 0.0);
    const Split::Item it = split.item(first);
    const Split::Source src = split.source(it);
    const void* x = src.second ? f.x2 : f.x;
    if (split.channels_last()) {
      const Walk xw{kLanes, src.stride};
      const int64_t positions = it.count / kLanes;
      const int n_blocks = static_cast<int>(nb);
      if (f.type == DataType::bf16)
        spans.stats_tile(static_cast<const uint16_t*>(x) + src.at, xw, positions, n_blocks, sums, out_block);
      else
        stats_tile_f32(static_cast<const float*>(x) + src.at, xw, positions, n_blocks, sums, out_block);
    } else if (f.type == DataType::bf16) {
      spans.stats(static_cast<const uint16_t*>(x) + src.at, it.count, src.stride, sums, sums + kLanes);
    } else {
      stats_f32(static_cast<const float*>(x) + src.at, it.count, src.stride, sums, sums + kLanes);
    }
  }

  // Sample n's group statistics of u = x + t from its per-channel sums
  // ([2][C]), stored as backward reads them, and from the stored values its
  // coefficients of y = a x + b ([C] each): a = gamma r, b = beta + (t - m) a.
  void coefficients(int64_t n, const double* sums, float* a, float* b) const {
    const Shape& s = f.shape;
    const int64_t cg = s.c / s.groups;
    const double count = static_cast<double>(cg * s.spatial), hw = static_cast<double>(s.spatial);
    for (int64_t g = 0; g < s.groups; ++g) {
      double su = 0, squ = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const double t = shift_at(f.shift, n * s.c + c), sx = sums[c], sxx = sums[s.c + c];
        su += sx + hw * t;
        squ += sxx + 2.0 * t * sx + hw * t * t;
      }
      const double m = su / count, var = std::max(0.0, squ / count - m * m);
      f.mean[n * s.groups + g] = static_cast<float>(m);
      f.rstd[n * s.groups + g] = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(f.eps)));
    }
    affine_coefficients(f, n, a, b);
  }

  // y = act(a x + b) over piece p, with its sample's coefficients.
  void apply(int64_t p, const float* a, const float* b) const {
    const auto [first, nb] = split.piece_items(p);
    const Split::Item it = split.item(first);
    float la[kTileBlocks * kLanes], lb[kTileBlocks * kLanes];
    for (int64_t j = 0; j < nb; ++j) {
      split.lanes(it.unit + j, a, la + j * kLanes);
      split.lanes(it.unit + j, b, lb + j * kLanes);
    }
    const Split::Source src = split.source(it);
    const void* x = src.second ? f.x2 : f.x;
    const int64_t y_at = split.y_at(it), ys = split.y_stride();
    if (split.channels_last()) {
      const Walk xw{kLanes, src.stride}, yw{kLanes, ys};
      const int64_t positions = it.count / kLanes;
      const int n_blocks = static_cast<int>(nb);
      if (f.type == DataType::bf16)
        spans.apply_tile(static_cast<const uint16_t*>(x) + src.at, xw, static_cast<uint16_t*>(f.y) + y_at, yw,
                         positions, n_blocks, la, lb, f.silu);
      else
        apply_tile_f32(static_cast<const float*>(x) + src.at, xw, static_cast<float*>(f.y) + y_at, yw, positions,
                       n_blocks, la, lb, f.silu);
    } else if (f.type == DataType::bf16)
      spans.apply(static_cast<const uint16_t*>(x) + src.at, static_cast<uint16_t*>(f.y) + y_at, it.count, src.stride,
                  ys, la, lb, f.silu);
    else
      apply_f32(static_cast<const float*>(x) + src.at, static_cast<float*>(f.y) + y_at, it.count, src.stride, ys, la,
                lb, f.silu);
  }
};

// --- backward -----------------------------------------------------------------------

struct BackwardPasses {
  const Backward& bw;
  const Split& split;
  const Bf16Spans& spans;

  // The lane sums of dy, x and dy x ([3][16], overwritten) of piece p's
  // items, item i's at base + (i - base_item) * 3 * 16; with SiLU dy is
  // written at `dy` (the first item's elements; `dyw` walks on from there).
  void sums(int64_t p, const float* a, const float* b, float* dy, Walk dyw, double* base, int64_t base_item) const {
    const auto [first, nb] = split.piece_items(p);
    double* out = base + (first - base_item) * 3 * kLanes;
    const int64_t out_block = split.chunks * 3 * kLanes;
    for (int64_t j = 0; j < nb; ++j) std::fill(out + j * out_block, out + j * out_block + 3 * kLanes, 0.0);
    const Split::Item it = split.item(first);
    float la[kTileBlocks * kLanes], lb[kTileBlocks * kLanes];
    for (int64_t j = 0; j < nb; ++j) {
      split.lanes(it.unit + j, a, la + j * kLanes);
      split.lanes(it.unit + j, b, lb + j * kLanes);
    }
    const Split::Source src = split.source(it);
    const void* x = src.second ? bw.x2 : bw.x;
    const float* dz = bw.dz + split.y_at(it);
    if (split.channels_last()) {
      const Walk xw{kLanes, src.stride}, zw{kLanes, split.y_stride()};
      const int64_t positions = it.count / kLanes;
      const int n_blocks = static_cast<int>(nb);
      if (bw.type == DataType::bf16)
        spans.grad_sums_tile(static_cast<const uint16_t*>(x) + src.at, xw, dz, zw, dy, dyw, positions, n_blocks, la,
                             lb, bw.silu, out, out_block);
      else
        grad_sums_tile_f32(static_cast<const float*>(x) + src.at, xw, dz, zw, dy, dyw, positions, n_blocks, la, lb,
                           bw.silu, out, out_block);
      return;
    }
    const Strides st{src.stride, split.y_stride(), dyw.position, kLanes};
    if (bw.type == DataType::bf16)
      spans.grad_sums(static_cast<const uint16_t*>(x) + src.at, dz, dy, it.count, st, la, lb, bw.silu, out,
                      out + kLanes, out + 2 * kLanes);
    else
      grad_sums_f32(static_cast<const float*>(x) + src.at, dz, dy, it.count, st, la, lb, bw.silu, out, out + kLanes,
                    out + 2 * kLanes);
  }

  // From sample n's per-channel sums ([3][C]: dy, x, dy x): per group A and
  // B, per channel dx = alpha dy + beta x + delta ([C] each), the shift's
  // gradient, and the sample's parts of d gamma and d beta ([C] each).
  void coefficients(int64_t n, const double* sums, float* alpha, float* beta, float* delta, double* dgamma_part,
                    double* dbeta_part) const {
    const Shape& s = bw.shape;
    const int64_t cg = s.c / s.groups;
    const double* s1 = sums;
    const double* sx = sums + s.c;
    const double* sdx = sums + 2 * s.c;
    const double count = static_cast<double>(cg * s.spatial), hw = static_cast<double>(s.spatial);
    for (int64_t g = 0; g < s.groups; ++g) {
      const double m = bw.mean[n * s.groups + g], r = bw.rstd[n * s.groups + g];
      double sum_a = 0, sum_b = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const double gamma = bw.gamma[c], xhat_dy = r * (sdx[c] + (shift_at(bw.shift, n * s.c + c) - m) * s1[c]);
        sum_a += gamma * s1[c];
        sum_b += gamma * xhat_dy;
        dgamma_part[c] = xhat_dy;
        dbeta_part[c] = s1[c];
      }
      const double big_a = sum_a / count, big_b = sum_b / count;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const int64_t i = n * s.c + c;
        const double al = r * bw.gamma[c], be = -r * r * big_b,
                     de = -r * big_a - r * r * big_b * (shift_at(bw.shift, i) - m);
        alpha[c] = static_cast<float>(al);
        beta[c] = static_cast<float>(be);
        delta[c] = static_cast<float>(de);
        if (bw.dshift) {
          const float d = static_cast<float>(al * s1[c] + be * sx[c] + hw * de);
          bw.dshift[i] = bw.dshift_add ? bw.dshift[i] + d : d;
        }
      }
    }
  }

  // dx over piece p from dy (the first item's elements at `dy`; `dyw` walks
  // on from there) and its sample's coefficients.
  void apply(int64_t p, const float* dy, Walk dyw, const float* alpha, const float* beta, const float* delta) const {
    const auto [first, nb] = split.piece_items(p);
    const Split::Item it = split.item(first);
    const Split::Source src = split.source(it);
    const void* x = src.second ? bw.x2 : bw.x;
    float* dx = src.second ? bw.dx2 : bw.dx;
    const bool add = src.second ? bw.dx2_add : bw.dx_add;
    if (!dx) return;
    float lal[kTileBlocks * kLanes], lbe[kTileBlocks * kLanes], lde[kTileBlocks * kLanes];
    for (int64_t j = 0; j < nb; ++j) {
      split.lanes(it.unit + j, alpha, lal + j * kLanes);
      split.lanes(it.unit + j, beta, lbe + j * kLanes);
      split.lanes(it.unit + j, delta, lde + j * kLanes);
    }
    if (split.channels_last()) {
      const Walk xw{kLanes, src.stride};
      const int64_t positions = it.count / kLanes;
      const int n_blocks = static_cast<int>(nb);
      if (bw.type == DataType::bf16)
        spans.grad_apply_tile(static_cast<const uint16_t*>(x) + src.at, xw, dy, dyw, dx + src.at, xw, positions,
                              n_blocks, lal, lbe, lde, add);
      else
        grad_apply_tile_f32(static_cast<const float*>(x) + src.at, xw, dy, dyw, dx + src.at, xw, positions,
                            n_blocks, lal, lbe, lde, add);
      return;
    }
    const Strides st{src.stride, kLanes, dyw.position, src.stride};
    if (bw.type == DataType::bf16)
      spans.grad_apply(static_cast<const uint16_t*>(x) + src.at, dy, dx + src.at, it.count, st, lal, lbe, lde, add);
    else
      grad_apply_f32(static_cast<const float*>(x) + src.at, dy, dx + src.at, it.count, st, lal, lbe, lde, add);
  }
};

size_t sz(int64_t v) { return static_cast<size_t>(v); }

// What the layouts assume of the shape.
void check_shape(const Shape& s) {
  const bool first_blocks = s.c_first <= 0 || s.c_first % kLanes == 0;
  if (s.n < 1 || s.c < 1 || s.spatial < 1 || s.groups < 1 || s.c % s.groups != 0 || s.c_first >= s.c ||
      (s.layout != Layout::plain && !first_blocks) || (s.layout == Layout::channels_last16 && s.c % kLanes != 0))
    throw std::invalid_argument("group_norm_kernel: a shape its layout cannot hold");
}

}  // namespace

bool set_bf16_instructions(bool allowed) {
  bf16_instructions_allowed = allowed;
#ifdef DIFFUFLOW_VECTOR16_CLONES
  return allowed && bf16_instructions();
#else
  return false;
#endif
}

Schedule set_schedule(Schedule schedule) { return schedule_setting.exchange(schedule); }

// by_size: per sample when every thread has a sample and the bytes the
// second pass rereads (x; backward also dz, and dy with SiLU) fit in half
// the L2 cache, the other half left to the output streaming through.
bool picks_per_sample(const Shape& s, DataType type, bool backward, bool silu) {
  const Schedule setting = schedule_setting.load(std::memory_order_relaxed);
  if (setting != Schedule::by_size) return setting == Schedule::per_sample;
  const int64_t x_bytes = type == DataType::bf16 ? 2 : 4;
  const int64_t reread = x_bytes + (backward ? 4 + (silu ? 4 : 0) : 0);
  return s.n >= omp_get_max_threads() && sample_elements(s) * reread <= l2_cache_bytes() / 2;
}

void forward(const Forward& f) {
  const Shape& s = f.shape;
  check_shape(s);
  const Split split(s);
  const ForwardPasses passes{f, split, bf16_spans()};
  const int64_t per_sample = split.items_per_sample(), pieces = split.pieces_per_sample();

  if (picks_per_sample(s, f.type, false, f.silu)) {
#pragma omp parallel
    {
      std::vector<double> partial(sz(per_sample * 2 * kLanes)), sums(sz(2 * s.c));
      std::vector<float> a(sz(s.c)), b(sz(s.c));
#pragma omp for schedule(static)
      for (int64_t n = 0; n < s.n; ++n) {
        for (int64_t j = 0; j < pieces; ++j) passes.stats(n * pieces + j, partial.data(), n * per_sample);
        split.gather_sample(n, partial.data(), 2, sums.data());
        passes.coefficients(n, sums.data(), a.data(), b.data());
        for (int64_t j = 0; j < pieces; ++j) passes.apply(n * pieces + j, a.data(), b.data());
      }
    }
    return;
  }

  // 1. Every item's sums of x and x^2, one read.
  std::vector<double> partial(sz(split.items() * 2 * kLanes));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < split.pieces(); ++i) passes.stats(i, partial.data(), 0);
  // 2. Each sample's statistics and coefficients.
  std::vector<double> sums(sz(2 * s.c));
  std::vector<float> a(sz(s.n * s.c)), b(sz(s.n * s.c));
  for (int64_t n = 0; n < s.n; ++n) {
    split.gather_sample(n, &partial[sz(n * per_sample * 2 * kLanes)], 2, sums.data());
    passes.coefficients(n, sums.data(), &a[sz(n * s.c)], &b[sz(n * s.c)]);
  }
  // 3. y = act(a x + b), one read and one write.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < split.pieces(); ++i) {
    const int64_t n = split.sample_of_piece(i);
    passes.apply(i, &a[sz(n * s.c)], &b[sz(n * s.c)]);
  }
}

void backward(const Backward& bw) {
  const Shape& s = bw.shape;
  check_shape(s);
  const Split split(s);
  const BackwardPasses passes{bw, split, bf16_spans()};
  const int64_t per_sample = split.items_per_sample(), pieces = split.pieces_per_sample(), nc = s.n * s.c;
  // Each sample's parts of d gamma and d beta, summed over the samples in
  // order at the end.
  std::vector<double> dgamma_parts(sz(nc)), dbeta_parts(sz(nc));
  // dz as a piece's dy: at its first item, its blocks and positions as y's.
  const auto dz_of = [&](int64_t piece) {
    return std::make_pair(bw.dz + split.y_at(split.item(split.piece_items(piece).first)),
                          Walk{kLanes, split.y_stride()});
  };

  if (picks_per_sample(s, bw.type, true, bw.silu)) {
    // With SiLU, dy goes to the thread's scratch, which stays in its cache,
    // instead of over dz.
#pragma omp parallel
    {
      std::vector<double> partial(sz(per_sample * 3 * kLanes)), sums(sz(3 * s.c));
      std::vector<float> a(sz(s.c)), b(sz(s.c)), alpha(sz(s.c)), beta(sz(s.c)), delta(sz(s.c));
      // The thread's scratch for dy, kept between calls: neither allocated
      // nor zeroed again while samples fit it.
      thread_local std::vector<float> scratch;
      if (bw.silu && scratch.size() < sz(split.sample_elements())) scratch.resize(sz(split.sample_elements()));
#pragma omp for schedule(static)
      for (int64_t n = 0; n < s.n; ++n) {
        const int64_t first = n * split.sample_elements();
        // The dy of a piece: in the scratch (with SiLU; in items' order, an
        // item's elements after another's), else dz itself.
        const auto dy = [&](int64_t j) {
          if (!bw.silu) return dz_of(n * pieces + j);
          const Split::Item it = split.item(split.piece_items(n * pieces + j).first);
          return std::make_pair(scratch.data() + (it.at - first), Walk{split.elements, kLanes});
        };
        affine_coefficients(bw, n, a.data(), b.data());
        for (int64_t j = 0; j < pieces; ++j) {
          const auto [d, walk] = dy(j);
          passes.sums(n * pieces + j, a.data(), b.data(), d, walk, partial.data(), n * per_sample);
        }
        split.gather_sample(n, partial.data(), 3, sums.data());
        passes.coefficients(n, sums.data(), alpha.data(), beta.data(), delta.data(), &dgamma_parts[sz(n * s.c)],
                            &dbeta_parts[sz(n * s.c)]);
        if (bw.dx || bw.dx2)
          for (int64_t j = 0; j < pieces; ++j) {
            const auto [d, walk] = dy(j);
            passes.apply(n * pieces + j, d, walk, alpha.data(), beta.data(), delta.data());
          }
      }
    }
  } else {
    // 1. Every item's sums of dy, x and dy x, one read of x and dz (with
    // SiLU, dy written over dz).
    std::vector<float> a(sz(nc)), b(sz(nc));
    for (int64_t n = 0; n < s.n; ++n) affine_coefficients(bw, n, &a[sz(n * s.c)], &b[sz(n * s.c)]);
    std::vector<double> partial(sz(split.items() * 3 * kLanes));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < split.pieces(); ++i) {
      const int64_t n = split.sample_of_piece(i);
      const auto [d, walk] = dz_of(i);
      passes.sums(i, &a[sz(n * s.c)], &b[sz(n * s.c)], d, walk, partial.data(), 0);
    }
    // 2. Each sample's coefficients of dx.
    std::vector<double> sums(sz(3 * s.c));
    std::vector<float> alpha(sz(nc)), beta(sz(nc)), delta(sz(nc));
    for (int64_t n = 0; n < s.n; ++n) {
      split.gather_sample(n, &partial[sz(n * per_sample * 3 * kLanes)], 3, sums.data());
      const size_t at = sz(n * s.c);
      passes.coefficients(n, sums.data(), &alpha[at], &beta[at], &delta[at], &dgamma_parts[at], &dbeta_parts[at]);
    }
    // 3. dx, one read of x and dy and one write (or add) of dx.
    if (bw.dx || bw.dx2) {
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < split.pieces(); ++i) {
        const size_t at = sz(split.sample_of_piece(i) * s.c);
        const auto [d, walk] = dz_of(i);
        passes.apply(i, d, walk, &alpha[at], &beta[at], &delta[at]);
      }
    }
  }

  for (int64_t c = 0; c < s.c; ++c) {
    double dgamma = 0, dbeta = 0;
    for (int64_t n = 0; n < s.n; ++n) {
      dgamma += dgamma_parts[sz(n * s.c + c)];
      dbeta += dbeta_parts[sz(n * s.c + c)];
    }
    bw.dgamma[c] = static_cast<float>(dgamma);
    bw.dbeta[c] = static_cast<float>(dbeta);
  }
}

}  // namespace diffuflow::group_norm_kernel
