// FLOPs and bytes of a recorded step (step_cost.hpp).
#include "compute/step_cost.hpp"

#include <map>
#include <utility>

namespace diffuflow {

namespace {

using kind = dnnl::primitive::kind;

// Elements of a descriptor: its dims, or its padded dims (what a blocked layout stores).
double elements(const dnnl::memory::desc& desc, bool padded) {
  const dnnl_memory_desc_t& d = desc.data;
  if (d.ndims == 0) return 0;
  double n = 1;
  for (int i = 0; i < d.ndims; ++i) n *= static_cast<double>(padded ? d.padded_dims[i] : d.dims[i]);
  return n;
}

const dnnl::memory* find(const Args& args, int arg) {
  const auto it = args.find(arg);
  return it == args.end() || !it->second ? nullptr : &it->second;
}

// The first of `a`, `b` present in args.
const dnnl::memory* either(const Args& args, int a, int b) {
  const dnnl::memory* m = find(args, a);
  return m ? m : find(args, b);
}

// One per element of the output (dst, else diff_src).
double written_elements(const Args& args) {
  const dnnl::memory* out = either(args, DNNL_ARG_DST, DNNL_ARG_DIFF_SRC);
  return out ? elements(out->get_desc(), false) : 0;
}

double flops_of(kind k, const Args& args) {
  switch (k) {
    case kind::convolution:
    case kind::inner_product: {
      // Forward: dst and weights; backward data: diff_dst and weights; backward weights: diff_dst and diff_weights.
      const dnnl::memory* out = either(args, DNNL_ARG_DST, DNNL_ARG_DIFF_DST);
      const dnnl::memory* weights = either(args, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_WEIGHTS);
      if (!out || !weights) return 0;
      const dnnl::memory::desc out_md = out->get_desc();
      if (out_md.data.ndims < 2 || out_md.data.dims[1] <= 0) return 0;
      // Weights [OC, IC, KH, KW] or, grouped, [G, OC/G, IC/G, KH, KW]: elements / OC = IC/G * KH * KW.
      return 2.0 * elements(out_md, false) * elements(weights->get_desc(), false) /
             static_cast<double>(out_md.data.dims[1]);
    }
    case kind::matmul: {
      const dnnl::memory* src = find(args, DNNL_ARG_SRC);
      const dnnl::memory* dst = find(args, DNNL_ARG_DST);
      if (!src || !dst) return 0;
      const dnnl::memory::desc src_md = src->get_desc();
      if (src_md.data.ndims < 1) return 0;
      return 2.0 * elements(dst->get_desc(), false) * static_cast<double>(src_md.data.dims[src_md.data.ndims - 1]);
    }
    case kind::reorder:
    case kind::concat:
    case kind::shuffle:
      return 0;
    default:
      return written_elements(args);
  }
}

}  // namespace

StepCost step_cost(const dnnl::primitive& primitive, const Args& args) {
  StepCost cost;
  cost.flops = primitive ? flops_of(primitive.get_kind(), args) : written_elements(args);
  // Distinct memories: in place and accumulated-into memories appear under two arguments.
  std::map<std::pair<void*, int64_t>, double> bytes;
  for (const auto& [arg, memory] : args) {
    if (arg == DNNL_ARG_SCRATCHPAD || !memory) continue;
    const dnnl::memory::desc md = memory.get_desc();
    const double size = elements(md, true) * static_cast<double>(dnnl_data_type_size(md.data.data_type));
    double& b = bytes[{memory.get_data_handle(), md.data.offset0}];
    b = std::max(b, size);
  }
  for (const auto& [key, b] : bytes) cost.bytes += b;
  return cost;
}

}  // namespace diffuflow
