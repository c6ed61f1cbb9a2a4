#include "nodes/model/group_norm_kernel.hpp"

#include "nodes/model/vector16.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

namespace diffuflow::group_norm_kernel {

namespace {

using namespace vector16;

// The spans below work on 16 lanes at once: a channel block of nChw16c, or 16
// neighbouring positions of one channel in the plain layout, with per-lane
// coefficients and accumulators.

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
DIFFUFLOW_INLINE void stats_span(const T* x, int64_t count, double* s, double* q) {
  Sums ls, lq;
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) stats_step(x + i, &ls, &lq);
  if (i < count) stats_step(Tail<T>(x + i, count - i).lanes, &ls, &lq);
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
DIFFUFLOW_INLINE void apply_span(const T* __restrict x, T* __restrict y, int64_t count, const float* a,
                                 const float* b) {
  const vf va = load16(a), vb = load16(b);
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) apply_step<T, Silu>(x + i, y + i, va, vb);
  if (i < count) {
    const Tail<T> in(x + i, count - i);
    Tail<T> out(y + i, count - i);
    apply_step<T, Silu>(in.lanes, out.lanes, va, vb);
    out.copy_to(y + i);
  }
}

// With SiLU the gradient before it, dy, is written over dz, so that the
// second pass reads it instead of computing the sigmoid again.
template <typename T, bool Silu>
DIFFUFLOW_INLINE void grad_sums_step(const T* x, float* dz, vf a, vf b, Sums* s1, Sums* sx, Sums* sdx) {
  const vf xv = load16(x);
  const vf dy = input_grad<Silu>(xv, load16(dz), a, b);
  if (Silu) store16(dz, dy);
  vd dlo, dhi, xlo, xhi;
  widen(dy, &dlo, &dhi);
  widen(xv, &xlo, &xhi);
  s1->add(dlo, dhi);
  sx->add(xlo, xhi);
  sdx->add(dlo * xlo, dhi * xhi);
}

template <typename T, bool Silu>
DIFFUFLOW_INLINE void grad_sums_span(const T* x, float* dz, int64_t count, const float* a, const float* b, double* s1,
                                     double* sx, double* sdx) {
  const vf va = load16(a), vb = load16(b);
  Sums l1, lx, ldx;
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) grad_sums_step<T, Silu>(x + i, dz + i, va, vb, &l1, &lx, &ldx);
  if (i < count) {
    Tail<float> tail(dz + i, count - i);
    grad_sums_step<T, Silu>(Tail<T>(x + i, count - i).lanes, tail.lanes, va, vb, &l1, &lx, &ldx);
    if (Silu) tail.copy_to(dz + i);
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
                                      int64_t count, const GradCoefficients& k) {
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) grad_apply_step<T, Add>(x + i, dy + i, dx + i, k);
  if (i < count) {
    Tail<float> out(dx + i, count - i);
    grad_apply_step<T, Add>(Tail<T>(x + i, count - i).lanes, Tail<float>(dy + i, count - i).lanes, out.lanes, k);
    out.copy_to(dx + i);
  }
}

template <typename T>
DIFFUFLOW_INLINE void grad_sums_any(const T* x, float* dz, int64_t count, const float* a, const float* b, bool silu,
                                    double* s1, double* sx, double* sdx) {
  silu ? grad_sums_span<T, true>(x, dz, count, a, b, s1, sx, sdx)
       : grad_sums_span<T, false>(x, dz, count, a, b, s1, sx, sdx);
}

template <typename T>
DIFFUFLOW_INLINE void grad_apply_any(const T* x, const float* dy, float* dx, int64_t count, const float* alpha,
                                     const float* beta, const float* delta, bool add) {
  const GradCoefficients k{load16(alpha), load16(beta), load16(delta)};
  add ? grad_apply_span<T, true>(x, dy, dx, count, k) : grad_apply_span<T, false>(x, dy, dx, count, k);
}

// The compiled entry points, one per combination the models use.
DIFFUFLOW_SPAN_CLONES void stats_f32(const float* x, int64_t count, double* s, double* q) {
  stats_span(x, count, s, q);
}
DIFFUFLOW_SPAN_CLONES void stats_bf16(const uint16_t* x, int64_t count, double* s, double* q) {
  stats_span(x, count, s, q);
}
DIFFUFLOW_SPAN_CLONES void apply_f32(const float* x, float* y, int64_t count, const float* a, const float* b,
                                     bool silu) {
  silu ? apply_span<float, true>(x, y, count, a, b) : apply_span<float, false>(x, y, count, a, b);
}
DIFFUFLOW_SPAN_CLONES void apply_bf16(const uint16_t* x, uint16_t* y, int64_t count, const float* a, const float* b,
                                      bool silu) {
  silu ? apply_span<uint16_t, true>(x, y, count, a, b)
       : apply_span<uint16_t, false>(x, y, count, a, b);
}
DIFFUFLOW_SPAN_CLONES void grad_sums_f32(const float* x, float* dz, int64_t count, const float* a, const float* b,
                                         bool silu, double* s1, double* sx, double* sdx) {
  grad_sums_any(x, dz, count, a, b, silu, s1, sx, sdx);
}
DIFFUFLOW_SPAN_CLONES void grad_sums_bf16(const uint16_t* x, float* dz, int64_t count, const float* a, const float* b,
                                          bool silu, double* s1, double* sx, double* sdx) {
  grad_sums_any(x, dz, count, a, b, silu, s1, sx, sdx);
}
DIFFUFLOW_SPAN_CLONES void grad_apply_f32(const float* x, const float* dy, float* dx, int64_t count,
                                          const float* alpha, const float* beta, const float* delta, bool add) {
  grad_apply_any(x, dy, dx, count, alpha, beta, delta, add);
}
DIFFUFLOW_SPAN_CLONES void grad_apply_bf16(const uint16_t* x, const float* dy, float* dx, int64_t count,
                                           const float* alpha, const float* beta, const float* delta, bool add) {
  grad_apply_any(x, dy, dx, count, alpha, beta, delta, add);
}

#ifdef DIFFUFLOW_VECTOR16_CLONES
// The bf16 entry points again, converting with AVX512-BF16's instructions.
DIFFUFLOW_BF16_ENTRY void stats_bf16_isa(const uint16_t* x, int64_t count, double* s, double* q) {
  stats_span(reinterpret_cast<const bf16_bits*>(x), count, s, q);
}
DIFFUFLOW_BF16_ENTRY void apply_bf16_isa(const uint16_t* x, uint16_t* y, int64_t count, const float* a,
                                         const float* b, bool silu) {
  const auto* in = reinterpret_cast<const bf16_bits*>(x);
  auto* out = reinterpret_cast<bf16_bits*>(y);
  silu ? apply_span<bf16_bits, true>(in, out, count, a, b) : apply_span<bf16_bits, false>(in, out, count, a, b);
}
DIFFUFLOW_BF16_ENTRY void grad_sums_bf16_isa(const uint16_t* x, float* dz, int64_t count, const float* a,
                                             const float* b, bool silu, double* s1, double* sx, double* sdx) {
  grad_sums_any(reinterpret_cast<const bf16_bits*>(x), dz, count, a, b, silu, s1, sx, sdx);
}
DIFFUFLOW_BF16_ENTRY void grad_apply_bf16_isa(const uint16_t* x, const float* dy, float* dx, int64_t count,
                                              const float* alpha, const float* beta, const float* delta, bool add) {
  grad_apply_any(reinterpret_cast<const bf16_bits*>(x), dy, dx, count, alpha, beta, delta, add);
}
#endif

// The bf16 entry points: with the CPU's bf16 instructions or without.
struct Bf16Spans {
  decltype(&stats_bf16) stats = stats_bf16;
  decltype(&apply_bf16) apply = apply_bf16;
  decltype(&grad_sums_bf16) grad_sums = grad_sums_bf16;
  decltype(&grad_apply_bf16) grad_apply = grad_apply_bf16;
  explicit Bf16Spans(bool instructions) {
#ifdef DIFFUFLOW_VECTOR16_CLONES
    if (!instructions) return;
    stats = stats_bf16_isa;
    apply = apply_bf16_isa;
    grad_sums = grad_sums_bf16_isa;
    grad_apply = grad_apply_bf16_isa;
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
// A unit is the contiguous run that one coefficient vector covers: a
// (sample, 16-channel block) of nChw16c, or a (sample, channel) row of the
// plain layout. Units are cut into chunks of whole 16-element vectors so that
// there are at least kMinItems items whatever the batch: a sampler's batch of
// one still spreads over the cores. The split does not depend on the thread
// count, so neither do the sums.
constexpr int64_t kMinItems = 64;

struct Split {
  int64_t units = 0, elements = 0, vectors = 0, chunks = 1, blocks = 0;
  Layout layout = Layout::plain;
  int64_t c = 0;

  explicit Split(const Shape& s) : layout(s.layout), c(s.c) {
    blocks = (s.c + kLanes - 1) / kLanes;
    units = s.layout == Layout::blocked16 ? s.n * blocks : s.n * s.c;
    elements = s.layout == Layout::blocked16 ? s.spatial * kLanes : s.spatial;
    vectors = (elements + kLanes - 1) / kLanes;
    chunks = std::max<int64_t>(1, std::min(vectors, (kMinItems + units - 1) / units));
  }
  int64_t items() const { return units * chunks; }
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
  // The 16 lanes' values of per-(n, c) numbers `per_nc` for a unit (0 past C).
  void lanes(int64_t unit, const float* per_nc, float* out) const {
    if (layout == Layout::blocked16) {
      const int64_t n = unit / blocks, first = unit % blocks * kLanes;
      for (int l = 0; l < kLanes; ++l) out[l] = first + l < c ? per_nc[n * c + first + l] : 0.0f;
    } else {
      std::fill(out, out + kLanes, per_nc[unit]);
    }
  }
  // Adds an item's 16 lane sums into per-(n, c) sums.
  void gather(int64_t unit, const double* lane_sums, double* per_nc) const {
    if (layout == Layout::blocked16) {
      const int64_t n = unit / blocks, first = unit % blocks * kLanes;
      for (int l = 0; l < kLanes && first + l < c; ++l) per_nc[n * c + first + l] += lane_sums[l];
    } else {
      double total = 0;
      for (int l = 0; l < kLanes; ++l) total += lane_sums[l];
      per_nc[unit] += total;
    }
  }
};

// Per-item lane sums ([items][sums][16]) gathered into per-(n, c) sums
// ([sums][N*C]) in item order.
std::vector<double> gather_sums(const Split& split, const std::vector<double>& partial, int sums, int64_t nc) {
  std::vector<double> per_nc(static_cast<size_t>(sums * nc), 0.0);
  for (int64_t item = 0; item < split.items(); ++item) {
    for (int k = 0; k < sums; ++k)
      split.gather(item / split.chunks, &partial[static_cast<size_t>((item * sums + k) * kLanes)],
                   &per_nc[static_cast<size_t>(k * nc)]);
  }
  return per_nc;
}

float shift_at(const float* shift, int64_t i) { return shift ? shift[i] : 0.0f; }

// y = a x + b per (n, c), from the group statistics as stored (forward and
// backward compute them alike): a = gamma r, b = beta + (t - m) a.
struct Coefficients {
  std::vector<float> a, b;
  Coefficients(const Shape& s, const float* gamma, const float* beta, const float* shift, const float* mean,
               const float* rstd)
      : a(static_cast<size_t>(s.n * s.c)), b(static_cast<size_t>(s.n * s.c)) {
    const int64_t cg = s.c / s.groups;
    for (int64_t n = 0; n < s.n; ++n) {
      for (int64_t c = 0; c < s.c; ++c) {
        const int64_t i = n * s.c + c, g = n * s.groups + c / cg;
        const double ai = static_cast<double>(gamma[c]) * rstd[g];
        a[static_cast<size_t>(i)] = static_cast<float>(ai);
        b[static_cast<size_t>(i)] = static_cast<float>(static_cast<double>(beta[c]) + (shift_at(shift, i) - mean[g]) * ai);
      }
    }
  }
  // A unit's 16 lanes of a and of b.
  void lanes(const Split& split, int64_t unit, float* a_lanes, float* b_lanes) const {
    split.lanes(unit, a.data(), a_lanes);
    split.lanes(unit, b.data(), b_lanes);
  }
};

}  // namespace

bool set_bf16_instructions(bool allowed) {
  bf16_instructions_allowed = allowed;
#ifdef DIFFUFLOW_VECTOR16_CLONES
  return allowed && bf16_instructions();
#else
  return false;
#endif
}

void forward(const Forward& f) {
  const Shape& s = f.shape;
  const Split split(s);
  const int64_t nc = s.n * s.c, cg = s.c / s.groups;
  const bool bf16 = f.type == DataType::bf16;
  const Bf16Spans& spans = bf16_spans();

  // 1. Per-(n, c) sums of x and x^2, one read.
  std::vector<double> partial(static_cast<size_t>(split.items() * 2 * kLanes), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < split.items(); ++i) {
    const Split::Item it = split.item(i);
    double* sums = &partial[static_cast<size_t>(i * 2 * kLanes)];
    if (bf16)
      spans.stats(static_cast<const uint16_t*>(f.x) + it.at, it.count, sums, sums + kLanes);
    else
      stats_f32(static_cast<const float*>(f.x) + it.at, it.count, sums, sums + kLanes);
  }
  const std::vector<double> sums = gather_sums(split, partial, 2, nc);

  // 2. Group statistics of u = x + t (stored as backward will read them),
  // and from them y = a x + b's coefficients.
  const double count = static_cast<double>(cg * s.spatial), hw = static_cast<double>(s.spatial);
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t g = 0; g < s.groups; ++g) {
      double su = 0, squ = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const int64_t i = n * s.c + c;
        const double t = shift_at(f.shift, i), sx = sums[static_cast<size_t>(i)],
                     sxx = sums[static_cast<size_t>(nc + i)];
        su += sx + hw * t;
        squ += sxx + 2.0 * t * sx + hw * t * t;
      }
      const double m = su / count, var = std::max(0.0, squ / count - m * m);
      f.mean[n * s.groups + g] = static_cast<float>(m);
      f.rstd[n * s.groups + g] = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(f.eps)));
    }
  }
  const Coefficients k(s, f.gamma, f.beta, f.shift, f.mean, f.rstd);

  // 3. y = act(a x + b), one read and one write.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < split.items(); ++i) {
    const Split::Item it = split.item(i);
    float la[kLanes], lb[kLanes];
    k.lanes(split, it.unit, la, lb);
    if (bf16)
      spans.apply(static_cast<const uint16_t*>(f.x) + it.at, static_cast<uint16_t*>(f.y) + it.at, it.count, la, lb,
                 f.silu);
    else
      apply_f32(static_cast<const float*>(f.x) + it.at, static_cast<float*>(f.y) + it.at, it.count, la, lb, f.silu);
  }
}

void backward(const Backward& bw) {
  const Shape& s = bw.shape;
  const Split split(s);
  const int64_t nc = s.n * s.c, cg = s.c / s.groups;
  const bool bf16 = bw.type == DataType::bf16;
  const Bf16Spans& spans = bf16_spans();

  const Coefficients k(s, bw.gamma, bw.beta, bw.shift, bw.mean, bw.rstd);  // the forward's y = a x + b

  // 1. Per-(n, c) sums of dy, x and dy x, one read of x and dz (with SiLU,
  // dy written over dz).
  std::vector<double> partial(static_cast<size_t>(split.items() * 3 * kLanes), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < split.items(); ++i) {
    const Split::Item it = split.item(i);
    float la[kLanes], lb[kLanes];
    k.lanes(split, it.unit, la, lb);
    double* sums = &partial[static_cast<size_t>(i * 3 * kLanes)];
    if (bf16)
      spans.grad_sums(static_cast<const uint16_t*>(bw.x) + it.at, bw.dz + it.at, it.count, la, lb, bw.silu, sums,
                     sums + kLanes, sums + 2 * kLanes);
    else
      grad_sums_f32(static_cast<const float*>(bw.x) + it.at, bw.dz + it.at, it.count, la, lb, bw.silu, sums,
                    sums + kLanes, sums + 2 * kLanes);
  }
  const std::vector<double> sums = gather_sums(split, partial, 3, nc);
  const double* s1 = sums.data();
  const double* sx = s1 + nc;
  const double* sdx = sx + nc;

  // 2. Per group A and B; per (n, c) dx = alpha dy + beta x + delta; the
  // parameter and shift gradients.
  std::vector<float> alpha(static_cast<size_t>(nc)), beta(static_cast<size_t>(nc)), delta(static_cast<size_t>(nc));
  std::vector<double> dgamma(static_cast<size_t>(s.c), 0.0), dbeta(static_cast<size_t>(s.c), 0.0);
  const double count = static_cast<double>(cg * s.spatial), hw = static_cast<double>(s.spatial);
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t g = 0; g < s.groups; ++g) {
      const double m = bw.mean[n * s.groups + g], r = bw.rstd[n * s.groups + g];
      double sum_a = 0, sum_b = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const int64_t i = n * s.c + c;
        const double gamma = bw.gamma[c], xhat_dy = r * (sdx[i] + (shift_at(bw.shift, i) - m) * s1[i]);
        sum_a += gamma * s1[i];
        sum_b += gamma * xhat_dy;
        dgamma[static_cast<size_t>(c)] += xhat_dy;
        dbeta[static_cast<size_t>(c)] += s1[i];
      }
      const double big_a = sum_a / count, big_b = sum_b / count;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const int64_t i = n * s.c + c;
        const double al = r * bw.gamma[c], be = -r * r * big_b,
                     de = -r * big_a - r * r * big_b * (shift_at(bw.shift, i) - m);
        alpha[static_cast<size_t>(i)] = static_cast<float>(al);
        beta[static_cast<size_t>(i)] = static_cast<float>(be);
        delta[static_cast<size_t>(i)] = static_cast<float>(de);
        if (bw.dshift) {
          const float d = static_cast<float>(al * s1[i] + be * sx[i] + hw * de);
          bw.dshift[i] = bw.dshift_add ? bw.dshift[i] + d : d;
        }
      }
    }
  }
  for (int64_t c = 0; c < s.c; ++c) {
    bw.dgamma[c] = static_cast<float>(dgamma[static_cast<size_t>(c)]);
    bw.dbeta[c] = static_cast<float>(dbeta[static_cast<size_t>(c)]);
  }
  if (!bw.dx) return;

  // 3. dx, one read of x and dy (dz without SiLU, else what step 1 wrote
  // over it) and one write (or add) of dx.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < split.items(); ++i) {
    const Split::Item it = split.item(i);
    float lal[kLanes], lbe[kLanes], lde[kLanes];
    split.lanes(it.unit, alpha.data(), lal);
    split.lanes(it.unit, beta.data(), lbe);
    split.lanes(it.unit, delta.data(), lde);
    if (bf16)
      spans.grad_apply(static_cast<const uint16_t*>(bw.x) + it.at, bw.dz + it.at, bw.dx + it.at, it.count, lal,
                              lbe, lde, bw.dx_add);
    else
      grad_apply_f32(static_cast<const float*>(bw.x) + it.at, bw.dz + it.at, bw.dx + it.at, it.count, lal, lbe, lde,
                     bw.dx_add);
  }
}

}  // namespace diffuflow::group_norm_kernel
