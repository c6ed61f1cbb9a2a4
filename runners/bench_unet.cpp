// `diffuflow bench-unet`: throughput of the U-Net's forward and
// forward+backward passes on the CPU, with random weights and inputs.
//
//   diffuflow bench-unet --config unet-s --batch 64 --threads 2 --iters 5 --warmup 2 [--peak] [--json out.json]
//
// Prints images/s (median, min, max over the timed iterations), achieved
// GFLOP/s (convolutions, linears and attention matmuls counted analytically
// as 2*MACs; a backward pass counts twice its forward), with --peak each as a
// fraction of a oneDNN matmul timed first in the same process, the peak
// resident memory of the process and the ISA oneDNN dispatches to.
#include "runners/bench_unet.hpp"

#include "graph/atomic_file.hpp"
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "nodes/model/unet.hpp"
#include "runners/command.hpp"

#include <oneapi/tbb/global_control.h>
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

namespace diffuflow {

namespace {

// Multiply-accumulates of one image's forward pass, block by block as the U-Net is built.
struct MacCounter {
  const UNetConfig& c;
  int64_t h, w;
  double macs = 0;

  void conv(int64_t ci, int64_t co, int64_t k, int64_t ho, int64_t wo) {
    macs += static_cast<double>(ci) * co * k * k * ho * wo;
  }
  void linear(int64_t rows, int64_t in, int64_t out) { macs += static_cast<double>(rows) * in * out; }
  void resnet(int64_t ci, int64_t co, int64_t hh, int64_t ww) {
    conv(ci, co, 3, hh, ww);
    linear(1, c.time_embed_dim(), co);
    conv(co, co, 3, hh, ww);
    if (ci != co) conv(ci, co, 1, hh, ww);
  }
  void attention(int64_t ch, int64_t hh, int64_t ww) {
    const int64_t s = hh * ww;
    linear(s, ch, ch * 4);                      // q, k, v, out
    macs += 2.0 * static_cast<double>(s) * s * ch;  // Q K^T and P V over all heads
  }
  double count() {
    const auto& boc = c.block_out_channels;
    const size_t nb = boc.size();
    const int64_t L = c.layers_per_block, temb = c.time_embed_dim();
    auto attn = [](const std::string& type) { return type.rfind("Attn", 0) == 0; };
    linear(1, boc[0], temb);
    linear(1, temb, temb);
    int64_t hh = h, ww = w;
    conv(c.in_channels, boc[0], 3, hh, ww);
    std::vector<int64_t> skips{boc[0]};
    int64_t ch = boc[0];
    for (size_t i = 0; i < nb; ++i) {
      for (int64_t j = 0; j < L; ++j) {
        resnet(ch, boc[i], hh, ww);
        ch = boc[i];
        if (attn(c.down_block_types[i])) attention(ch, hh, ww);
        skips.push_back(ch);
      }
      if (i + 1 < nb) {
        hh = (hh - 1) / 2 + 1;
        ww = (ww - 1) / 2 + 1;
        conv(ch, ch, 3, hh, ww);
        skips.push_back(ch);
      }
    }
    resnet(ch, ch, hh, ww);
    attention(ch, hh, ww);
    resnet(ch, ch, hh, ww);
    std::vector<int64_t> rev(boc.rbegin(), boc.rend());
    for (size_t i = 0; i < nb; ++i) {
      for (int64_t j = 0; j <= L; ++j) {
        const int64_t skip = skips.back();
        skips.pop_back();
        resnet(ch + skip, rev[i], hh, ww);
        ch = rev[i];
        if (attn(c.up_block_types[i])) attention(ch, hh, ww);
      }
      if (i + 1 < nb) {
        hh *= 2;
        ww *= 2;
        conv(ch, ch, 3, hh, ww);
      }
    }
    conv(ch, c.out_channels, 3, hh, ww);
    return macs;
  }
};

PassTimes stats_of(std::vector<double> v, double first) {
  std::sort(v.begin(), v.end());
  PassTimes s;
  s.first = first;
  if (v.empty()) return s;
  s.min = v.front();
  s.max = v.back();
  const size_t m = v.size() / 2;
  s.median = v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
  return s;
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

ConfigError bad_setting(const std::string& option, const std::string& what) {
  return ConfigError(SourceLocation{"command line", 0, 0, option}, what);
}

double images_per_s(int64_t batch, double seconds) { return seconds > 0 ? static_cast<double>(batch) / seconds : 0.0; }

}  // namespace

double UNetBenchResult::forward_images_per_s() const { return images_per_s(settings.batch, forward.median); }

double UNetBenchResult::forward_backward_images_per_s() const { return images_per_s(settings.batch, train.median); }

double UNetBenchResult::forward_gflops_per_s() const {
  return forward.median > 0 ? forward_flops_per_image * settings.batch / forward.median * 1e-9 : 0.0;
}

double UNetBenchResult::forward_backward_gflops_per_s() const {
  return train.median > 0 ? 3 * forward_flops_per_image * settings.batch / train.median * 1e-9 : 0.0;
}

nlohmann::json UNetBenchResult::json() const {
  const double gflop = forward_flops_per_image * 1e-9;
  const auto rate = [&](double s) { return images_per_s(settings.batch, s); };
  const double peak = matmul_peak.gflops_per_s();
  nlohmann::json j = {{"config", settings.config},
          {"batch", settings.batch},
          {"image_size", settings.size},
          {"threads", settings.threads},
          {"iters", settings.iters},
          {"warmup", settings.warmup},
          {"isa", isa},
          {"precision", enum_name(settings.precision)},
          {"gflops_per_image_forward", gflop},
          {"forward_images_per_s", rate(forward.median)},
          {"forward_images_per_s_min", rate(forward.max)},
          {"forward_images_per_s_max", rate(forward.min)},
          {"forward_gflops_per_s", forward_gflops_per_s()},
          {"forward_backward_images_per_s", rate(train.median)},
          {"forward_backward_images_per_s_min", rate(train.max)},
          {"forward_backward_images_per_s_max", rate(train.min)},
          {"forward_backward_gflops_per_s", forward_backward_gflops_per_s()},
          {"peak_rss_mib", peak_rss_mib}};
  if (settings.matmul_peak) {
    // null when the probe could not run (bf16 on a CPU without native bf16).
    const auto or_null = [&](double v) { return matmul_peak.available ? nlohmann::json(v) : nlohmann::json(nullptr); };
    j["matmul_peak_gflops_per_s"] = or_null(peak);
    j["matmul_peak_size"] = matmul_peak.settings.size;
    j["forward_fraction_of_peak"] = or_null(fraction_of_peak(forward_gflops_per_s(), peak));
    j["forward_backward_fraction_of_peak"] = or_null(fraction_of_peak(forward_backward_gflops_per_s(), peak));
  }
  return j;
}

UNetBenchResult bench_unet(const UNetBenchSettings& settings, std::ostream* log) {
  if (settings.batch < 1) throw bad_setting("--batch", "must be >= 1");
  if (settings.iters < 1) throw bad_setting("--iters", "must be >= 1");
  if (settings.warmup < 0) throw bad_setting("--warmup", "must be >= 0");
  if (settings.size < 0) throw bad_setting("--size", "must be >= 0");
  if (settings.threads < 0) throw bad_setting("--threads", "must be >= 0");
  const UNetConfig config = UNetConfig::resolve(settings.config);
  UNetBenchResult result;
  result.settings = settings;
  UNetBenchSettings& s = result.settings;
  if (s.size == 0) s.size = config.sample_size;
  if (s.threads == 0) s.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  omp_set_num_threads(s.threads);
  oneapi::tbb::global_control parallelism(oneapi::tbb::global_control::max_allowed_parallelism,
                                          static_cast<size_t>(s.threads));
  const int64_t batch = s.batch, size = s.size;

  Device device(DeviceSpec::parse("cpu"));
  auto model = make_unet(config, device);
  model->init_random(s.seed);
  model->set_precision(s.precision);
  result.parameters = model->param_count();
  result.isa = describe_cpu_isa();

  std::mt19937_64 rng(s.seed + 1);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int64_t> step(0, 999);
  Tensor x({batch, config.in_channels, size, size}, DType::f32, device.engine());
  Tensor t({batch}, DType::s64, Device::host()->engine());
  Tensor g({batch, config.out_channels, size, size}, DType::f32, device.engine());
  {
    auto mx = x.map<float>();
    for (int64_t i = 0; i < x.numel(); ++i) mx[i] = normal(rng);
    auto mt = t.map<int64_t>();
    for (int64_t i = 0; i < batch; ++i) mt[i] = step(rng);
    auto mg = g.map<float>();
    for (int64_t i = 0; i < g.numel(); ++i) mg[i] = normal(rng) / static_cast<float>(g.numel());
  }

  const double fwd_flops = 2.0 * MacCounter{config, size, size}.count();
  result.forward_flops_per_image = fwd_flops;
  using clock = std::chrono::steady_clock;
  auto seconds_since = [](clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };

  if (log) {
    *log << "bench-unet: config " << s.config << ", batch " << batch << ", " << size << "x" << size << ", "
         << s.threads << " OpenMP thread(s), " << result.parameters << " parameters, " << enum_name(s.precision)
         << " convolutions\n"
         << "isa: " << result.isa << "\n"
         << std::fixed << std::setprecision(3) << "forward GFLOP per image: " << fwd_flops * 1e-9 << "\n";
  }

  if (s.matmul_peak) {
    MatmulPeakSettings probe;
    probe.threads = s.threads;
    probe.precision = s.precision;
    result.matmul_peak = measure_matmul_peak(probe);
    if (log) {
      const MatmulPeak& peak = result.matmul_peak;
      if (peak.available) {
        *log << "matmul peak: " << std::setprecision(1) << peak.gflops_per_s() << " GFLOP/s ("
             << enum_name(s.precision) << " " << probe.size << "^3, " << peak.implementation << ")\n"
             << std::setprecision(3);
      } else {
        *log << "matmul peak: " << peak.why << "\n";
      }
    }
  }

  std::vector<double> fwd_times, train_times;
  double first_forward_s = 0, first_train_s = 0;
  if (s.mode != UNetBenchMode::train) {
    for (int i = 0; i < s.warmup + s.iters; ++i) {
      const auto t0 = clock::now();
      auto r = model->forward(x, t, false);
      const double seconds = seconds_since(t0);
      if (i == 0) first_forward_s = seconds;
      if (i >= s.warmup) fwd_times.push_back(seconds);
    }
  }
  if (s.mode != UNetBenchMode::forward) {
    for (int i = 0; i < s.warmup + s.iters; ++i) {
      model->zero_grads();
      const auto t0 = clock::now();
      auto r = model->forward(x, t, true);
      model->backward(*r.state, g);
      const double seconds = seconds_since(t0);
      if (i == 0) first_train_s = seconds;
      if (i >= s.warmup) train_times.push_back(seconds);
    }
  }
  result.forward = stats_of(fwd_times, first_forward_s);
  result.train = stats_of(train_times, first_train_s);
  result.peak_rss_mib = peak_rss_mib();

  if (log) {
    const PassTimes &f = result.forward, &tr = result.train;
    auto ips = [&](double seconds) { return images_per_s(batch, seconds); };
    // " (71% of the matmul peak)" when the probe ran.
    auto of_peak = [&](double gflops) {
      if (!result.matmul_peak.available) return std::string();
      std::ostringstream text;
      text << std::fixed << std::setprecision(0) << " ("
           << 100 * fraction_of_peak(gflops, result.matmul_peak.gflops_per_s()) << "% of the matmul peak)";
      return text.str();
    };
    *log << std::setprecision(1);
    if (!fwd_times.empty()) {
      *log << "forward:          " << ips(f.median) << " images/s (min " << ips(f.max) << ", max " << ips(f.min)
           << "), " << f.median * 1e3 << " ms/pass, " << result.forward_gflops_per_s() << " GFLOP/s"
           << of_peak(result.forward_gflops_per_s()) << "; first pass " << f.first * 1e3 << " ms\n";
    }
    if (!train_times.empty()) {
      *log << "forward+backward: " << ips(tr.median) << " images/s (min " << ips(tr.max) << ", max "
           << ips(tr.min) << "), " << tr.median * 1e3 << " ms/step, " << result.forward_backward_gflops_per_s()
           << " GFLOP/s" << of_peak(result.forward_backward_gflops_per_s()) << "; first step " << tr.first * 1e3
           << " ms\n";
    }
    *log << "peak RSS: " << result.peak_rss_mib << " MiB\n";
  }
  return result;
}

namespace {

OptionTable bench_unet_options() {
  return {shared::unet_config().fallback("unet-s"),
          shared::batch(),
          OptionSpec::integer("size", "PIXELS", "image side (0: the config's sample_size)").range(0, 4096).fallback("0"),
          shared::threads().fallback("0"),
          OptionSpec::integer("iters", "K", "timed passes of each kind").range(1, 1 << 20).fallback("5"),
          shared::warmup().fallback("1"),
          shared::unet_mode().fallback("both"),
          shared::precision(),
          shared::seed().fallback("1"),
          OptionSpec::flag("peak", "first time a 2048^3 oneDNN matmul in the same precision and threads, and give "
                                   "each GFLOP/s figure as a fraction of it"),
          shared::json_file()};
}

int run_bench_unet(const ParsedOptions& options) {
  UNetBenchSettings s;
  s.config = options.text("config");
  s.batch = options.integer("batch");
  s.size = options.integer("size");
  s.threads = static_cast<int>(options.integer("threads"));
  s.iters = static_cast<int>(options.integer("iters"));
  s.warmup = static_cast<int>(options.integer("warmup"));
  s.seed = static_cast<uint64_t>(options.integer("seed"));
  s.matmul_peak = options.flag("peak");
  try {
    s.mode = parse_enum<UNetBenchMode>(options.text("mode"), "mode");
  } catch (const ConfigError& e) {
    throw bad_setting("--mode", e.message());
  }
  try {
    s.precision = parse_enum<Precision>(options.text("precision"), "precision");
  } catch (const ConfigError& e) {
    throw bad_setting("--precision", e.message());
  }
  const UNetBenchResult result = bench_unet(s, &std::cout);
  if (options.has("json")) {
    const std::string path = options.text("json");
    write_file_atomically(path, result.json().dump(2) + "\n");
    std::cout << "wrote " << path << "\n";
  }
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(bench_unet, "time the U-Net's forward and forward+backward passes", bench_unet_options(),
                           run_bench_unet);

}  // namespace diffuflow
