// The packet fields the built-in nodes pass between them, each declared once
// with its dtype, rank and place. Contracts list these constants and nodes
// read and write through them, so validation can check every edge before a
// pipeline runs (graph/field.hpp).
//
// Shapes: N images per packet, C channels, H x W pixels, K chain states, T the
// schedule's timesteps. Image values are in [-1, 1].
#pragma once

#include "graph/field.hpp"

namespace diffuflow {

class ForwardState;

namespace fields {

// --- data -----------------------------------------------------------------
inline const TensorField kX0{"x0", DType::f32, 4, Place::host, "[N,C,H,W] clean images in [-1, 1]"};
inline const TensorField kLabels{"labels", DType::s32, 1, Place::host, "[N] class of each image"};

// --- the forward process ----------------------------------------------------
inline const TensorField kT{"t", DType::s32, 1, Place::host, "[N] timestep of each image, in [0, T)"};
// A sampler whose timesteps are fractional (Euler's linspace spacing, Karras
// sigmas) sends them here too; the model embeds these instead of t.
inline const TensorField kTExact{"t_exact", DType::f32, 1, Place::host,
                                 "[N] the exact (fractional) timestep, where a sampler's is not an integer"};
inline const TensorField kNoise{"noise", DType::f32, 4, Place::device, "[N,C,H,W] the noise eps ~ N(0, I)"};
inline const TensorField kXt{"x_t", DType::f32, 4, Place::device, "[N,C,H,W] noised images at timestep t"};
inline const TensorField kChain{"chain", DType::f32, 5, Place::device, "[N,K,C,H,W] K states of a chain per image"};
inline const TensorField kChainT{"chain_t", DType::s32, 1, Place::host, "[K] timestep of each chain state (-1: x0)"};

// --- the model ------------------------------------------------------------
inline const TensorField kPrediction{"prediction", DType::f32, 4, Place::device, "[N,C,H,W] the model's output"};
inline const PayloadField<ForwardState> kActivations{"activations", "what the forward pass saved for backward"};
inline const TensorField kGradPrediction{"grad_prediction", DType::f32, 4, Place::device,
                                         "[N,C,H,W] d loss / d prediction"};
inline const ScalarField<int64_t> kGradsReady{"grads_ready", "the model's gradients include this batch"};

// --- training -------------------------------------------------------------
inline const ScalarField<double> kLoss{"loss", "the batch's mean loss"};
inline const ScalarField<int64_t> kStep{"step", "optimiser steps taken so far"};

// --- sampling -------------------------------------------------------------
inline const TensorField kSample{"sample", DType::f32, 4, Place::device, "[N,C,H,W] x_0 at the end of a chain"};
inline const TensorField kStepNoise{"z", DType::f32, 4, Place::any, "[N,C,H,W] the noise of one reverse step"};
inline const ScalarField<int64_t> kSamplerStep{"sampler_step", "reverse steps a chain has taken"};
// Set when every random draw for a packet's images is keyed by image, not by packet.
inline const ScalarField<int64_t> kFirstImage{"first_image",
                                              "index of the packet's first image; its random draws are keyed by image"};

}  // namespace fields
}  // namespace diffuflow
