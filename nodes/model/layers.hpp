// The U-Net's layers, each a function that appends its forward primitives to
// a Program and registers the code that appends its backward primitives
// (gradients for the input and for every parameter). Image activations are
// in activation_desc()'s layout (channel-blocked where the channel count
// allows, so convolutions run on jit kernels without reorders; layers accept
// any layout for their inputs) and of the program's activation_type(): f32,
// or bf16 in bf16 programs (layers take either, and convolutions and
// from_tokens write that type); tokens, embeddings and parameters are plain
// row-major f32, and every gradient is f32 (Program::grad_desc). Parameters are slices of the model's flat buffer, their
// gradients slices of the program's staging buffer. Each layer labels its
// steps with its kind for profiles (Program::LayerScope): convolution,
// linear, group_norm, elementwise (activations, adds, scales, dropout),
// attention; the rest (concatenation, resampling, embedding) is "other".
//
// Shapes (N batch, C channels, H x W image, M rows, S = H*W tokens):
//   conv2d          x [N,Ci,H,W] -> [N,Co,H',W']        weight [Co,Ci,k,k], bias [Co]
//   conv2d_add      x, residual [N,Co,H',W'] -> residual + conv2d(x)
//   linear          x [M,I] -> [M,O]                    weight [O,I], bias [O]
//   group_norm      x [N,C,H,W] -> [N,C,H,W]            weight [C], bias [C] (batch-norm
//                   primitives over a [1,N*C,H,W] view, tiny primitives on the N*C statistics);
//                   y has x's type (bf16 in training with the native kernel
//                   only), statistics in f32
//   silu, activation any -> same (SiLU, Mish, GELU, ReLU)
//   group_norm_act  act(group_norm(x)); one fused pass in inference, and in
//                   training with the native kernel and SiLU (its backward
//                   recomputes the norm); else training keeps the normalised
//                   values for the activation's backward; group_norm_silu
//   shifted_group_norm_act x [N,C,H,W], shift [N,C] -> group_norm_act(x + shift[:,:,None,None])
//   affine          any -> alpha * x + beta
//   add             a, b (same shape) -> a + b
//   add_channel_bias x [N,C,H,W], b [N,C] -> x + b[:,:,None,None]
//   scale_channels  x [N,C,H,W], s [N,C] -> x * s[:,:,None,None]
//   avg_pool        x [N,C,H,W] -> [N,C,H/k,W/k], the mean of each k x k block
//   avg_pool2x      x [N,C,H,W] -> [N,C,H/2,W/2], the mean of each 2x2 block
//   dropout         any -> x * mask / (1 - rate), the mask drawn per pass
//   embedding       one_hot [N,K], table [K,D] -> [N,D] (the rows of the table)
//   concat_channels a [N,Ca,H,W], b [N,Cb,H,W] -> [N,Ca+Cb,H,W]
//   upsample_nearest2x x [N,C,H,W] -> [N,C,2H,2W]
//   to_tokens       x [N,C,H,W] -> [N*S,C];  from_tokens  [N*S,C] -> [N,C,H,W]
//   attention_core  q, k, v [N*S,C] -> [N*S,C]  (heads of d channels, softmax(scale q k^T) v)
// Data types: a layer's output has its (first) input's type; add takes
// mixed types, concat_channels converts an f32 input next to a bf16 one.
#pragma once

#include "compute/program.hpp"
#include "graph/tensor.hpp"

#include <memory>
#include <string>

namespace diffuflow {

// A parameter in the flat buffer: from `offset`, dense in `shape`, or with
// `strides` (in elements) when set: a slice of a larger parameter, such as
// some input channels of a convolution's weights. An empty shape is no
// parameter (a convolution without bias).
struct ParamRef {
  int64_t offset = 0;
  Shape shape;
  Shape strides = {};
};

// The activations of diffusers' act_fn: silu (= swish), mish, gelu (exact, erf), relu.
enum class Activation { silu, mish, gelu, relu };
// An act_fn name, any case; std::invalid_argument for another.
Activation activation_named(const std::string& act_fn);
struct eltwise_op {
  dnnl::algorithm algorithm;
  float alpha, beta;
};
eltwise_op activation_op(Activation act);
// One oneDNN elementwise operation, x -> op(x) (any shape and layout), with
// its backward from the input: what activation() and affine() run.
ValueId eltwise(Program& p, ValueId x, const eltwise_op& op);

// `padding` zeros before each spatial dimension and `padding_end` after it
// (-1: `padding`); diffusers' downsample_padding 0 is padding 0, padding_end 1.
ValueId conv2d(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t stride, int64_t padding,
               int64_t padding_end = -1);
// residual + conv2d(x), residual [N,Co,Ho,Wo]: the add done by the
// convolution as it writes its output where oneDNN has a fast kernel for it
// (a binary post-op reading the residual, or a sum post-op adding into the
// output where the kernel takes no binary one: Winograd's, the brgemm
// ones), else a separate add. With `residual_spent` (no later step, forward
// or backward, reads the residual's data) the output may be written over
// the residual's memory: a sum post-op adds into it (else into a copy of
// the residual), and a bf16 convolution in another layout than the
// activations' adds into it as its output is reordered into that layout.
// The same result either way (to rounding: a copy into a bf16 output rounds
// an f32 residual first); backward gives the residual dy.
ValueId conv2d_add(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, ValueId residual,
                   int64_t stride, int64_t padding, bool residual_spent = false);
ValueId linear(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias);
// How many batches linear's backward splits its M rows into for the weight
// and bias gradients (partial sums per batch, then their sum): a divisor of
// M, at most 16, of at least 128 rows each; 1 (no split) for fewer rows. By
// the shape alone, so gradients do not change with the thread count.
int64_t linear_row_batches(int64_t rows);
ValueId group_norm(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups, float eps);
ValueId silu(Program& p, ValueId x);
ValueId activation(Program& p, ValueId x, Activation act);
ValueId group_norm_silu(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups,
                        float eps);
ValueId group_norm_act(Program& p, ValueId x, const ParamRef& weight, const ParamRef& bias, int64_t groups, float eps,
                       Activation act);
// group_norm_act(concat_channels(a, b)) read from a and b, the concatenation
// never written: with the native kernel, where both are nChw16c of one type
// and a's channels are whole blocks (group_norm_reads_two).
bool group_norm_reads_two(const Program& p, ValueId a, ValueId b);
ValueId group_norm_act_two(Program& p, ValueId a, ValueId b, const ParamRef& weight, const ParamRef& bias,
                           int64_t groups, float eps, Activation act);
// group_norm_act(add_channel_bias(x, shift)), shift [N,C], without the sum
// ever written: a per-(n,c) constant only moves that channel's mean, which the
// group norm's statistics step takes in. The same result to float rounding;
// backward: d x as through the sum, d shift the sums of d x over H, W.
ValueId shifted_group_norm_act(Program& p, ValueId x, ValueId shift, const ParamRef& weight, const ParamRef& bias,
                               int64_t groups, float eps, Activation act);
ValueId affine(Program& p, ValueId x, float alpha, float beta);
ValueId add(Program& p, ValueId a, ValueId b);
ValueId add_channel_bias(Program& p, ValueId x, ValueId bias);
ValueId scale_channels(Program& p, ValueId x, ValueId scale);
// The mean of each k x k window at stride k: [N,C,H,W] -> [N,C,H/k,W/k]
// (rounded down).
ValueId avg_pool(Program& p, ValueId x, int64_t k);
ValueId avg_pool2x(Program& p, ValueId x);
// What a training pass's dropout masks are drawn from: its seed, and where
// the program's first sample sits in the whole batch (a batch computed in
// parts draws each sample's masks as the whole batch would).
struct DropoutDraw {
  uint64_t seed = 0;
  int64_t first_sample = 0;
};
// The mask of element i (in the whole batch's [N,C,H,W] order) is a hash of
// (seed, key, i): the same seed gives the same masks whatever the layout,
// thread count or split of the batch. `draw` is read when the pass runs (set
// it before each training pass).
ValueId dropout(Program& p, ValueId x, float rate, std::shared_ptr<const DropoutDraw> draw, uint64_t key);
ValueId embedding(Program& p, ValueId one_hot, const ParamRef& table);
ValueId concat_channels(Program& p, ValueId a, ValueId b);
ValueId upsample_nearest2x(Program& p, ValueId x);
ValueId to_tokens(Program& p, ValueId x);
ValueId from_tokens(Program& p, ValueId tokens, const dims& nchw);
ValueId attention_core(Program& p, ValueId q, ValueId k, ValueId v, int64_t batch, int64_t head_dim);

// The sinusoidal timestep embedding table temb0 [N, dim] for the timesteps
// (integers, or fractional ones from a sampler such as Euler's), as diffusers'
// get_timestep_embedding computes it:
// f_j = exp(-ln(10000) j / (dim/2 - freq_shift)), j < dim/2, and the row is
// concat(cos(t*f), sin(t*f)) with `flip_sin_to_cos`, else concat(sin, cos),
// then a zero when dim is odd. It is a function of the timesteps only (no
// parameters, no gradient), so it is computed on the host in float32 and
// copied into the model's input value before the forward pass.
void timestep_embedding_table(const std::vector<float>& timesteps, int64_t dim, float* out,
                              bool flip_sin_to_cos = true, double freq_shift = 0);
// A model's t [N] (s32, s64, or f32 for fractional timesteps) as the values
// the table takes; std::invalid_argument naming `what` for anything else.
std::vector<float> embedding_timesteps(const Tensor& t, const std::string& what);
// The table written into a model's input temb0 [N, dim] with one host mapping.
// It is computed before the mapping, so a model that queues its input uploads
// first has the host work overlap them.
void write_timestep_embedding(const std::vector<float>& timesteps, int64_t dim, const dnnl::memory& temb0,
                              bool flip_sin_to_cos = true, double freq_shift = 0);

}  // namespace diffuflow
