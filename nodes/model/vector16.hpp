// 16-lane float vectors for the native kernels (GCC's portable vector
// types: one AVX-512 register, two AVX2 ones, four SSE ones), the loads and
// stores of f32 and bf16 data, a lane sum, and a vectorisable exponential and
// sigmoid.
// Internal to the kernel files of nodes/model.
#pragma once

#include <cstdint>
#include <cstring>
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#include <immintrin.h>
#endif

namespace diffuflow::vector16 {

// Entry points that loop over these vectors are compiled for AVX-512, for
// AVX2 and for the baseline, and the CPU picks one when the program loads;
// what they call is inlined into each.
// Not under AddressSanitizer: its fake stack frames (use-after-return
// detection) are aligned to 32 bytes, and the AVX-512 clone aligns local
// arrays to 64.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define DIFFUFLOW_VECTOR16_CLONES 1
#define DIFFUFLOW_SPAN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DIFFUFLOW_SPAN_CLONES
#endif
#define DIFFUFLOW_INLINE inline __attribute__((always_inline))

constexpr int kLanes = 16;
// Aligned as their 16-byte parts: no local needs more than the baseline's
// alignment, and loads and stores are unaligned ones (as fast on aligned data).
typedef float vf __attribute__((vector_size(64), aligned(16)));     // 16 lanes
typedef float half_vf __attribute__((vector_size(32), aligned(16)));
typedef double vd __attribute__((vector_size(64), aligned(16)));    // 8 lanes
typedef int32_t vi __attribute__((vector_size(64), aligned(16)));
typedef uint32_t vu __attribute__((vector_size(64), aligned(16)));
typedef uint16_t vh __attribute__((vector_size(32), aligned(16)));  // 16 bf16

// (Lane 0 broadcast, not vf{} + v: without fast-math the compiler must keep
// the scalar 0 + v, for the sign of zero, before it broadcasts.)
DIFFUFLOW_INLINE vf splat(float v) {
  const vf first{v};
  return __builtin_shufflevector(first, first, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
}
DIFFUFLOW_INLINE vf load16(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
DIFFUFLOW_INLINE vf load16(const uint16_t* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  const vu bits = __builtin_convertvector(h, vu) << 16;
  vf v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
DIFFUFLOW_INLINE void store16(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
// Rounded to nearest even, as oneDNN converts; a NaN stays a (quiet) NaN.
DIFFUFLOW_INLINE void store16(uint16_t* p, vf v) {
  vu bits;
  std::memcpy(&bits, &v, sizeof bits);
  const vu rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const vu quiet = (bits >> 16) | 0x40u;
  const vu nan = reinterpret_cast<vu>((bits & 0x7fffffffu) > 0x7f800000u);  // all ones where NaN
  const vu out = (quiet & nan) | (rounded & ~nan);
  const vh h = __builtin_convertvector(out, vh);
  std::memcpy(p, &h, sizeof h);
}
#ifdef DIFFUFLOW_VECTOR16_CLONES
// bf16 data converted by AVX512-BF16's instruction (rounding to nearest even,
// NaN kept, as store16 above) rather than integer arithmetic: a bf16 span
// reads and writes these where bf16_instructions() says the CPU has them,
// from an entry point declared DIFFUFLOW_BF16_ENTRY, whose `flatten` inlines
// these ISA-specific loads and stores into it (an always_inline function of
// the baseline ISA could not take them).
// (ISA features added to the file's, not an arch=: with -march=native or the
// like, a function of another arch may not inline the file's functions.)
#define DIFFUFLOW_BF16_TARGET \
  target("avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,avx512f,avx512cd,avx512bw,avx512dq,avx512vl,avx512bf16")
#define DIFFUFLOW_BF16_ENTRY __attribute__((DIFFUFLOW_BF16_TARGET, flatten))
struct bf16_bits {
  uint16_t bits;
};
__attribute__((DIFFUFLOW_BF16_TARGET)) inline vf load16(const bf16_bits* p) {
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  vu bits;
  std::memcpy(&bits, &wide, sizeof bits);
  bits <<= 16;
  vf v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
__attribute__((DIFFUFLOW_BF16_TARGET)) inline void store16(bf16_bits* p, vf v) {
  __m512 m;
  std::memcpy(&m, &v, sizeof m);
  const __m256bh h = _mm512_cvtneps_pbh(m);
  std::memcpy(p, &h, sizeof h);
}
inline bool bf16_instructions() {
  static const bool present = __builtin_cpu_supports("avx512bf16");
  return present;
}
#endif

// The sum of the 16 lanes, halving the vector (a tree, so that reductions
// in flight overlap).
typedef float quarter_vf __attribute__((vector_size(16)));
DIFFUFLOW_INLINE float sum_lanes(vf v) {
  half_vf a, b;
  std::memcpy(&a, &v, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
  a += b;
  quarter_vf c, d;
  std::memcpy(&c, &a, sizeof c);
  std::memcpy(&d, reinterpret_cast<const char*>(&a) + sizeof c, sizeof d);
  c += d;
  return (c[0] + c[2]) + (c[1] + c[3]);
}

// e^x for x in [-87, 88] (clamped there), within about 2 ulp: 2^k times a
// degree-7 Taylor polynomial in r = x - k ln2, |r| <= ln2 / 2.
DIFFUFLOW_INLINE vf exp_approx(vf x) {
  const vf lo = splat(-87.0f), hi = splat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  const vf r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
  vf p = splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi exponent = (__builtin_convertvector(k, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &exponent, sizeof scale);
  return p * scale;
}

DIFFUFLOW_INLINE vf sigmoid(vf v) { return 1.0f / (1.0f + exp_approx(-v)); }

}  // namespace diffuflow::vector16
