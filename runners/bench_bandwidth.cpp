// The memory bandwidth probe (bench_bandwidth.hpp): a plain f32 [elements]
// buffer reordered into another of the same layout, which oneDNN runs as a
// parallel streaming copy.
#include "runners/bench_bandwidth.hpp"
#include "graph/device.hpp"

#include "compute/memory.hpp"
#include "graph/errors.hpp"
#include "graph/tensor.hpp"

#include <dnnl.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

namespace diffuflow {

namespace {

ConfigError bad_setting(const std::string& option, const std::string& what) {
  return ConfigError(SourceLocation{"command line", 0, 0, option}, what);
}

}  // namespace

double MemoryBandwidth::bytes_per_pass() const { return 2.0 * static_cast<double>(settings.mib) * 1024 * 1024; }

double MemoryBandwidth::gb_per_s() const { return median_s > 0 ? bytes_per_pass() / median_s * 1e-9 : 0.0; }

double MemoryBandwidth::best_gb_per_s() const { return min_s > 0 ? bytes_per_pass() / min_s * 1e-9 : 0.0; }

MemoryBandwidth measure_bandwidth(const BandwidthSettings& settings) {
  if (settings.mib < 1 || settings.mib > 65536) throw bad_setting("--mib", "buffer size must be in [1, 65536] MiB");
  if (settings.iters < 1) throw bad_setting("--steps", "must be >= 1");
  if (settings.warmup < 0) throw bad_setting("--warmup", "must be >= 0");
  if (settings.threads < 0) throw bad_setting("--threads", "must be >= 0");
  MemoryBandwidth bw;
  bw.settings = settings;
  BandwidthSettings& s = bw.settings;
  if (s.threads == 0) s.threads = usable_cpus();
  omp_set_num_threads(s.threads);

  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  const int64_t elements = s.mib * 1024 * 1024 / static_cast<int64_t>(sizeof(float));
  const auto md = plain_f32({elements});
  dnnl::memory src(md, engine), dst(md, engine);
  HostMap<float>(src).fill(1.0f);  // touched before timing, so no page faults are timed
  const dnnl::reorder::primitive_desc pd(engine, md, engine, md);
  bw.implementation = pd.impl_info_str();
  const dnnl::reorder copy(pd);
  dnnl::stream stream(engine);

  using clock = std::chrono::steady_clock;
  std::vector<double> times;
  for (int i = 0; i < s.warmup + s.iters; ++i) {
    const auto t0 = clock::now();
    copy.execute(stream, src, dst);
    stream.wait();
    const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
    if (i >= s.warmup) times.push_back(seconds);
  }
  std::sort(times.begin(), times.end());
  const size_t m = times.size() / 2;
  bw.median_s = times.size() % 2 ? times[m] : 0.5 * (times[m - 1] + times[m]);
  bw.min_s = times.front();
  bw.max_s = times.back();
  return bw;
}

}  // namespace diffuflow
