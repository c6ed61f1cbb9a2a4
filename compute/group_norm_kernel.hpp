// Group normalisation on the host, for CPU engines: statistics, affine and
// activation in one pass over each piece of the tensor that holds whole
// groups, while that piece is still in the core's cache.
//
// oneDNN 2.6 has no group-norm primitive; built from its batch-norm and binary
// primitives a group norm reads its input three times from memory, writes a
// normalised tensor it throws away, and needs a host step in between (the
// GPU path in nodes/model/layers.cpp still does that). Here a piece (one
// sample's channels of whole groups, a few hundred KiB at most for MNIST and
// CIFAR sizes) is read once from memory for its statistics and again from
// cache to write the output; the backward likewise. The OpenMP team of the
// calling thread splits the pieces, the same team oneDNN's primitives use.
//
// Layout: element (n, c, s) of an [N, C, S] f32 tensor (S = H*W) is at
//   n*C*S + (c / block)*block*S + s*block + c % block
// block 1 is plain NCHW, 16 is nChw16c (C a multiple of 16), C is NHWC.
//
// Numbers (all per (n, c), N*C floats, plain [N, C]):
//   forward:  y = act(x' * a + b), x' = x + shift[n,c] (no shift: x),
//             a = gamma[c] * rstd, b = beta[c] - mean * a, where mean is the
//             group mean of x' minus shift[n,c] (so x * a + b is the same
//             thing), rstd = 1 / sqrt(var + eps), var the biased variance;
//   backward: from dz = d loss / d y: dx, d shift (the sums of dx over S),
//             d gamma and d beta [C].
#pragma once

#include <cstdint>

namespace diffuflow {

enum class NormActivation { none, silu, relu };
enum class NormOutput { f32, bf16, bf16_nhwc };

struct GroupNormGeometry {
  int64_t batch = 0, channels = 0, spatial = 0;
  int64_t block = 1;  // 1, 16 or `channels` (see above)
  int64_t groups = 1;
  float eps = 1e-5f;
  NormActivation act = NormActivation::none;
  // The forward's y: f32 in x's layout, or, for the bf16 convolution it
  // feeds and from nChw16c inputs only (block 16), bf16 rounded to nearest
  // even in x's layout or channels-last ([N, S, C]). In x's layout the
  // rounding is the CPU's AVX512-BF16 instruction where it has one, which
  // reads denormals as zero, as oneDNN's own conversion does there.
  NormOutput out = NormOutput::f32;
};

// Whether the kernels take the geometry (block 1, C, or one dividing C; the
// groups dividing C). std::invalid_argument otherwise, from the functions below.
bool group_norm_geometry_ok(const GroupNormGeometry& g);

// Forward. shift [N*C] or null; mean, rstd [N*C] written when not null (for
// the backward). y: float, or uint16_t (bf16 bits) for the bf16 outputs; x
// and y may not overlap.
void group_norm_forward(const GroupNormGeometry& g, const float* x, const float* shift, const float* gamma,
                        const float* beta, void* y, float* mean, float* rstd);

// Backward from the forward's mean and rstd. dx [like x] written, or added
// to with `dx_add`; null when x needs no gradient. dshift [N*C] likewise with
// `dshift_add`. dgamma, dbeta [C] written. `work` [2*N*C] floats of scratch.
void group_norm_backward(const GroupNormGeometry& g, const float* x, const float* dz, const float* gamma,
                         const float* beta, const float* mean, const float* rstd, float* dx, bool dx_add,
                         float* dshift, bool dshift_add, float* dgamma, float* dbeta, float* work);

}  // namespace diffuflow
