// The work of one recorded step, counted from its primitive kind and the
// descriptors of its argument memories, so a profiled pass can place each
// layer kind on a roofline (arithmetic intensity against achieved GFLOP/s).
//
//   StepCost c = step_cost(step.primitive, step.args);   // host steps: step_cost({}, step.args)
//   c.flops / c.bytes                                    // FLOP per byte moved
//
// FLOPs:
// - convolution (forward, backward data, backward weights) and inner product:
//   2 * MACs = 2 * elements of the output-side tensor (dst or diff_dst) *
//   elements of the weights (or diff_weights) / output channels, which is
//   2 * N * OH * OW * OC * IC/groups * KH * KW for a grouped 2-D convolution;
// - matmul: 2 * M * N * K = 2 * elements of dst * K (K: src's last dimension);
// - reorder, concat, shuffle: 0, they only move data;
// - every other primitive (eltwise, binary, normalisations, softmax, pooling,
//   resampling, sum, ...) and every host step: one per element it writes
//   (dst, else diff_src), a lower bound (an activation's polynomial counts as
//   one); a host step with neither argument (dropout's mask) counts 0.
// Bytes: each distinct memory of the arguments once (the scratchpad left out),
// at the size its descriptor spans without the unused part of a view: the
// least traffic the step can cause with caches that hold nothing between
// steps. A memory both read and written (in place, or accumulated into) also
// counts once.
#pragma once

#include "compute/memory.hpp"

#include <dnnl.hpp>

namespace diffuflow {

struct StepCost {
  double flops = 0;
  double bytes = 0;
};

// `primitive` empty (a default-constructed dnnl::primitive): a host step.
StepCost step_cost(const dnnl::primitive& primitive, const Args& args);

}  // namespace diffuflow
