// Which precision to run a model in when the pipeline asks for the faster one.
//
// A CPU that has bf16 instructions does not always run bf16 convolutions
// faster: with AMX they ran 1.5x faster than f32 (the U-Net's, 16 cores), on
// a 2-core AMD EPYC (AVX512-BF16) the U-Net 1.3x, but on a Xeon that exposes
// AVX512-BF16 without AMX oneDNN 2.6's bf16 kernels take 2.6-3.2x the time of
// its f32 ones (docs/performance.md, "Choosing the precision"). So
// `precision: fastest` times one convolution in both and takes bf16 only when
// it is clearly faster.
//
//   const PrecisionProbe probe = probe_precision(engine);   // on the thread whose OpenMP team will run the model
//   model.set_precision(probe.chosen);
//   ctx.info(probe.summary());
#pragma once

#include "compute/program.hpp"

#include <dnnl.hpp>

#include <string>

namespace diffuflow {

// A model's precision as a pipeline names it: f32, bf16 (Precision), or
// fastest: whichever of the two probe_precision finds faster here.
DIFFUFLOW_ENUM(PrecisionChoice, f32, bf16, fastest);

struct PrecisionProbe {
  Precision chosen = Precision::f32;
  int threads = 0;        // the OpenMP team the probe ran on
  double f32_ms = 0;      // median per convolution, the faster of direct and Winograd; 0: not timed
  double bf16_ms = 0;     // median per convolution; 0: not timed (no native bf16)
  bool from_environment = false;  // DIFFUFLOW_PRECISION_PROBE named the choice
  std::string summary() const;  // one line: the choice and why
};

// bf16 is chosen when the f32 convolution takes at least this many times as
// long as the bf16 one: a bf16 program also converts some tensors, and a
// choice that timing noise could flip would make runs differ for no gain.
constexpr double kBf16Margin = 1.2;

// Times a 3x3 convolution forward (batch 32, 64 channels in and out, 16x16,
// padding 1: a U-Net's middle layer) in f32, by the direct method and by
// Winograd, and in bf16 (bf16 in and out, f32 accumulation), alternated over
// five rounds after one untimed pass each, on the calling thread's OpenMP
// team. Without native bf16 (native_bf16) it times nothing and chooses f32.
// The result is kept per engine kind and thread count for the process, so
// models made later reuse it. For tests, DIFFUFLOW_PRECISION_PROBE=f32 or bf16
// stands in for the timing (as DIFFUFLOW_FAULT stands in for a fault).
PrecisionProbe probe_precision(const dnnl::engine& engine);

}  // namespace diffuflow
