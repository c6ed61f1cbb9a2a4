#include "compute/group_norm_kernel.hpp"

#include <omp.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// The per-piece functions are compiled for AVX-512, AVX2 (both with FMA) and
// the baseline, the best one picked when the program loads (the rest of the
// build targets the baseline; oneDNN picks its own kernels at run time). The
// file is compiled without implicit FMA contraction: every fused multiply-add
// is an explicit std::fma, so vector loops and their scalar remainders, and
// every ISA, round alike and a result never depends on alignment or CPU.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define DIFFUFLOW_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DIFFUFLOW_ISA_CLONES
#endif
#define DIFFUFLOW_INLINE inline __attribute__((always_inline))
#define DIFFUFLOW_LAMBDA_INLINE __attribute__((always_inline))

namespace diffuflow {

namespace {

// e^x to about 2 ulp for |x| <= 87, in arithmetic the compiler vectorises:
// x = k ln2 + r with |r| <= ln2/2, e^r by its degree-7 polynomial, 2^k in
// the exponent bits.
DIFFUFLOW_INLINE float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 87.0f);
  const float t = x * 1.44269504088896341f;
  const int k = static_cast<int>(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float kf = static_cast<float>(k);
  const float r = std::fma(kf, 2.12194440e-4f, std::fma(kf, -0.693359375f, x));
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r + 1.0f);
  const int32_t bits = (k + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <NormActivation A>
DIFFUFLOW_INLINE float activate(float v) {
  if constexpr (A == NormActivation::silu) return v / (1.0f + exp_approx(-v));
  if constexpr (A == NormActivation::relu) return v > 0.0f ? v : 0.0f;
  return v;
}

// d act(v) / dv times dz.
template <NormActivation A>
DIFFUFLOW_INLINE float activate_grad(float v, float dz) {
  if constexpr (A == NormActivation::silu) {
    const float s = 1.0f / (1.0f + exp_approx(-v));
    return dz * std::fma(v * s, 1.0f - s, s);
  }
  if constexpr (A == NormActivation::relu) return v > 0.0f ? dz : 0.0f;
  return dz;
}

// Runs of S positions with L lanes each (lane = channel within its block);
// B > 0 fixes L at compile time.

// sum[l] = sum over s of x, sq[l] = sum of x^2 (double accumulators).
template <int B>
DIFFUFLOW_INLINE void run_sums(const float* x, int64_t S, int64_t lanes, double* sum, double* sq) {
  const int64_t L = B > 0 ? B : lanes;
  if (L == 1) {
    // One channel's S contiguous values, summed as 16 interleaved partial
    // sums added up in order: the same order whatever the alignment.
    double s[16] = {}, q[16] = {};
    const int64_t full = S / 16 * 16;
    for (int64_t i = 0; i < full; i += 16) {
#pragma omp simd
      for (int l = 0; l < 16; ++l) {
        const double v = x[i + l];
        s[l] += v;
        q[l] += v * v;
      }
    }
    for (int64_t i = full; i < S; ++i) {
      const double v = x[i];
      s[i - full] += v;
      q[i - full] += v * v;
    }
    sum[0] = sq[0] = 0;
    for (int l = 0; l < 16; ++l) {
      sum[0] += s[l];
      sq[0] += q[l];
    }
    return;
  }
  if constexpr (B > 0) {
    // The accumulators in local arrays, which the compiler keeps in
    // registers: twice as fast as through the pointers below (measured).
    double s[B] = {}, q[B] = {};
    for (int64_t i = 0; i < S; ++i) {
#pragma omp simd
      for (int l = 0; l < B; ++l) {
        const double v = x[i * B + l];
        s[l] += v;
        q[l] += v * v;
      }
    }
    std::copy(s, s + B, sum);
    std::copy(q, q + B, sq);
    return;
  }
  std::fill(sum, sum + L, 0.0);
  std::fill(sq, sq + L, 0.0);
  for (int64_t i = 0; i < S; ++i) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      const double v = x[i * L + l];
      sum[l] += v;
      sq[l] += v * v;
    }
  }
}

// y = act(x * a[l] + b[l]).
template <int B, NormActivation A>
DIFFUFLOW_INLINE void run_apply(const float* x, float* y, int64_t S, int64_t lanes, const float* a, const float* b) {
  const int64_t L = B > 0 ? B : lanes;
  if (L == 1) {
    const float a0 = a[0], b0 = b[0];
#pragma omp simd
    for (int64_t i = 0; i < S; ++i) y[i] = activate<A>(std::fma(x[i], a0, b0));
    return;
  }
  for (int64_t i = 0; i < S; ++i) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) y[i * L + l] = activate<A>(std::fma(x[i * L + l], a[l], b[l]));
  }
}

// f32 -> bf16, rounded to nearest even (NaN stays NaN), as oneDNN's reorder does.
DIFFUFLOW_INLINE uint16_t to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(v != v ? (u >> 16) | 0x40u : rounded);
}

// n floats to bf16: with the CPU's own instruction where it has one
// (AVX512-BF16, the CPUs a bf16 convolution runs on; it rounds to nearest
// even and reads denormals as zero, as oneDNN's conversion does there), else
// with to_bf16.
#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx512f,avx512bf16"))) void to_bf16_native(const float* v, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(v + i)));
  }
  if (i < n) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - i)) - 1u);
    alignas(32) uint16_t rest[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(rest), (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(tail, v + i)));
    std::copy(rest, rest + (n - i), y + i);
  }
}
#endif

void to_bf16_portable(const float* v, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = to_bf16(v[i]);
}

using Bf16Convert = void (*)(const float*, uint16_t*, int64_t);

Bf16Convert bf16_converter() {
#if defined(__GNUC__) && defined(__x86_64__)
  if (__builtin_cpu_supports("avx512bf16")) return to_bf16_native;
#endif
  return to_bf16_portable;
}

// A piece's `blocks` blocks of 16 channels (block k at x + k * 16 * S) into
// y channels-last, position by position: y[i * stride + k * 16 + l] =
// bf16(act(x * a + b)), so each position's channels are written in one run.
// The values are computed in a full-width f32 loop, then rounded.
template <NormActivation A>
DIFFUFLOW_INLINE void run_apply_bf16(const float* x, uint16_t* y, int64_t stride, int64_t blocks, int64_t S,
                                     const float* a, const float* b) {
  constexpr int L = 16;
  for (int64_t i = 0; i < S; ++i) {
    for (int64_t k = 0; k < blocks; ++k) {
      const float* xk = x + k * L * S + i * L;
      const float* ak = a + k * L;
      const float* bk = b + k * L;
      alignas(64) float v[L];
#pragma omp simd
      for (int l = 0; l < L; ++l) v[l] = activate<A>(std::fma(xk[l], ak[l], bk[l]));
      uint16_t* yk = y + i * stride + k * L;
#pragma omp simd
      for (int l = 0; l < L; ++l) yk[l] = to_bf16(v[l]);
    }
  }
}

// The gradient at the norm's output, g = dz act'(x a + b) (stored in `g`
// when there is an activation), and its sums: s1[l] = sum g and
// sc[l] = sum g (x - m[l]), m the channel's mean (which keeps the second
// free of cancellation).
template <int B, NormActivation A>
DIFFUFLOW_INLINE void run_grad_sums(const float* x, const float* dz, float* g, int64_t S, int64_t lanes,
                                    const float* a, const float* b, const float* m, double* s1, double* sc) {
  const int64_t L = B > 0 ? B : lanes;
  std::fill(s1, s1 + L, 0.0);
  std::fill(sc, sc + L, 0.0);
  // g at element `at` of lane l.
  auto grad_at = [&](int64_t at, int64_t l) DIFFUFLOW_LAMBDA_INLINE {
    float d = dz[at];
    if constexpr (A != NormActivation::none) {
      d = activate_grad<A>(std::fma(x[at], a[l], b[l]), d);
      g[at] = d;
    }
    return d;
  };
  if (L == 1) {
    // 16 interleaved partial sums, as in run_sums.
    double s[16] = {}, t[16] = {};
    for (int64_t i0 = 0; i0 < S; i0 += 16) {
      const int64_t n = std::min<int64_t>(16, S - i0);
#pragma omp simd
      for (int64_t l = 0; l < n; ++l) {
        const float d = grad_at(i0 + l, 0);
        s[l] += static_cast<double>(d);
        t[l] += static_cast<double>(d) * (x[i0 + l] - m[0]);
      }
    }
    for (int l = 0; l < 16; ++l) {
      s1[0] += s[l];
      sc[0] += t[l];
    }
    return;
  }
  for (int64_t i = 0; i < S; ++i) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      const float d = grad_at(i * L + l, l);
      s1[l] += static_cast<double>(d);
      sc[l] += static_cast<double>(d) * (x[i * L + l] - m[l]);
    }
  }
}

// dx (+)= g * ca[l] + x * cb[l] + cc[l]; with Sum, dsum[l] += the same.
template <int B, bool Sum>
DIFFUFLOW_INLINE void run_dx(const float* x, const float* g, float* dx, bool add, int64_t S, int64_t lanes,
                             const float* ca, const float* cb, const float* cc, double* dsum) {
  const int64_t L = B > 0 ? B : lanes;
  if (L == 1) {
    // 16 interleaved partial sums, as in run_sums.
    const float a0 = ca[0], b0 = cb[0], c0 = cc[0];
    double s[16] = {};
    for (int64_t i0 = 0; i0 < S; i0 += 16) {
      const int64_t n = std::min<int64_t>(16, S - i0);
#pragma omp simd
      for (int64_t l = 0; l < n; ++l) {
        const int64_t i = i0 + l;
        const float v = std::fma(g[i], a0, std::fma(x[i], b0, c0));
        dx[i] = add ? dx[i] + v : v;
        if constexpr (Sum) s[l] += v;
      }
    }
    if constexpr (Sum) {
      for (int l = 0; l < 16; ++l) dsum[0] += s[l];
    }
    return;
  }
  for (int64_t i = 0; i < S; ++i) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      const int64_t at = i * L + l;
      const float v = std::fma(g[at], ca[l], std::fma(x[at], cb[l], cc[l]));
      dx[at] = add ? dx[at] + v : v;
      if constexpr (Sum) dsum[l] += v;
    }
  }
}

// A piece: the channels [c0, c0 + width) of sample n, whole groups in whole
// blocks; `width` is lcm(channels per group, lanes).
struct Plan {
  int64_t width = 0, per_sample = 0, per_group = 0, lanes = 0;
  explicit Plan(const GroupNormGeometry& g)
      : per_group(g.channels / g.groups), lanes(std::min(g.block, g.channels)) {
    // A channels-last bf16 output is written a whole sample at a time, each
    // position's channels in one run.
    width = g.out == NormOutput::bf16_nhwc ? g.channels : std::lcm(per_group, lanes);
    per_sample = g.channels / width;
  }
  int64_t pieces(const GroupNormGeometry& g) const { return g.batch * per_sample; }
};

// Where block k of the piece (n, c0) starts: a block holds `lanes` channels
// at each of the S positions.
DIFFUFLOW_INLINE int64_t block_offset(const GroupNormGeometry& g, const Plan& plan, int64_t n, int64_t c0,
                                      int64_t k) {
  return n * g.channels * g.spatial + (c0 / plan.lanes + k) * plan.lanes * g.spatial;
}

// y = x * a + b with a, b from the statistics: the forward and the backward's
// recomputation of y take them from here, so they agree to the bit.
DIFFUFLOW_INLINE void affine_of(float gamma, float beta, float mean, float rstd, float& a, float& b) {
  a = gamma * rstd;
  b = std::fma(-mean, a, beta);
}

// Per-thread scratch of the piece functions.
struct PieceScratch {
  std::vector<double> acc;  // 4 x width
  std::vector<float> coef;  // 5 x width
  std::vector<float> grad;  // width x S: the norm's output gradient (with an activation)
  std::vector<float> dx;    // width x S: dx when only d shift is wanted
  std::vector<float> out;   // lanes x S: one block's f32 output before its bf16 conversion
  PieceScratch(const Plan& plan, int64_t spatial, bool backward)
      : acc(4 * static_cast<size_t>(plan.width)), coef(5 * static_cast<size_t>(plan.width)) {
    if (backward) grad.resize(static_cast<size_t>(plan.width * spatial));
  }
};

struct ForwardArgs {
  const float *x, *shift, *gamma, *beta;
  void* y;
  float *mean, *rstd;
  Bf16Convert convert;
};

template <int B, NormActivation A>
DIFFUFLOW_INLINE void forward_piece_t(const GroupNormGeometry& g, const Plan& plan, int64_t piece,
                                      const ForwardArgs& f, PieceScratch& scratch) {
  const int64_t n = piece / plan.per_sample, c0 = (piece % plan.per_sample) * plan.width;
  const int64_t S = g.spatial, L = plan.lanes, blocks = plan.width / L, cg = plan.per_group;
  double* sum = scratch.acc.data();
  double* sq = sum + plan.width;
  float* a = scratch.coef.data();
  float* b = a + plan.width;
  for (int64_t k = 0; k < blocks; ++k) run_sums<B>(f.x + block_offset(g, plan, n, c0, k), S, L, sum + k * L, sq + k * L);
  const double count = static_cast<double>(cg * S);
  for (int64_t j = 0; j < plan.width; j += cg) {
    double s = 0, q = 0;
    for (int64_t c = j; c < j + cg; ++c) {
      const double t = f.shift ? f.shift[n * g.channels + c0 + c] : 0.0;
      s += sum[c] + static_cast<double>(S) * t;
      q += sq[c] + 2.0 * t * sum[c] + static_cast<double>(S) * t * t;
    }
    const double mu = s / count;
    const double var = std::max(q / count - mu * mu, 0.0);
    const float r = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(g.eps)));
    for (int64_t c = j; c < j + cg; ++c) {
      const int64_t nc = n * g.channels + c0 + c;
      const float m = static_cast<float>(mu - (f.shift ? f.shift[nc] : 0.0));
      if (f.mean) {
        f.mean[nc] = m;
        f.rstd[nc] = r;
      }
      affine_of(f.gamma[c0 + c], f.beta[c0 + c], m, r, a[c], b[c]);
    }
  }
  if (g.out == NormOutput::bf16_nhwc) {
    uint16_t* y = static_cast<uint16_t*>(f.y) + n * S * g.channels + c0;
    run_apply_bf16<A>(f.x + block_offset(g, plan, n, c0, 0), y, g.channels, blocks, S, a, b);
    return;
  }
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t at = block_offset(g, plan, n, c0, k);
    if (g.out == NormOutput::bf16) {
      // f32 into the thread's scratch (still in cache), then one conversion
      // of the block, which is contiguous in both layouts.
      run_apply<B, A>(f.x + at, scratch.out.data(), S, L, a + k * L, b + k * L);
      f.convert(scratch.out.data(), static_cast<uint16_t*>(f.y) + at, L * S);
    } else {
      run_apply<B, A>(f.x + at, static_cast<float*>(f.y) + at, S, L, a + k * L, b + k * L);
    }
  }
}

struct BackwardArgs {
  const float *x, *dz, *gamma, *beta, *mean, *rstd;
  float* dx;
  bool dx_add;
  float* dshift;
  bool dshift_add;
  float* work;  // [2, N*C]: per (n, c) sum g and sum g xhat
};

template <int B, NormActivation A>
DIFFUFLOW_INLINE void backward_piece_t(const GroupNormGeometry& g, const Plan& plan, int64_t piece,
                                       const BackwardArgs& f, PieceScratch& scratch) {
  const int64_t n = piece / plan.per_sample, c0 = (piece % plan.per_sample) * plan.width;
  const int64_t S = g.spatial, L = plan.lanes, blocks = plan.width / L, cg = plan.per_group;
  const int64_t nc0 = n * g.channels + c0;
  double* s1 = scratch.acc.data();
  double* sc = s1 + plan.width;
  double* dsum = sc + plan.width;
  float* a = scratch.coef.data();
  float* b = a + plan.width;
  float* ca = b + plan.width;
  float* cb = ca + plan.width;
  float* cc = cb + plan.width;
  for (int64_t c = 0; c < plan.width; ++c) affine_of(f.gamma[c0 + c], f.beta[c0 + c], f.mean[nc0 + c], f.rstd[nc0 + c], a[c], b[c]);
  // The output gradient of block k: dz itself, or dz act'(y) kept in scratch.
  auto grad_of = [&](int64_t k) -> const float* {
    if constexpr (A == NormActivation::none) return f.dz + block_offset(g, plan, n, c0, k);
    return scratch.grad.data() + k * L * S;
  };
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t at = block_offset(g, plan, n, c0, k);
    float* g_k = A == NormActivation::none ? nullptr : scratch.grad.data() + k * L * S;
    run_grad_sums<B, A>(f.x + at, f.dz + at, g_k, S, L, a + k * L, b + k * L, f.mean + nc0 + k * L, s1 + k * L,
                        sc + k * L);
  }
  // xhat = (x - mean) rstd, so sum g xhat = rstd sum g (x - mean).
  // dx = rstd (gamma g - k1 / M - xhat k2 / M), k1 = sum over the group of
  // gamma sum g, k2 of gamma sum g xhat, M = channels per group x S.
  const double count = static_cast<double>(cg * S);
  const int64_t nc_all = g.batch * g.channels;
  for (int64_t j = 0; j < plan.width; j += cg) {
    const double r = f.rstd[nc0 + j];
    double k1 = 0, k2 = 0;
    for (int64_t c = j; c < j + cg; ++c) {
      const double s2 = r * sc[c];
      f.work[nc0 + c] = static_cast<float>(s1[c]);
      f.work[nc_all + nc0 + c] = static_cast<float>(s2);
      k1 += static_cast<double>(f.gamma[c0 + c]) * s1[c];
      k2 += static_cast<double>(f.gamma[c0 + c]) * s2;
    }
    const double coef_x = -r * r * k2 / count;
    for (int64_t c = j; c < j + cg; ++c) {
      ca[c] = static_cast<float>(r * f.gamma[c0 + c]);
      cb[c] = static_cast<float>(coef_x);
      cc[c] = static_cast<float>(-r * k1 / count - static_cast<double>(f.mean[nc0 + c]) * coef_x);
    }
  }
  if (!f.dx && !f.dshift) return;
  std::fill(dsum, dsum + plan.width, 0.0);
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t at = block_offset(g, plan, n, c0, k);
    float* dx = f.dx ? f.dx + at : scratch.dx.data() + k * L * S;
    const bool add = f.dx && f.dx_add;
    if (f.dshift) {
      run_dx<B, true>(f.x + at, grad_of(k), dx, add, S, L, ca + k * L, cb + k * L, cc + k * L, dsum + k * L);
    } else {
      run_dx<B, false>(f.x + at, grad_of(k), dx, add, S, L, ca + k * L, cb + k * L, cc + k * L, nullptr);
    }
  }
  if (!f.dshift) return;
  for (int64_t c = 0; c < plan.width; ++c) {
    const float v = static_cast<float>(dsum[c]);
    f.dshift[nc0 + c] = f.dshift_add ? f.dshift[nc0 + c] + v : v;
  }
}

// The instantiations for the common lane counts (16: nChw16c, 1: NCHW) and
// the general one, for each activation; all inlined into the ISA clones below.
template <template <int, NormActivation> class Piece, int B, typename Args>
DIFFUFLOW_INLINE void dispatch_act(const GroupNormGeometry& g, const Plan& plan, int64_t piece, const Args& f,
                                   PieceScratch& scratch) {
  switch (g.act) {
    case NormActivation::none: Piece<B, NormActivation::none>::run(g, plan, piece, f, scratch); return;
    case NormActivation::silu: Piece<B, NormActivation::silu>::run(g, plan, piece, f, scratch); return;
    case NormActivation::relu: Piece<B, NormActivation::relu>::run(g, plan, piece, f, scratch); return;
  }
}

template <template <int, NormActivation> class Piece, typename Args>
DIFFUFLOW_INLINE void dispatch(const GroupNormGeometry& g, const Plan& plan, int64_t piece, const Args& f,
                               PieceScratch& scratch) {
  if (plan.lanes == 16) {
    dispatch_act<Piece, 16>(g, plan, piece, f, scratch);
  } else if (plan.lanes == 1) {
    dispatch_act<Piece, 1>(g, plan, piece, f, scratch);
  } else {
    dispatch_act<Piece, 0>(g, plan, piece, f, scratch);
  }
}

template <int B, NormActivation A>
struct ForwardPiece {
  static DIFFUFLOW_INLINE void run(const GroupNormGeometry& g, const Plan& plan, int64_t piece, const ForwardArgs& f,
                                   PieceScratch& scratch) {
    forward_piece_t<B, A>(g, plan, piece, f, scratch);
  }
};

template <int B, NormActivation A>
struct BackwardPiece {
  static DIFFUFLOW_INLINE void run(const GroupNormGeometry& g, const Plan& plan, int64_t piece, const BackwardArgs& f,
                                   PieceScratch& scratch) {
    backward_piece_t<B, A>(g, plan, piece, f, scratch);
  }
};

}  // namespace

DIFFUFLOW_ISA_CLONES
void group_norm_forward_piece(const GroupNormGeometry& g, const Plan& plan, int64_t piece, const ForwardArgs& f,
                              PieceScratch& scratch) {
  dispatch<ForwardPiece>(g, plan, piece, f, scratch);
}

DIFFUFLOW_ISA_CLONES
void group_norm_backward_piece(const GroupNormGeometry& g, const Plan& plan, int64_t piece, const BackwardArgs& f,
                               PieceScratch& scratch) {
  dispatch<BackwardPiece>(g, plan, piece, f, scratch);
}

bool group_norm_geometry_ok(const GroupNormGeometry& g) {
  if (g.batch < 1 || g.channels < 1 || g.spatial < 1 || g.groups < 1 || g.channels % g.groups != 0) return false;
  if (g.out != NormOutput::f32 && (g.block != 16 || g.channels % 16 != 0)) return false;
  return g.block == 1 || g.block == g.channels || (g.block > 1 && g.channels % g.block == 0);
}

namespace {

void require_geometry(const GroupNormGeometry& g) {
  if (!group_norm_geometry_ok(g)) {
    throw std::invalid_argument("group norm kernel: " + std::to_string(g.channels) + " channels in blocks of " +
                                std::to_string(g.block) + ", " + std::to_string(g.groups) + " groups");
  }
}

}  // namespace

void group_norm_forward(const GroupNormGeometry& g, const float* x, const float* shift, const float* gamma,
                        const float* beta, void* y, float* mean, float* rstd) {
  require_geometry(g);
  const Plan plan(g);
  static const Bf16Convert convert = bf16_converter();
  const ForwardArgs f{x, shift, gamma, beta, y, mean, rstd, convert};
  const int64_t pieces = plan.pieces(g);
#pragma omp parallel
  {
    PieceScratch scratch(plan, g.spatial, false);
    if (g.out == NormOutput::bf16) scratch.out.resize(static_cast<size_t>(plan.lanes * g.spatial));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < pieces; ++i) group_norm_forward_piece(g, plan, i, f, scratch);
  }
}

void group_norm_backward(const GroupNormGeometry& g, const float* x, const float* dz, const float* gamma,
                         const float* beta, const float* mean, const float* rstd, float* dx, bool dx_add,
                         float* dshift, bool dshift_add, float* dgamma, float* dbeta, float* work) {
  require_geometry(g);
  const Plan plan(g);
  const BackwardArgs f{x, dz, gamma, beta, mean, rstd, dx, dx_add, dshift, dshift_add, work};
  const int64_t pieces = plan.pieces(g);
#pragma omp parallel
  {
    PieceScratch scratch(plan, g.spatial, g.act != NormActivation::none);
    if (!dx && dshift) scratch.dx.resize(static_cast<size_t>(plan.width * g.spatial));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < pieces; ++i) group_norm_backward_piece(g, plan, i, f, scratch);
  }
  const int64_t nc = g.batch * g.channels;
  for (int64_t c = 0; c < g.channels; ++c) {
    double s1 = 0, s2 = 0;
    for (int64_t n = 0; n < g.batch; ++n) {
      s1 += work[n * g.channels + c];
      s2 += work[nc + n * g.channels + c];
    }
    dgamma[c] = static_cast<float>(s2);
    dbeta[c] = static_cast<float>(s1);
  }
}

}  // namespace diffuflow
