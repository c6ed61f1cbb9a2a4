// GroupNorm, and GroupNorm followed by SiLU, as fused CPU kernels: the
// statistics in one read of x, the normalisation (and activation) in one
// read of x and one write of y; backward in two reads of x and of the
// output's gradient and one write (or add) of x's (with SiLU, the first read
// writes the gradient before the SiLU, for the second). Where a sample fits
// in a core's L2 cache each thread runs both reads over one sample at a
// time, so the second finds it in the cache (Schedule, below).
// oneDNN 2.6 has no group normalisation, and building one from its
// primitives costs four reads and two writes of the image forward and eight
// reads and three writes backward (docs/performance.md, "GroupNorm as one
// fused kernel").
//
//   Shape s{n, c, h * w, groups, Layout::blocked16};
//   group_norm_kernel::Forward f{s, eps, /*silu=*/true, DataType::f32, x, y, gamma, beta,
//                                /*shift=*/nullptr, mean, rstd};
//   group_norm_kernel::forward(f);   // y = silu(gamma (x - m) r + beta), per group
//
// Equations, per sample n and group g of cg channels, M = cg * spatial
// elements, u = x + t[n, c] (t: an optional per-(sample, channel) shift,
// 0 without one):
//   m = mean(u), v = mean(u^2) - m^2, r = 1 / sqrt(v + eps),
//   y = gamma_c (u - m) r + beta_c, z = y sigmoid(y) (with SiLU);
//   dy = dz (s + y s (1 - s)), s = sigmoid(y) (with SiLU; else dy = dz),
//   dx = r gamma_c dy - r A - r^2 B (u - m),
//     A = mean over the group of gamma_c dy, B = mean over it of gamma_c dy (u - m) r,
//   d gamma_c = sum over n, positions of dy (u - m) r, d beta_c = sum of dy,
//   d t[n, c] = sum over positions of dx.
// Sums accumulate in double, so the one-pass variance loses nothing to
// cancellation at the sizes of images.
//
// Threads: OpenMP, the team oneDNN's primitives use on the calling thread.
#pragma once

#include <cstdint>

namespace diffuflow::group_norm_kernel {

// plain: [N, C, spatial] contiguous. blocked16: [N, ceil(C/16), spatial, 16]
// (oneDNN's nChw16c), channels past C being padding that is written as 0.
// channels_last16: [N, spatial, C] (oneDNN's nhwc), C a multiple of 16. The
// two 16-channel layouts give the same results to the bit.
enum class Layout { plain, blocked16, channels_last16 };
enum class DataType { f32, bf16 };

// With two sources (Forward::x2), x holds the first c_first channels and x2
// the other c - c_first, each in the layout with its own channel count (in
// blocked16, c_first a multiple of 16; in channels_last16 both): the norm of
// their concatenation, which is never written. 0: one source.
struct Shape {
  int64_t n = 0, c = 0, spatial = 0, groups = 0;
  Layout layout = Layout::plain;
  int64_t c_first = 0;
};

struct Forward {
  Shape shape;
  float eps = 1e-5f;
  bool silu = false;
  DataType type = DataType::f32;  // of x and y
  const void* x = nullptr;
  const void* x2 = nullptr;      // the second source (Shape::c_first), or null
  void* y = nullptr;             // all C channels
  const float* gamma = nullptr;  // [C]
  const float* beta = nullptr;   // [C]
  const float* shift = nullptr;  // [N, C] plain, or null
  float* mean = nullptr;         // [N * groups] written: m, in the frame of x + t
  float* rstd = nullptr;         // [N * groups] written: r
};
// Throws std::invalid_argument for a shape its layout cannot hold (channels
// not whole blocks of 16 where the layout needs them, groups not dividing C).
void forward(const Forward& f);

// x of either type (the forward's); the gradients are f32.
struct Backward {
  Shape shape;
  bool silu = false;
  DataType type = DataType::f32;  // of x
  const void* x = nullptr;       // the forward's input
  const void* x2 = nullptr;      // and its second source, or null
  float* dz = nullptr;           // the gradient of the forward's output; with SiLU,
                                 // may be overwritten by the gradient before it (dy)
  const float* gamma = nullptr;  // [C]
  const float* beta = nullptr;   // [C]
  const float* shift = nullptr;  // [N, C] or null
  const float* mean = nullptr;   // [N * groups], as forward wrote them
  const float* rstd = nullptr;
  float* dx = nullptr;           // null: not wanted
  bool dx_add = false;           // dx += the gradient, else dx = it
  float* dx2 = nullptr;          // the second source's gradient (null: not wanted)
  bool dx2_add = false;
  float* dgamma = nullptr;       // [C], overwritten
  float* dbeta = nullptr;        // [C], overwritten
  float* dshift = nullptr;       // [N, C] plain, or null
  bool dshift_add = false;
};
void backward(const Backward& b);

// How the two passes over the data run. whole_tensor: each over the whole
// tensor in turn, all its parts in parallel. per_sample: the samples in
// parallel, both passes over one sample before the next. by_size (the
// default): per_sample when there are at least as many samples as OpenMP
// threads and what the second pass rereads of a sample (x; backward also the
// gradients) fits in half the L2 cache, else whole_tensor. The results are the
// same to the bit under each. Returns the setting it replaces (for tests and
// benchmarks).
enum class Schedule { by_size, whole_tensor, per_sample };
Schedule set_schedule(Schedule schedule);
// Whether a forward (or backward) call on this shape runs per sample under
// the current setting, at the calling thread's OpenMP thread count.
bool picks_per_sample(const Shape& shape, DataType type, bool backward, bool silu);

// bf16 data is converted with the CPU's AVX512-BF16 instructions where it has
// them (GCC builds without sanitizers), else with integer arithmetic that
// rounds the same way. Tests turn the instructions off to compare the two;
// returns whether they are in use.
bool set_bf16_instructions(bool allowed);

}  // namespace diffuflow::group_norm_kernel
