// The matmul peak probe (bench_matmul.hpp): user memory f32 row-major, the
// operands converted once to what the kernel wants (bf16, a packed weight
// layout) before timing, so only the multiplication is timed.
#include "runners/bench_matmul.hpp"
#include "graph/device.hpp"

#include "graph/errors.hpp"

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

// A user f32 [rows, cols] buffer with small values that stay finite in any product.
dnnl::memory filled(const dnnl::engine& engine, int64_t rows, int64_t cols, float step) {
  dnnl::memory m(plain_f32({rows, cols}), engine);
  HostMap<float> host(m);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(static_cast<int>(i % 13) - 6) * step;
  return m;
}

// `user` converted to `want` (a copy only when they differ).
dnnl::memory converted(dnnl::memory user, const dnnl::memory::desc& want, dnnl::stream& stream) {
  if (user.get_desc() == want) return user;
  dnnl::memory out(want, user.get_engine());
  dnnl::reorder(user, out).execute(stream, user, out);
  return out;
}

}  // namespace

double matmul_flops(int64_t m, int64_t n, int64_t k) {
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
}

double fraction_of_peak(double gflops, double peak_gflops) { return peak_gflops > 0 ? gflops / peak_gflops : 0.0; }

double MatmulPeak::gflops_per_s() const {
  const int64_t n = settings.size;
  return available && median_s > 0 ? matmul_flops(n, n, n) / median_s * 1e-9 : 0.0;
}

double MatmulPeak::best_gflops_per_s() const {
  const int64_t n = settings.size;
  return available && min_s > 0 ? matmul_flops(n, n, n) / min_s * 1e-9 : 0.0;
}

MatmulPeak measure_matmul_peak(const MatmulPeakSettings& settings) {
  if (settings.size < 16 || settings.size > 16384) throw bad_setting("--size", "matmul size must be in [16, 16384]");
  if (settings.iters < 1) throw bad_setting("--steps", "must be >= 1");
  if (settings.warmup < 0) throw bad_setting("--warmup", "must be >= 0");
  if (settings.threads < 0) throw bad_setting("--threads", "must be >= 0");
  MatmulPeak peak;
  peak.settings = settings;
  MatmulPeakSettings& s = peak.settings;
  if (s.threads == 0) s.threads = usable_cpus();
  omp_set_num_threads(s.threads);

  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  if (s.precision == Precision::bf16 && !native_bf16(engine)) {
    peak.why = "bf16 matmul: this CPU has no native bf16 arithmetic (oneDNN needs AVX512-BF16 or AMX); not timed";
    return peak;
  }
  using dt = dnnl::memory::data_type;
  const int64_t n = s.size;
  const dt in_type = s.precision == Precision::bf16 ? dt::bf16 : dt::f32;
  const dnnl::memory::desc src_md({n, n}, in_type, tag::ab);
  const dnnl::memory::desc weights_md({n, n}, in_type, tag::any);
  const auto dst_md = plain_f32({n, n});
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, weights_md, dst_md), user_scratchpad_attr(), engine);
  peak.implementation = pd.impl_info_str();

  dnnl::stream stream(engine);
  const dnnl::memory src = converted(filled(engine, n, n, 1.0f / 64), pd.src_desc(), stream);
  const dnnl::memory weights = converted(filled(engine, n, n, 1.0f / 128), pd.weights_desc(), stream);
  const dnnl::memory dst(pd.dst_desc(), engine);
  const dnnl::memory scratchpad = scratchpad_memory(engine, pd.scratchpad_desc().get_size());
  const dnnl::matmul matmul(pd);
  const Args args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad}};
  stream.wait();

  using clock = std::chrono::steady_clock;
  std::vector<double> times;
  for (int i = 0; i < s.warmup + s.iters; ++i) {
    const auto t0 = clock::now();
    matmul.execute(stream, args);
    stream.wait();
    const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
    if (i >= s.warmup) times.push_back(seconds);
  }
  std::sort(times.begin(), times.end());
  const size_t m = times.size() / 2;
  peak.median_s = times.size() % 2 ? times[m] : 0.5 * (times[m - 1] + times[m]);
  peak.min_s = times.front();
  peak.max_s = times.back();
  peak.available = true;
  return peak;
}

}  // namespace diffuflow
