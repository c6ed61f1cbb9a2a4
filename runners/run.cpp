// `diffuflow run`: validate a pipeline, make its output folder, build the
// graph, run it, and write the resolved pipeline, metrics, profile and trace.
#include "graph/device.hpp"
#include "graph/pipeline.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <oneapi/tbb/global_control.h>

#include <chrono>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

namespace diffuflow {

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

std::atomic<bool>* g_stop_flag = nullptr;
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_signal(int sig) {
  if (g_signal != 0) std::_Exit(128 + sig);  // a second signal exits at once
  g_signal = sig;
  if (g_stop_flag) g_stop_flag->store(true);
}

std::string timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y%m%d-%H%M%S", &tm);
  return buffer;
}

// A new folder for this run. An explicit --out that already holds files is
// refused: an earlier run's results are never overwritten silently.
fs::path make_out_dir(const po::variables_map& vm, const std::string& pipeline_name) {
  if (vm.count("out")) {
    const fs::path dir = vm["out"].as<std::string>();
    if (fs::exists(dir) && !fs::is_empty(dir)) {
      throw ConfigError(SourceLocation{"--out", 0, 0, ""},
                        "output folder '" + dir.string() + "' already holds files; choose another folder");
    }
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw std::runtime_error("cannot create output folder '" + dir.string() + "': " + ec.message());
    return dir;
  }
  const fs::path base = fs::path("runs") / (pipeline_name + "-" + timestamp());
  fs::path dir = base;
  for (int i = 2; fs::exists(dir); ++i) dir = base.string() + "-" + std::to_string(i);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error("cannot create output folder '" + dir.string() + "': " + ec.message());
  return dir;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

int run_pipeline(const std::vector<std::string>& args) {
  po::options_description options("run options");
  options.add_options()
      ("set", po::value<std::vector<std::string>>()->composing(), "override node.param=value (type-checked)")
      ("out", po::value<std::string>(), "output folder (default runs/<pipeline>-<timestamp>)")
      ("device", po::value<std::string>(), "cpu | gpu | gpu:N (overrides the pipeline's device)")
      ("threads", po::value<int>(), "cores to use (overrides the pipeline's threads; 0: all)")
      ("max-steps", po::value<long long>(), "stop each source after this many packets")
      ("max-time", po::value<double>(), "stop the sources after this many seconds; in-flight work finishes")
      ("prefetch", po::value<int>()->default_value(4), "packets each source may have in flight")
      ("trace", po::value<std::string>(), "write a Chrome trace (open in Perfetto) to this file")
      ("quiet,q", "no profile table at the end");
  po::variables_map vm;
  const std::string usage =
      "diffuflow run P.yaml [--set node.param=value ...] [--out DIR] [--device cpu|gpu] [--threads N] "
      "[--max-steps N] [--max-time SECONDS] [--trace FILE]";
  if (!parse_command_line(args, options, vm, usage)) return kExitOk;

  PipelineSpec spec = load_from_command_line(vm);
  if (vm.count("device")) {
    const std::string device = vm["device"].as<std::string>();
    try {
      DeviceSpec::parse(device);
    } catch (const std::invalid_argument& e) {
      throw ConfigError(SourceLocation{"--device", 0, 0, ""}, e.what());
    }
    spec.device = device;
  }
  if (vm.count("threads")) {
    const int threads = vm["threads"].as<int>();
    if (threads < 0) throw ConfigError(SourceLocation{"--threads", 0, 0, ""}, "threads must be >= 0");
    spec.threads = threads;
  }
  RunOptions run_options;
  run_options.prefetch = vm["prefetch"].as<int>();
  if (run_options.prefetch < 1) throw ConfigError(SourceLocation{"--prefetch", 0, 0, ""}, "prefetch must be >= 1");
  if (vm.count("max-time")) {
    run_options.max_time_s = vm["max-time"].as<double>();
    if (!(run_options.max_time_s > 0)) throw ConfigError(SourceLocation{"--max-time", 0, 0, ""}, "must be > 0");
  }
  long long max_steps = -1;
  if (vm.count("max-steps")) {
    max_steps = vm["max-steps"].as<long long>();
    if (max_steps < 0) throw ConfigError(SourceLocation{"--max-steps", 0, 0, ""}, "must be >= 0");
  }

  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  const int threads = spec.threads > 0 ? spec.threads : cores;
  run_options.compute_threads = threads;
  oneapi::tbb::global_control parallelism(oneapi::tbb::global_control::max_allowed_parallelism,
                                          static_cast<size_t>(std::max(1, threads)));

  auto device = std::make_shared<Device>(DeviceSpec::parse(spec.device));
  const fs::path out_dir = make_out_dir(vm, spec.name);
  RunContext ctx(device, spec.seed);
  ctx.deterministic = spec.deterministic;
  ctx.threads = threads;
  ctx.max_steps = max_steps;
  ctx.set_out_dir(out_dir);
  ctx.set_metrics(std::make_shared<MetricsLog>(out_dir / "metrics.jsonl"));
  write_text(out_dir / "pipeline.yaml", spec.resolved_yaml());
  if (vm.count("trace")) run_options.trace_file = vm["trace"].as<std::string>();

  std::cerr << "diffuflow: running '" << spec.name << "' on " << device->spec().str() << " ("
            << describe_cpu_model() << ", ISA " << describe_cpu_isa() << ", " << describe_versions() << ", "
            << threads << " threads) -> " << out_dir.string() << "\n";

  std::unique_ptr<Pipeline> pipeline;
  try {
    pipeline = std::make_unique<Pipeline>(spec, ctx, run_options);
  } catch (...) {
    // Nothing ran: leave no folder that looks like a result.
    std::error_code ignored;
    fs::remove_all(out_dir, ignored);
    throw;
  }

  g_stop_flag = &ctx.stop_flag();
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  RunReport report = pipeline->run();
  pipeline.reset();  // nodes and resources finish their work (final checkpoints) here
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  g_stop_flag = nullptr;

  write_text(out_dir / "profile.json", report.json());
  if (!vm.count("quiet")) std::cerr << report.table();
  std::cerr << "diffuflow: results in " << out_dir.string() << "\n";
  if (g_signal != 0) return 128 + g_signal;
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(run,
                           "run P.yaml [--set node.param=value ...] [--out DIR] [--device cpu|gpu] [--threads N] "
                           "[--max-steps N] [--max-time SECONDS] [--trace FILE]",
                           "run a pipeline; results, metrics and profile go to its output folder", run_pipeline);

}  // namespace diffuflow
