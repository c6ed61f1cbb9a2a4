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

#include "compute/teams.hpp"
#include "graph/atomic_file.hpp"
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "graph/openmp_policy.hpp"
#include "nodes/model/unet.hpp"
#include "runners/command.hpp"

#include <oneapi/tbb/global_control.h>
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <map>
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

double images_per_s(int64_t batch, double seconds) { return seconds > 0 ? static_cast<double>(batch) / seconds : 0.0; }

double median(std::vector<double> v) { return stats_of(std::move(v), 0).median; }

using LayerKey = std::pair<std::string, std::string>;  // (layer kind, primitive kind)

// The work and time of some steps of one pass.
struct StepSums {
  double ms = 0, gflop = 0, mb = 0;  // MB: 1e6 bytes
};

// Per (layer, primitive): the sum over its steps of each step's median time
// over the passes, in ms, and of their FLOPs and bytes (the same every pass).
// Every pass of one kind runs the same program; the last one is the steady
// state, and a pass of another length (one that also converted weights) is
// left out.
std::map<LayerKey, StepSums> step_sums(const std::vector<PassProfile>& passes) {
  std::map<LayerKey, StepSums> out;
  if (passes.empty()) return out;
  const PassProfile& steady = passes.back();
  for (size_t i = 0; i < steady.size(); ++i) {
    std::vector<double> times;
    for (const auto& pass : passes)
      if (pass.size() == steady.size()) times.push_back(pass[i].seconds);
    StepSums& sums = out[{steady[i].layer, steady[i].primitive}];
    sums.ms += median(times) * 1e3;
    sums.gflop += steady[i].flops * 1e-9;
    sums.mb += steady[i].bytes * 1e-6;
  }
  return out;
}

// {"ms", "gflop", "mb", "flop_per_byte", "gflops_per_s"} of some steps.
nlohmann::json work_json(double ms, double gflop, double mb) {
  return {{"ms", ms},
          {"gflop", gflop},
          {"mb", mb},
          {"flop_per_byte", mb > 0 ? gflop * 1e3 / mb : 0.0},
          {"gflops_per_s", ms > 0 ? gflop / (ms * 1e-3) : 0.0}};
}

// Per layer kind and for the whole pass, forward and forward+backward (the
// training forward plus the backward): the "layers" and "unet" entries of the
// breakdown. The whole pass takes its time from the unprofiled passes, and its
// work is the profiled steps' times `scale` (the batch over the profiled
// part's samples, when the pass was split among teams: exact for FLOPs, and
// for bytes when the parts are equal, as each part reads the weights once).
void add_work_summary(nlohmann::json& breakdown, double forward_pass_ms, double train_pass_ms, double scale) {
  std::map<std::string, std::array<double, 6>> by_layer;  // forward ms, gflop, mb; f+b ms, gflop, mb
  std::array<double, 6> total{};
  for (const auto& r : breakdown.at("rows")) {
    const std::array<double, 6> v = {r.at("forward_ms").get<double>(),
                                     r.at("forward_gflop").get<double>(),
                                     r.at("forward_mb").get<double>(),
                                     r.at("train_forward_ms").get<double>() + r.at("backward_ms").get<double>(),
                                     r.at("train_forward_gflop").get<double>() + r.at("backward_gflop").get<double>(),
                                     r.at("train_forward_mb").get<double>() + r.at("backward_mb").get<double>()};
    auto& layer = by_layer[r.at("layer").get<std::string>()];
    for (size_t i = 0; i < v.size(); ++i) layer[i] += v[i], total[i] += v[i];
  }
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& [name, v] : by_layer) {
    layers.push_back({{"layer", name}, {"forward", work_json(v[0], v[1], v[2])},
                      {"forward_backward", work_json(v[3], v[4], v[5])}});
  }
  breakdown["layers"] = layers;
  breakdown["unet"] = {{"forward", work_json(forward_pass_ms, total[1] * scale, total[2] * scale)},
                       {"forward_backward", work_json(train_pass_ms, total[4] * scale, total[5] * scale)}};
}

std::string fixed_text(double v, int digits) {
  std::ostringstream text;
  text << std::fixed << std::setprecision(digits) << v;
  return text.str();
}

// Per layer kind (in the order of `layers`) and for the whole pass: GFLOP, MB
// moved, FLOP/byte and GFLOP/s, forward and forward+backward.
template <typename Layers>
void print_work(const nlohmann::json& breakdown, const Layers& layers, std::ostream& out) {
  if (!breakdown.contains("layers")) return;
  out << "work per layer kind (FLOP: 2*MACs of convolutions, inner products and matmuls, one per element written by "
         "other primitives, none for copies; bytes: each memory a step reads or writes, once per step):\n"
      << "  " << std::left << std::setw(14) << "layer kind" << std::right << std::setw(10) << "fwd GFLOP"
      << std::setw(9) << "fwd MB" << std::setw(9) << "FLOP/B" << std::setw(10) << "GFLOP/s" << std::setw(11)
      << "f+b GFLOP" << std::setw(9) << "f+b MB" << std::setw(9) << "FLOP/B" << std::setw(10) << "GFLOP/s" << "\n";
  auto line = [&](const std::string& name, const nlohmann::json& entry) {
    out << "  " << std::left << std::setw(14) << name << std::right;
    for (const char* pass : {"forward", "forward_backward"}) {
      const nlohmann::json& w = entry.at(pass);
      out << std::setw(std::string(pass) == "forward" ? 10 : 11) << fixed_text(w.at("gflop").get<double>(), 2)
          << std::setw(9) << fixed_text(w.at("mb").get<double>(), 0) << std::setw(9)
          << fixed_text(w.at("flop_per_byte").get<double>(), 2) << std::setw(10)
          << fixed_text(w.at("gflops_per_s").get<double>(), 1);
    }
    out << "\n";
  };
  for (const auto& [name, sums] : layers) {
    for (const auto& entry : breakdown.at("layers"))
      if (entry.at("layer") == name) line(name, entry);
  }
  line("U-Net pass", breakdown.at("unet"));
  out << "  (U-Net pass: every step's work over the median unprofiled pass time"
      << (breakdown.contains("profiled_part") ? "; part 0's work scaled to the batch" : "") << ")\n";
}

}  // namespace

void print_unet_breakdown(const nlohmann::json& breakdown, std::ostream& out) {
  if (!breakdown.contains("rows")) return;
  struct Sums {
    double forward = 0, train_forward = 0, backward = 0;
  };
  std::map<std::string, Sums> by_layer;
  Sums total;
  for (const auto& r : breakdown.at("rows")) {
    Sums& s = by_layer[r.at("layer").get<std::string>()];
    for (Sums* t : {&s, &total}) {
      t->forward += r.at("forward_ms").get<double>();
      t->train_forward += r.at("train_forward_ms").get<double>();
      t->backward += r.at("backward_ms").get<double>();
    }
  }
  const auto share = [](double part, double whole) { return whole > 0 ? fixed_text(100 * part / whole, 1) + "%" : "-"; };
  const double train_total = total.train_forward + total.backward;
  if (breakdown.contains("profiled_part")) {
    const nlohmann::json& part = breakdown.at("profiled_part");
    out << "the batch of " << part.at("batch").get<int64_t>() << " split into " << part.at("parts").get<int>()
        << " parts, one per team: the steps are part 0's (" << part.at("samples").get<int64_t>()
        << " samples, each step waited for on its team; the other parts run unprofiled beside it)\n";
  }
  out << "time per layer kind, ms per pass (per step the median of " << breakdown.at("passes").get<int>()
      << " passes, each step waited for):\n"
      << "  " << std::left << std::setw(14) << "layer kind" << std::right << std::setw(10) << "forward" << std::setw(8)
      << "share" << std::setw(12) << "train fwd" << std::setw(10) << "backward" << std::setw(10) << "fwd+bwd"
      << std::setw(8) << "share" << "\n";
  auto line = [&](const std::string& name, const Sums& s) {
    out << "  " << std::left << std::setw(14) << name << std::right << std::setw(10) << fixed_text(s.forward, 1)
        << std::setw(8) << share(s.forward, total.forward) << std::setw(12) << fixed_text(s.train_forward, 1)
        << std::setw(10) << fixed_text(s.backward, 1) << std::setw(10)
        << fixed_text(s.train_forward + s.backward, 1) << std::setw(8)
        << share(s.train_forward + s.backward, train_total) << "\n";
  };
  std::vector<std::pair<std::string, Sums>> layers(by_layer.begin(), by_layer.end());
  std::stable_sort(layers.begin(), layers.end(), [](const auto& a, const auto& b) {
    return a.second.train_forward + a.second.backward + a.second.forward >
           b.second.train_forward + b.second.backward + b.second.forward;
  });
  for (const auto& [name, s] : layers) line(name, s);
  line("all steps", total);
  out << "  " << std::left << std::setw(14) << "whole pass" << std::right << std::setw(10)
      << fixed_text(breakdown.at("forward_pass_ms").get<double>(), 1) << std::setw(20) << ""
      << std::setw(20) << fixed_text(breakdown.at("train_pass_ms").get<double>(), 1) << "\n";
  print_work(breakdown, layers, out);
  out << "per layer and primitive kind, ms per pass:\n"
      << "  " << std::left << std::setw(14) << "layer kind" << std::setw(22) << "primitive" << std::right
      << std::setw(10) << "forward" << std::setw(12) << "train fwd" << std::setw(10) << "backward" << "\n";
  for (const auto& [name, sums] : layers) {
    for (const auto& r : breakdown.at("rows")) {
      if (r.at("layer") != name) continue;
      out << "  " << std::left << std::setw(14) << name << std::setw(22) << r.at("primitive").get<std::string>()
          << std::right << std::setw(10) << fixed_text(r.at("forward_ms").get<double>(), 2) << std::setw(12)
          << fixed_text(r.at("train_forward_ms").get<double>(), 2) << std::setw(10)
          << fixed_text(r.at("backward_ms").get<double>(), 2) << "\n";
    }
  }
}

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
          {"teams", settings.teams},
          {"iters", settings.iters},
          {"warmup", settings.warmup},
          {"isa", isa},
          {"precision", enum_name(settings.precision)},
          {"convolution", enum_name(settings.convolution)},
          {"bf16_backward", enum_name(settings.bf16_backward)},
          {"activation_layout", enum_name(settings.activation_layout)},
          {"activation_layout_used", enum_name(activation_layout_used)},
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
  if (settings.breakdown) j["breakdown"] = breakdown;
  if (settings.bandwidth) j["memory_bandwidth_gb_per_s"] = bandwidth.gb_per_s();
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
  if (settings.batch < 1) throw bad_option("--batch", "must be >= 1");
  if (settings.iters < 1) throw bad_option("--iters", "must be >= 1");
  if (settings.warmup < 0) throw bad_option("--warmup", "must be >= 0");
  if (settings.size < 0) throw bad_option("--size", "must be >= 0");
  if (settings.threads < 0) throw bad_option("--threads", "must be >= 0");
  if (settings.teams < 1) throw bad_option("--teams", "must be >= 1");
  const UNetConfig config = UNetConfig::resolve(settings.config);
  UNetBenchResult result;
  result.settings = settings;
  UNetBenchSettings& s = result.settings;
  if (s.size == 0) s.size = config.sample_size;
  if (s.threads == 0) s.threads = usable_cpus();
  if (const std::string problem = teams_problem(s.threads, s.teams); !problem.empty()) {
    throw bad_option("--teams", problem);
  }
  omp_set_num_threads(s.threads);
  oneapi::tbb::global_control parallelism(oneapi::tbb::global_control::max_allowed_parallelism,
                                          static_cast<size_t>(s.threads));
  const int64_t batch = s.batch, size = s.size;

  Device device(DeviceSpec::parse("cpu"));
  auto model = make_unet(config, device);
  model->init_random(s.seed);
  model->set_precision(s.precision);
  model->set_conv_algorithm(s.convolution);
  model->set_bf16_backward(s.bf16_backward);
  model->set_activation_layout(s.activation_layout);
  model->set_teams(s.teams);
  result.activation_layout_used =
      resolved_activation_layout(s.activation_layout, s.precision, model->native_kernels(), device.engine());
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
         << s.threads << " OpenMP thread(s)"
         << (s.teams > 1 ? " in " + std::to_string(s.teams) + " teams (the batch split among them)" : "") << ", "
         << result.parameters << " parameters, " << enum_name(s.precision)
         << " convolutions (" << enum_name(s.convolution) << ", bf16 backward " << enum_name(s.bf16_backward)
         << ", activations " << enum_name(s.activation_layout) << ": " << enum_name(result.activation_layout_used)
         << ")\n"
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

  if (s.bandwidth) {
    BandwidthSettings probe;
    probe.threads = s.threads;
    probe.iters = 10;  // more passes than the default: a VM's bandwidth varies more than its matmul peak
    probe.warmup = 2;
    result.bandwidth = measure_bandwidth(probe);
    if (log) {
      *log << "memory bandwidth: " << std::setprecision(1) << result.bandwidth.gb_per_s() << " GB/s ("
           << probe.mib << " MiB copied, " << result.bandwidth.implementation << ")\n"
           << std::setprecision(3);
    }
  }

  // The probes ran on every thread; a pass runs on this thread's team and its helpers' (UNetModel::set_teams).
  omp_set_num_threads(s.threads / s.teams);
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
      // As after an optimiser step: the pass converts the weights again.
      model->params_written();
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

  if (s.breakdown) {
    // As many passes again, profiled (each step waited for), after the timed ones.
    UNetModel::StepProfiles inference, training;
    std::vector<double> forward_pass_s, train_pass_s;
    if (s.mode != UNetBenchMode::train) {
      // Unprofiled: the weights converted for the parameters the training passes left.
      model->forward(x, t, false);
      model->profile_steps(&inference);
      for (int i = 0; i < s.iters; ++i) {
        const auto t0 = clock::now();
        auto r = model->forward(x, t, false);
        forward_pass_s.push_back(seconds_since(t0));
      }
    }
    if (s.mode != UNetBenchMode::forward) {
      model->profile_steps(&training);
      for (int i = 0; i < s.iters; ++i) {
        model->zero_grads();
        model->params_written();
        const auto t0 = clock::now();
        auto r = model->forward(x, t, true);
        model->backward(*r.state, g);
        train_pass_s.push_back(seconds_since(t0));
      }
    }
    model->profile_steps(nullptr);
    std::map<LayerKey, std::array<StepSums, 3>> rows;  // forward, train forward, backward
    for (const auto& [key, sums] : step_sums(inference.forward)) rows[key][0] = sums;
    for (const auto& [key, sums] : step_sums(training.forward)) rows[key][1] = sums;
    for (const auto& [key, sums] : step_sums(training.backward)) rows[key][2] = sums;
    nlohmann::json table = nlohmann::json::array();
    for (const auto& [key, v] : rows) {
      nlohmann::json row = {{"layer", key.first}, {"primitive", key.second}};
      const char* const passes[] = {"forward", "train_forward", "backward"};
      for (size_t i = 0; i < 3; ++i) {
        row[std::string(passes[i]) + "_ms"] = v[i].ms;
        row[std::string(passes[i]) + "_gflop"] = v[i].gflop;
        row[std::string(passes[i]) + "_mb"] = v[i].mb;
      }
      table.push_back(row);
    }
    result.breakdown = {{"passes", s.iters},
                        {"forward_pass_ms", median(forward_pass_s) * 1e3},
                        {"train_pass_ms", median(train_pass_s) * 1e3},
                        {"rows", table}};
    // A split pass profiles its part 0 only (UNetModel::profile_steps).
    const int parts = static_cast<int>(std::min<int64_t>(s.teams, batch));
    const PartRange part0 = part_range(batch, parts, 0);
    if (parts > 1) {
      result.breakdown["profiled_part"] = {{"parts", parts}, {"samples", part0.end - part0.begin}, {"batch", batch}};
    }
    add_work_summary(result.breakdown, result.forward.median * 1e3, result.train.median * 1e3,
                     static_cast<double>(batch) / static_cast<double>(part0.end - part0.begin));
  }
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
    print_unet_breakdown(result.breakdown, *log);
  }
  return result;
}

namespace {

OptionTable bench_unet_options() {
  return {shared::unet_config().fallback("unet-s"),
          shared::batch(),
          OptionSpec::integer("size", "PIXELS", "image side (0: the config's sample_size)").range(0, 4096).fallback("0"),
          shared::threads().fallback("0"),
          shared::teams().fallback("1"),
          OptionSpec::integer("iters", "K", "timed passes of each kind").range(1, 1 << 20).fallback("5"),
          shared::warmup().fallback("1"),
          shared::unet_mode().fallback("both"),
          shared::precision(),
          shared::convolution(),
          shared::bf16_backward(),
          shared::activation_layout(),
          shared::seed().fallback("1"),
          shared::breakdown(),
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
  s.teams = static_cast<int>(options.integer("teams"));
  s.iters = static_cast<int>(options.integer("iters"));
  s.warmup = static_cast<int>(options.integer("warmup"));
  s.seed = static_cast<uint64_t>(options.integer("seed"));
  s.matmul_peak = options.flag("peak");
  s.breakdown = options.flag("breakdown");
  s.mode = enum_option<UNetBenchMode>(options, "mode");
  s.precision = enum_option<Precision>(options, "precision");
  s.convolution = enum_option<ConvAlgorithm>(options, "convolution");
  s.bf16_backward = enum_option<Bf16Backward>(options, "bf16-backward");
  s.activation_layout = enum_option<ActivationLayout>(options, "activation-layout");
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
