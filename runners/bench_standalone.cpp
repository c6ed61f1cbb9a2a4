// The measurements of `diffuflow bench` that run no pipeline: the U-Net
// alone (bench_unet.hpp), the matmul peak (bench_matmul.hpp), the memory
// bandwidth (bench_bandwidth.hpp), and the resident-memory readings all kinds share.
#include "runners/bench_measurement.hpp"
#include "graph/device.hpp"

#include "runners/bench_bandwidth.hpp"
#include "runners/bench_matmul.hpp"
#include "runners/bench_roofline.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <thread>

namespace diffuflow::bench_cli {

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

double peak_rss_mib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

int resolved_threads(int threads) {
  return threads > 0 ? threads : usable_cpus();
}

// `bench unet`: the U-Net alone, timed by bench_unet() (runners/bench_unet.hpp).
Measurement measure_unet(const Settings& s, UNetBenchMode mode) {
  UNetBenchSettings u;
  if (!s.config.empty()) u.config = s.config;
  u.batch = s.batch;
  u.size = 28;  // the size the graphs run (MNIST)
  u.threads = resolved_threads(s.threads);
  u.teams = std::max(1, s.teams);
  u.iters = s.steps;
  u.warmup = s.warmup;
  u.mode = mode;
  if (!s.precision.empty()) u.precision = parse_enum<Precision>(s.precision, "precision");
  if (!s.convolution.empty()) u.convolution = parse_enum<ConvAlgorithm>(s.convolution, "convolution");
  if (!s.bf16_backward.empty()) u.bf16_backward = parse_enum<Bf16Backward>(s.bf16_backward, "bf16_backward");
  if (!s.activation_layout.empty())
    u.activation_layout = parse_enum<ActivationLayout>(s.activation_layout, "activation_layout");
  u.matmul_peak = true;
  u.breakdown = s.breakdown;
  u.bandwidth = !s.roofline.empty();
  const bool rss_reset = reset_peak_rss();
  const UNetBenchResult r = bench_unet(u);
  Measurement m;
  m.peak_rss_mib = peak_rss_mib();
  if (!rss_reset) m.extra["peak_rss_scope"] = "process";
  // Both kinds: the rate of a row is the forward+backward one.
  m.rate = mode == UNetBenchMode::forward ? r.forward_images_per_s() : r.forward_backward_images_per_s();
  m.steps = s.steps;
  m.images = static_cast<int64_t>(s.steps) * s.batch;
  const json j = r.json();
  for (const char* key : {"forward_images_per_s", "forward_gflops_per_s", "forward_backward_images_per_s",
                          "forward_backward_gflops_per_s", "gflops_per_image_forward", "isa", "precision", "convolution", "bf16_backward",
                          "activation_layout", "activation_layout_used",
                          "matmul_peak_gflops_per_s", "forward_fraction_of_peak", "forward_backward_fraction_of_peak"}) {
    m.extra[key] = j.at(key);
  }
  if (!r.matmul_peak.available) m.extra["matmul_peak_note"] = r.matmul_peak.why;
  if (s.breakdown) m.extra["breakdown"] = r.breakdown;
  if (u.bandwidth) {
    m.extra["memory_bandwidth_gb_per_s"] = r.bandwidth.gb_per_s();
    m.extra["roofline"] = unet_roofline(r.breakdown, r.bandwidth.gb_per_s(), r.matmul_peak.gflops_per_s());
  }
  return m;
}

// `bench matmul`: the peak probe alone (runners/bench_matmul.hpp); the rate is GFLOP/s.
Measurement measure_matmul(const Settings& s) {
  MatmulPeakSettings p;
  p.threads = resolved_threads(s.threads);
  p.iters = s.steps;
  p.warmup = s.warmup;
  if (!s.precision.empty()) p.precision = parse_enum<Precision>(s.precision, "precision");
  const MatmulPeak peak = measure_matmul_peak(p);
  if (!peak.available) throw std::runtime_error(peak.why);
  Measurement m;
  m.rate = peak.gflops_per_s();
  m.steps = s.steps;
  m.peak_rss_mib = peak_rss_mib();
  m.extra = {{"precision", enum_name(p.precision)},
             {"size", p.size},
             {"implementation", peak.implementation},
             {"gflops_per_s_best", peak.best_gflops_per_s()},
             {"seconds_per_pass", {{"median", peak.median_s}, {"min", peak.min_s}, {"max", peak.max_s}}}};
  return m;
}

// `bench bandwidth`: the bandwidth probe alone (runners/bench_bandwidth.hpp); the rate is GB/s.
Measurement measure_bandwidth_row(const Settings& s) {
  BandwidthSettings b;
  b.mib = s.mib;
  b.threads = resolved_threads(s.threads);
  b.iters = s.steps;
  b.warmup = s.warmup;
  const MemoryBandwidth bw = measure_bandwidth(b);
  Measurement m;
  m.rate = bw.gb_per_s();
  m.steps = s.steps;
  m.peak_rss_mib = peak_rss_mib();
  m.extra = {{"mib", b.mib},
             {"implementation", bw.implementation},
             {"gb_per_s_best", bw.best_gb_per_s()},
             {"seconds_per_pass", {{"median", bw.median_s}, {"min", bw.min_s}, {"max", bw.max_s}}}};
  return m;
}

// bench unet's figures, in the JSON results and CSV rows.
const char* const kUNetFigures[8] = {"forward_images_per_s",          "forward_gflops_per_s",
                                    "forward_fraction_of_peak",      "forward_backward_images_per_s",
                                    "forward_backward_gflops_per_s", "forward_backward_fraction_of_peak",
                                    "matmul_peak_gflops_per_s",      "memory_bandwidth_gb_per_s"};

// "; forward 320.1 images/s, 180.2 GFLOP/s = 51% of the matmul peak (352.0 GFLOP/s); forward+backward ..."
std::string unet_figures(const Measurement& m, UNetBenchMode mode) {
  std::ostringstream text;
  text << std::fixed << std::setprecision(1);
  const json& e = m.extra;
  auto pass = [&](const char* name, const std::string& prefix) {
    text << "; " << name << " " << e.at(prefix + "_images_per_s").get<double>() << " images/s, "
         << e.at(prefix + "_gflops_per_s").get<double>() << " GFLOP/s";
    const json& fraction = e.at(prefix + "_fraction_of_peak");
    if (fraction.is_number()) text << " = " << std::setprecision(0) << 100 * fraction.get<double>() << "%" << std::setprecision(1);
  };
  if (mode != UNetBenchMode::train) pass("forward", "forward");
  if (mode != UNetBenchMode::forward) pass("forward+backward", "forward_backward");
  const json& peak = e.at("matmul_peak_gflops_per_s");
  if (peak.is_number()) {
    text << " of the matmul peak (" << peak.get<double>() << " GFLOP/s)";
  } else if (e.contains("matmul_peak_note")) {
    text << " (" << e.at("matmul_peak_note").get<std::string>() << ")";
  }
  if (e.contains("memory_bandwidth_gb_per_s")) {
    text << "; memory bandwidth " << e.at("memory_bandwidth_gb_per_s").get<double>() << " GB/s";
  }
  return text.str();
}

}  // namespace diffuflow::bench_cli
