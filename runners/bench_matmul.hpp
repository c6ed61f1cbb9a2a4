// The machine's matrix-multiply peak as oneDNN reaches it: one square matmul
// (2048^3 by default) timed on the CPU, f32 or bf16 (bf16 inputs, f32
// products, as the U-Net's bf16 convolutions). `diffuflow bench matmul` prints
// it, and `bench unet` measures it in the same run to give every U-Net
// GFLOP/s figure as a fraction of it.
//
//   MatmulPeakSettings s;
//   s.threads = 2;
//   MatmulPeak peak = measure_matmul_peak(s);
//   if (peak.available) std::cout << peak.gflops_per_s() << "\n";   // at the median pass
#pragma once

#include "compute/program.hpp"

#include <cstdint>
#include <string>

namespace diffuflow {

struct MatmulPeakSettings {
  int64_t size = 2048;  // M = N = K
  int threads = 0;      // OpenMP threads; 0: every usable CPU
  Precision precision = Precision::f32;
  int iters = 5;        // timed passes
  int warmup = 1;       // untimed passes first
};

struct MatmulPeak {
  MatmulPeakSettings settings;  // as run: threads resolved
  // false when the precision has no native kernel on this CPU (bf16 without
  // AVX512-BF16 or AMX); `why` then says so and nothing was timed.
  bool available = false;
  std::string why;
  std::string implementation;  // oneDNN's name for the kernel it picked
  double median_s = 0, min_s = 0, max_s = 0;  // seconds per pass

  double gflops_per_s() const;  // at the median pass; 0 when not available
  double best_gflops_per_s() const;  // at the fastest pass
};

// Floating-point operations of an [m,k] x [k,n] matmul: 2 m n k.
double matmul_flops(int64_t m, int64_t n, int64_t k);
// `gflops` as a fraction of `peak_gflops`; 0 when the peak is unknown (<= 0).
double fraction_of_peak(double gflops, double peak_gflops);

// Throws ConfigError for a size, iteration or thread count out of range.
MatmulPeak measure_matmul_peak(const MatmulPeakSettings& settings);

}  // namespace diffuflow
