// The machine's memory bandwidth as oneDNN reaches it: one reorder copying a
// large f32 buffer (256 MiB by default, well beyond the caches) into another,
// timed on the CPU. Bytes count what is read plus what is written (2x the
// buffer). `diffuflow bench bandwidth` prints it, and `bench unet --roofline`
// measures it in the same run for the memory roof of its roofline figure.
//
//   BandwidthSettings s;
//   s.threads = 2;
//   MemoryBandwidth bw = measure_bandwidth(s);
//   std::cout << bw.gb_per_s() << "\n";   // at the median pass
#pragma once

#include <cstdint>
#include <string>

namespace diffuflow {

struct BandwidthSettings {
  int64_t mib = 256;  // size of the buffer copied, MiB (the same again is written)
  int threads = 0;    // OpenMP threads; 0: every usable CPU
  int iters = 5;      // timed passes
  int warmup = 1;     // untimed passes first (the destination's first touch)
};

struct MemoryBandwidth {
  BandwidthSettings settings;  // as run: threads resolved
  std::string implementation;  // oneDNN's name for the reorder it picked
  double median_s = 0, min_s = 0, max_s = 0;  // seconds per pass

  double bytes_per_pass() const;     // read + written
  double gb_per_s() const;           // 1e9 bytes/s at the median pass; 0 when nothing was timed
  double best_gb_per_s() const;      // at the fastest pass
};

// Throws ConfigError for a size, iteration or thread count out of range.
MemoryBandwidth measure_bandwidth(const BandwidthSettings& settings);

}  // namespace diffuflow
