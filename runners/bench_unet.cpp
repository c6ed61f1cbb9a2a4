// `diffuflow bench-unet`: throughput of the U-Net's forward and
// forward+backward passes on the CPU, with random weights and inputs.
//
//   diffuflow bench-unet --config unet-s --batch 64 --threads 2 --iters 5 --warmup 2 [--json out.json]
//
// Prints images/s (median, min, max over the timed iterations), achieved
// GFLOP/s (convolutions, linears and attention matmuls counted analytically
// as 2*MACs; a backward pass counts twice its forward), the peak resident
// memory of the process and the ISA oneDNN dispatches to.
#include "graph/atomic_file.hpp"
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "nodes/model/unet.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <random>
#include <sstream>

namespace diffuflow {

namespace po = boost::program_options;

namespace {

// Multiply-accumulates of one image's forward pass (SPEC.md "Blocks").
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

struct Stats {
  double median = 0, min = 0, max = 0;
};

Stats stats_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  Stats s;
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

int run_bench_unet(const std::vector<std::string>& args) {
  po::options_description options("bench-unet options");
  options.add_options()("config", po::value<std::string>()->default_value("unet-s"),
                        "U-Net config: a built-in name or a diffusers config.json");
  options.add_options()("batch", po::value<int64_t>()->default_value(64), "images per pass");
  options.add_options()("size", po::value<int64_t>()->default_value(0), "image size (0: the config's sample_size)");
  options.add_options()("threads", po::value<int>()->default_value(0), "OpenMP threads (0: the runtime's default)");
  options.add_options()("iters", po::value<int>()->default_value(5), "timed iterations of each kind");
  options.add_options()("warmup", po::value<int>()->default_value(1), "untimed iterations before each kind");
  options.add_options()("mode", po::value<std::string>()->default_value("both"), "forward | train | both");
  options.add_options()("precision", po::value<std::string>()->default_value("f32"),
                        "convolution arithmetic: f32 or bf16 (mixed precision)");
  options.add_options()("seed", po::value<uint64_t>()->default_value(1), "random seed for weights and inputs");
  options.add_options()("json", po::value<std::string>(), "also write the results as JSON to this file");
  po::variables_map vm;
  if (!parse_command_line(args, options, vm,
                          "diffuflow bench-unet [--config unet-s] [--batch 64] [--threads N] [--iters K] "
                          "[--warmup W] [--precision f32|bf16] [--json FILE]",
                          "")) {
    return kExitOk;
  }
  const UNetConfig config = UNetConfig::resolve(vm["config"].as<std::string>());
  const int64_t batch = vm["batch"].as<int64_t>();
  const int64_t size = vm["size"].as<int64_t>() > 0 ? vm["size"].as<int64_t>() : config.sample_size;
  const int iters = vm["iters"].as<int>(), warmup = vm["warmup"].as<int>();
  const std::string mode = vm["mode"].as<std::string>();
  if (batch < 1 || iters < 1 || warmup < 0) {
    throw ConfigError(SourceLocation{"command line", 0, 0, "--batch"}, "batch and iters must be >= 1, warmup >= 0");
  }
  if (mode != "forward" && mode != "train" && mode != "both") {
    throw ConfigError(SourceLocation{"command line", 0, 0, "--mode"}, "mode must be forward, train or both");
  }
  const std::string precision = vm["precision"].as<std::string>();
  Precision arithmetic;
  try {
    arithmetic = parse_enum<Precision>(precision, "precision");
  } catch (const ConfigError& e) {
    throw ConfigError(SourceLocation{"command line", 0, 0, "--precision"}, e.message());
  }
  if (vm["threads"].as<int>() > 0) omp_set_num_threads(vm["threads"].as<int>());
  const int threads = omp_get_max_threads();

  Device device(DeviceSpec::parse("cpu"));
  auto model = make_unet(config, device);
  model->init_random(vm["seed"].as<uint64_t>());
  model->set_precision(arithmetic);

  std::mt19937_64 rng(vm["seed"].as<uint64_t>() + 1);
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
  using clock = std::chrono::steady_clock;
  auto seconds_since = [](clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };

  std::cout << "bench-unet: config " << vm["config"].as<std::string>() << ", batch " << batch << ", " << size << "x"
            << size << ", " << threads << " OpenMP thread(s), " << model->param_count() << " parameters, " << precision << " convolutions\n"
            << "isa: " << describe_cpu_isa() << "\n"
            << std::fixed << std::setprecision(3) << "forward GFLOP per image: " << fwd_flops * 1e-9 << "\n";

  std::vector<double> fwd_times, train_times;
  double first_forward_s = 0, first_train_s = 0;
  if (mode != "train") {
    for (int i = 0; i < warmup + iters; ++i) {
      const auto t0 = clock::now();
      auto r = model->forward(x, t, false);
      const double s = seconds_since(t0);
      if (i == 0) first_forward_s = s;
      if (i >= warmup) fwd_times.push_back(s);
    }
  }
  if (mode != "forward") {
    for (int i = 0; i < warmup + iters; ++i) {
      model->zero_grads();
      const auto t0 = clock::now();
      auto r = model->forward(x, t, true);
      model->backward(*r.state, g);
      const double s = seconds_since(t0);
      if (i == 0) first_train_s = s;
      if (i >= warmup) train_times.push_back(s);
    }
  }

  const Stats f = stats_of(fwd_times), tr = stats_of(train_times);
  auto ips = [&](double s) { return s > 0 ? static_cast<double>(batch) / s : 0.0; };
  const double rss = peak_rss_mib();
  std::cout << std::setprecision(1);
  if (!fwd_times.empty()) {
    std::cout << "forward:          " << ips(f.median) << " images/s (min " << ips(f.max) << ", max " << ips(f.min)
              << "), " << f.median * 1e3 << " ms/pass, " << fwd_flops * batch / f.median * 1e-9
              << " GFLOP/s; first pass " << first_forward_s * 1e3 << " ms\n";
  }
  if (!train_times.empty()) {
    std::cout << "forward+backward: " << ips(tr.median) << " images/s (min " << ips(tr.max) << ", max "
              << ips(tr.min) << "), " << tr.median * 1e3 << " ms/step, " << 3 * fwd_flops * batch / tr.median * 1e-9
              << " GFLOP/s; first step " << first_train_s * 1e3 << " ms\n";
  }
  std::cout << "peak RSS: " << rss << " MiB\n";

  if (vm.count("json")) {
    std::ostringstream js;
    js << std::setprecision(6) << "{\n"
       << "  \"config\": \"" << vm["config"].as<std::string>() << "\",\n"
       << "  \"batch\": " << batch << ",\n  \"image_size\": " << size << ",\n  \"threads\": " << threads << ",\n"
       << "  \"iters\": " << iters << ",\n  \"warmup\": " << warmup << ",\n"
       << "  \"isa\": \"" << describe_cpu_isa() << "\",\n"
       << "  \"precision\": \"" << precision << "\",\n"
       << "  \"gflops_per_image_forward\": " << fwd_flops * 1e-9 << ",\n"
       << "  \"forward_images_per_s\": " << ips(f.median) << ",\n"
       << "  \"forward_images_per_s_min\": " << ips(f.max) << ",\n"
       << "  \"forward_images_per_s_max\": " << ips(f.min) << ",\n"
       << "  \"forward_gflops_per_s\": " << (f.median > 0 ? fwd_flops * batch / f.median * 1e-9 : 0.0) << ",\n"
       << "  \"forward_backward_images_per_s\": " << ips(tr.median) << ",\n"
       << "  \"forward_backward_images_per_s_min\": " << ips(tr.max) << ",\n"
       << "  \"forward_backward_images_per_s_max\": " << ips(tr.min) << ",\n"
       << "  \"forward_backward_gflops_per_s\": "
       << (tr.median > 0 ? 3 * fwd_flops * batch / tr.median * 1e-9 : 0.0) << ",\n"
       << "  \"peak_rss_mib\": " << rss << "\n}\n";
    const std::string path = vm["json"].as<std::string>();
    write_file_atomically(path, js.str());
    std::cout << "wrote " << path << "\n";
  }
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(bench_unet,
                           "bench-unet [--config unet-s] [--batch 64] [--threads N] [--iters K] [--warmup W] "
                           "[--precision f32|bf16] [--json FILE]",
                           "time the U-Net's forward and forward+backward passes", run_bench_unet);

}  // namespace diffuflow
