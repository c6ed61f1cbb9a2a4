// Memory descriptors and views: the vocabulary of everything in compute/ (the
// recorded programs of program.hpp and the imperative kernels of
// kernels.hpp). Knows nothing of models or diffusion.
//
//   const auto rows = plain_f32({n, d});                   // [N,D] row-major f32
//   dnnl::memory as_rows = view(x.memory(), rows);         // the same bytes, another shape
//   dnnl::memory bias = flat_slice(params, offset, plain_f32({c}));  // [C] inside a flat [P]
#pragma once

#include "graph/tensor.hpp"

#include <dnnl.hpp>

#include <cstdint>
#include <unordered_map>

namespace diffuflow {

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
// A primitive's arguments: DNNL_ARG_* -> memory.
using Args = std::unordered_map<int, dnnl::memory>;

// Plain row-major f32 descriptor.
dnnl::memory::desc plain_f32(const dims& shape);
// The layout of image activations [N,C,H,W]: when C is a multiple of 16,
// channel-blocked nChw16c (what oneDNN's AVX-512 convolutions prefer) or,
// `channels_last`, nhwc (the only layout of its AMX convolutions); else plain;
// f32 unless told (bf16 for an activation stored in bf16). Layers ask their
// program (Program::activation_desc), which knows which of the two it uses.
dnnl::memory::desc activation_desc(const dims& nchw, dnnl::memory::data_type type = dnnl::memory::data_type::f32,
                                   bool channels_last = false);
bool is_channel_blocked(const dnnl::memory::desc& desc);
// The same layout (strides, blocking) with elements of another type.
dnnl::memory::desc with_type(const dnnl::memory::desc& desc, dnnl::memory::data_type type);
// The same memory seen through another descriptor (a view: no copy).
dnnl::memory view(const dnnl::memory& memory, const dnnl::memory::desc& desc);
// A slice of a flat f32 buffer: the elements from `offset` on, seen through `desc`.
dnnl::memory flat_slice(const dnnl::memory& flat, int64_t offset, const dnnl::memory::desc& desc);
// The primitive attribute every primitive here uses: user-mode scratchpad
// (oneDNN's default scratchpad is thread-local, and work may run on any thread).
dnnl::primitive_attr user_scratchpad_attr();
// A byte buffer of `bytes` (at least 1) on `engine`, for a user-mode scratchpad.
dnnl::memory scratchpad_memory(const dnnl::engine& engine, size_t bytes);

}  // namespace diffuflow
