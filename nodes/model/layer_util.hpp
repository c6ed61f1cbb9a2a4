// Helpers the layer files share (layers.cpp defines them); not for nodes.
#pragma once

#include "compute/program.hpp"
#include "nodes/model/layers.hpp"

#include <optional>
#include <string>

namespace diffuflow::layer_util {

int64_t product(const dims& d, size_t from = 0);
// std::invalid_argument "model layer: <what>" unless ok.
void require(bool ok, const std::string& what);
// Whether oneDNN picked a reference (slow) implementation.
bool is_reference(const char* impl);

// Whether x_md is an image [N,C,H,W] (C > 1, H*W > 1) laid out nhwc.
bool is_channels_last(const dnnl::memory::desc& x_md);
// x [N,C,...] seen as [1, N*C, H, W]: every (sample, channel) pair becomes a
// channel of its own, which is the same memory for plain NCHW and for
// nChw16c (C a multiple of 16); the data type is x's. Per-(n,c) statistics
// and affine transforms are then batch-normalisation or binary primitives
// over this view. An nhwc x is seen as plain [N, H*W, C] instead (binary
// primitives only: no batch normalisation takes it).
dnnl::memory::desc per_sample_channels(const dnnl::memory::desc& x_md);
// A per-channel [1, N*C, 1, 1] operand of a binary primitive over such a
// view, f32 whatever the view's data type, described in the view's layout
// (the same memory as plain [N*C] when N*C is a multiple of 16) so that the
// jit kernels take it; [N, 1, C] for the nhwc view.
dnnl::memory::desc per_channel_operand(const dnnl::memory::desc& view_md);
// x's data as f32, for a backward step that reads it next to f32 gradients
// (oneDNN 2.6's eltwise and binary backward take one data type): the data
// itself when f32, else a copy converted in the backward list.
dnnl::memory data_as_f32(Program& p, ValueId x);
// A plain f32 tensor of ones of this shape: a program constant, one per shape.
dnnl::memory ones(Program& p, const dims& shape);
// Appends to the backward list: dst [N,C] (plain) = the sums over H, W of
// src, a memory in the layout x_md describes ([N,C,H,W]).
void append_channel_sums(Program& p, const dnnl::memory& src, const dnnl::memory::desc& x_md, const dnnl::memory& dst);

// x as a new value in the layout `want` (a reorder; backward, the gradient
// reordered back); x itself when it has that layout.
ValueId relayout(Program& p, ValueId x, const dnnl::memory::desc& want);

// GroupNorm of x (plus a [N,C] shift when shift >= 0), then SiLU when
// `silu`, as native steps (layers_native.cpp): for programs whose
// native_kernels() is on. x plain, nChw16c or nhwc.
// With x2 >= 0 (no shift): the norm of x and x2 concatenated along the
// channels, read from the two (both nChw16c or both nhwc, x's channels whole
// blocks).
ValueId group_norm_native(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups,
                          float eps, bool silu, ValueId shift, ValueId x2 = -1);
// Softmax over each of `rows` rows of `length` in plain f32 memory, as a
// native step (layers_native.cpp): forward in place on `probs`; backward
// dscores = the gradient through it, from the forward's output and dprobs.
void softmax_native_forward(Program& p, const dnnl::memory& probs, int64_t rows, int64_t length);
void softmax_native_backward(Program& p, const dnnl::memory& probs, const dnnl::memory& dprobs,
                             const dnnl::memory& dscores, int64_t rows, int64_t length);
// conv2d as a native step when it has a few channels (<= 8) on one side
// and a multiple of 16 on the other, stride 1, one padding all round and no
// residual (layers_native.cpp); else nothing.
std::optional<ValueId> conv2d_few_channels(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias,
                                           int64_t stride, int64_t padding, int64_t padding_end, ValueId residual);

}  // namespace diffuflow::layer_util
