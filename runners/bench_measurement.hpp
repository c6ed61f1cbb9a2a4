// What `diffuflow bench` (runners/bench.cpp) measures, shared with the
// measurements that run no pipeline: the U-Net alone and the machine probes
// (runners/bench_standalone.cpp).
#pragma once

#include "graph/spec.hpp"
#include "runners/bench_unet.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace diffuflow::bench_cli {

using json = nlohmann::json;

struct Settings {
  std::string kind;
  std::string pipeline;  // bench_KIND.yaml unless --pipeline
  std::string config;    // empty: the pipeline's
  int64_t batch = 64;
  int threads = 0;
  int teams = 0;          // the U-Net's batch split among this many OpenMP teams (0: the pipeline's; unet: 1)
  int graph_threads = 0;  // pipelines: TBB's max_allowed_parallelism (0: threads)
  int steps = 10;
  int warmup = 2;
  int repeats = 1;
  int prefetch = 4;
  std::vector<std::string> sets;
  std::optional<std::string> concurrency_node;  // concurrency sweep: the node
  std::optional<int> concurrency;
  std::optional<int> max_in_flight;
  std::optional<Override> param;  // NODE.PARAM sweep
  std::string precision;          // bench unet, matmul: f32 or bf16 (empty: f32)
  std::string convolution;        // bench unet: by_shape, direct or winograd (empty: by_shape)
  std::string bf16_backward;      // bench unet: by_shape, channels_last or blocked (empty: by_shape)
  std::string activation_layout;  // bench unet: by_isa, blocked or channels_last (empty: by_isa)
  bool breakdown = false;         // bench unet: time per layer kind too
  int64_t mib = 256;              // bench bandwidth: the buffer copied
  std::string roofline;           // bench unet: the roofline figure to write (empty: none)
};

struct NodeWindow {
  std::string name, type;
  bool device = false;
  int64_t count = 0;        // invocations that ended in the window
  double busy_fraction = 0; // union of invocations, clipped to the window, over the window
  double mean_ms = 0;       // mean duration of the invocations counted
};

struct Measurement {
  double rate = 0;  // images/s (bench matmul: GFLOP/s; bandwidth: GB/s)
  double window_s = 0;
  int64_t images = 0;
  int64_t steps = 0;
  double step_ms_median = 0;
  double model_busy_fraction = 0;    // forward, loss, backward, optimiser: active time / window
  double compute_busy_fraction = 0;  // every device node (the compute thread): active time / window
  double unet_forwards_per_s = 0;    // model_forward invocations ended in the window / window
  double setup_s = 0;                // building the Pipeline (resources, nodes)
  double warmup_s = 0;               // run start to the end of the warm-up steps
  double wall_s = 0;                 // the run, as the pipeline's report has it
  double peak_rss_mib = 0;
  std::vector<NodeWindow> nodes;
  // Under mpirun (bench train): images/s above are global (every process's
  // images); per rank, the median step and the communication per step.
  int processes = 1;
  double exposed_comm_ms = 0;    // per step, the most of any rank: backward waiting for gradient sums
  double allreduce_ms = 0;       // per step, rank 0: time the sums took on the communication thread
  json ranks = json::array();    // [{rank, step_ms_median, exposed_comm_ms_per_step, allreduce_ms_per_step}]
  json extra;  // kind-specific numbers (unet)
};

// Resident memory: the high-water mark reset (false where the kernel does not allow it) and read, MiB.
bool reset_peak_rss();
double peak_rss_mib();
// OpenMP threads and TBB parallelism of a measurement; 0: every usable CPU.
int resolved_threads(int threads);

// `bench unet`, `bench matmul`, `bench bandwidth`: one repeat each.
Measurement measure_unet(const Settings& s, UNetBenchMode mode);
Measurement measure_matmul(const Settings& s);
Measurement measure_bandwidth_row(const Settings& s);

// bench unet's figures, in the JSON results and CSV rows.
extern const char* const kUNetFigures[8];
// "; forward 320.1 images/s, 180.2 GFLOP/s = 51% of the matmul peak (352.0 GFLOP/s); forward+backward ..."
std::string unet_figures(const Measurement& m, UNetBenchMode mode);

// The repeat whose rate is the median: the lower of the two middles of an
// even count. `bench` reports that repeat's breakdown and roofline, and
// `diffuflow roofline` draws the same one from a saved result.
inline size_t median_index(const std::vector<double>& rates) {
  std::vector<std::pair<double, size_t>> v;
  for (size_t i = 0; i < rates.size(); ++i) v.emplace_back(rates[i], i);
  std::sort(v.begin(), v.end());
  return v[(v.size() - 1) / 2].second;
}

}  // namespace diffuflow::bench_cli
