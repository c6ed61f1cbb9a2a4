// The U-Net's layers, each a function that appends its forward primitives to
// a Program and registers the code that appends its backward primitives
// (gradients for the input and for every parameter). Image activations are
// f32 in activation_desc()'s layout (channel-blocked where the channel count
// allows, so convolutions run on jit kernels without reorders; layers accept
// any layout for their inputs); tokens, embeddings and parameters are plain
// row-major. Parameters are slices of the model's flat buffer, their
// gradients slices of the program's staging buffer.
//
// Shapes (N batch, C channels, H x W image, M rows, S = H*W tokens):
//   conv2d          x [N,Ci,H,W] -> [N,Co,H',W']        weight [Co,Ci,k,k], bias [Co]
//   linear          x [M,I] -> [M,O]                    weight [O,I], bias [O]
//   group_norm      x [N,C,H,W] -> [N,C,H,W]            weight [C], bias [C] (batch-norm
//                   primitives over a [1,N*C,H,W] view plus O(N*C) host arithmetic)
//   silu            any -> same
//   group_norm_silu silu(group_norm(x)); one fused pass in programs built
//                   for inference (training keeps the normalised values for
//                   SiLU's backward)
//   add             a, b (same shape) -> a + b
//   add_channel_bias x [N,C,H,W], b [N,C] -> x + b[:,:,None,None]
//   concat_channels a [N,Ca,H,W], b [N,Cb,H,W] -> [N,Ca+Cb,H,W]
//   upsample_nearest2x x [N,C,H,W] -> [N,C,2H,2W]
//   to_tokens       x [N,C,H,W] -> [N*S,C];  from_tokens  [N*S,C] -> [N,C,H,W]
//   attention_core  q, k, v [N*S,C] -> [N*S,C]  (heads of d channels, softmax(scale q k^T) v)
#pragma once

#include "compute/program.hpp"

namespace diffuflow {

// A parameter: offset (elements) into the flat buffer and its shape.
struct ParamRef {
  int64_t offset = 0;
  Shape shape;
};

ValueId conv2d(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t stride, int64_t padding);
ValueId linear(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias);
ValueId group_norm(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups, float eps);
ValueId silu(Program& p, ValueId x);
ValueId group_norm_silu(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups,
                        float eps);
ValueId add(Program& p, ValueId a, ValueId b);
ValueId add_channel_bias(Program& p, ValueId x, ValueId bias);
ValueId concat_channels(Program& p, ValueId a, ValueId b);
ValueId upsample_nearest2x(Program& p, ValueId x);
ValueId to_tokens(Program& p, ValueId x);
ValueId from_tokens(Program& p, ValueId tokens, const dims& nchw);
ValueId attention_core(Program& p, ValueId q, ValueId k, ValueId v, int64_t batch, int64_t head_dim);

// The sinusoidal timestep embedding table temb0 [N, dim] for integer
// timesteps: concat(cos(t*f_j), sin(t*f_j)), f_j = exp(-ln(10000) j / (dim/2)).
// It is a function of the integer timesteps only (no parameters, no
// gradient), so it is computed on the host in float32 and copied into the
// model's input value before the forward pass.
void timestep_embedding_table(const std::vector<int64_t>& timesteps, int64_t dim, float* out);
// The table written into a model's input temb0 [N, dim] with one host mapping.
// It is computed before the mapping, so a model that queues its input uploads
// first has the host work overlap them.
void write_timestep_embedding(const std::vector<int64_t>& timesteps, int64_t dim, const dnnl::memory& temb0);

}  // namespace diffuflow
