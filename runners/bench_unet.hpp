// The U-Net's throughput alone, on the CPU, with random weights and inputs:
// what `diffuflow bench-unet` prints and `diffuflow bench unet` repeats.
//
//   UNetBenchSettings s;
//   s.config = "unet-tiny";
//   s.batch = 8;
//   UNetBenchResult r = bench_unet(s, &std::cout);   // progress lines to std::cout (nullptr: none)
//   r.forward_images_per_s();
#pragma once

#include "compute/program.hpp"
#include "graph/enum_names.hpp"
#include "runners/bench_bandwidth.hpp"
#include "runners/bench_matmul.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <ostream>
#include <string>

namespace diffuflow {

DIFFUFLOW_ENUM(UNetBenchMode, forward, train, both);

struct UNetBenchSettings {
  std::string config = "unet-s";  // a built-in name or a diffusers config.json
  int64_t batch = 64;
  int64_t size = 0;               // image side; 0: the config's sample_size
  int threads = 0;                // OpenMP threads (and oneTBB's parallelism limit); 0: every usable CPU
  int teams = 1;                  // the batch split among this many OpenMP teams (UNetModel::set_teams)
  int iters = 5;                  // timed passes of each kind
  int warmup = 1;                 // untimed passes before each kind
  UNetBenchMode mode = UNetBenchMode::both;
  Precision precision = Precision::f32;
  ConvAlgorithm convolution = ConvAlgorithm::by_shape;  // the f32 3x3 convolutions' algorithm
  Bf16Backward bf16_backward = Bf16Backward::by_shape;  // bf16 training's backward convolution layout
  ActivationLayout activation_layout = ActivationLayout::by_isa;  // the image activations' layout
  uint64_t seed = 1;              // weights and inputs
  // Also time the matmul peak probe (bench_matmul.hpp) in the same precision
  // and threads, first, and give each GFLOP/s figure as a fraction of it.
  bool matmul_peak = false;
  // Also time the memory bandwidth probe (bench_bandwidth.hpp) in the same
  // threads, after the matmul peak (a roofline's memory roof).
  bool bandwidth = false;
  // After the timed passes, as many again with every program step waited for
  // and timed, to split the time by layer kind (UNetBenchResult::breakdown).
  bool breakdown = false;
};

// Seconds per pass over the timed iterations (all 0 when that kind did not run).
struct PassTimes {
  double median = 0, min = 0, max = 0;
  double first = 0;  // the very first pass, warm-up included (primitive creation)
};

struct UNetBenchResult {
  UNetBenchSettings settings;  // as run: size and threads resolved
  std::string isa;
  ActivationLayout activation_layout_used = ActivationLayout::blocked;  // settings.activation_layout resolved
  int64_t parameters = 0;
  double forward_flops_per_image = 0;  // 2 * multiply-accumulates; a backward pass counts twice this
  PassTimes forward, train;            // train: forward + backward
  double peak_rss_mib = 0;             // of the whole process
  MatmulPeak matmul_peak;              // when settings.matmul_peak (else not available)
  MemoryBandwidth bandwidth;           // when settings.bandwidth (else nothing timed: 0 GB/s)
  // When settings.breakdown: {"passes", "forward_pass_ms", "train_pass_ms",
  // "rows": [{"layer", "primitive", "forward_ms", "train_forward_ms",
  // "backward_ms", and _gflop and _mb of each}], "layers": [{"layer",
  // "forward", "forward_backward"}], "unet": {"forward", "forward_backward"}},
  // each time the sum over the layer's steps of their median time over the
  // profiled passes, each GFLOP and MB (1e6 bytes) the sum of step_cost()
  // over them (compute/step_cost.hpp); "layers" and "unet" entries are
  // {"ms", "gflop", "mb", "flop_per_byte", "gflops_per_s"}, "unet" timed by
  // the unprofiled passes (print_unet_breakdown prints it). With teams the
  // rows are part 0's steps, timed while the other parts run, and
  // "profiled_part": {"parts", "samples", "batch"} says so; "unet" counts the
  // whole batch's work as part 0's times batch / samples (exact for FLOPs;
  // for bytes when the parts are equal).
  nlohmann::json breakdown;

  double forward_images_per_s() const;        // at the median pass time
  double forward_backward_images_per_s() const;
  double forward_gflops_per_s() const;  // at the median pass
  double forward_backward_gflops_per_s() const;
  // The results as `bench-unet --json` writes them.
  nlohmann::json json() const;
};

// The breakdown as tables: per layer kind, then per layer and primitive kind.
void print_unet_breakdown(const nlohmann::json& breakdown, std::ostream& out);

// Throws ConfigError for settings out of range or a config that cannot be built.
UNetBenchResult bench_unet(const UNetBenchSettings& settings, std::ostream* log = nullptr);

}  // namespace diffuflow
