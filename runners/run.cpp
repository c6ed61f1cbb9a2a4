// `diffuflow run`: validate a pipeline, make its output folder, build the
// graph, run it, and write the resolved pipeline, metrics, profile and trace.
#include "graph/atomic_file.hpp"
#include "graph/device.hpp"
#include "graph/pipeline.hpp"
#include "graph/safetensors.hpp"
#include "graph/world.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"
#include "runners/run.hpp"

#include <oneapi/tbb/global_control.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <iomanip>
#include <mutex>
#include <sstream>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

namespace diffuflow {

namespace fs = std::filesystem;

namespace {

RunContext* g_stopping = nullptr;
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_signal(int sig) {
  if (g_signal != 0) std::_Exit(128 + sig);  // a second signal exits at once
  g_signal = sig;
  if (g_stopping) g_stopping->request_stop();  // with several processes: a stop they agree on
}

// FNV-1a of a text: the pipeline every process runs, compared before training.
uint64_t text_hash(const std::string& text) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ULL;
  return h;
}

// Every process must run the same resolved pipeline with the same run options
// (an MPMD launch or a --set given to one rank would silently train something
// else): compared by hash before anything runs. Returns what differs, or "".
std::string check_same_pipeline(World& world, const std::string& resolved) {
  const std::vector<std::string> all = world.allgather(std::to_string(text_hash(resolved)));
  std::string differing;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differing += (differing.empty() ? "" : ", ") + std::to_string(r);
  if (differing.empty()) return "";
  return "rank(s) " + differing + " of " + std::to_string(world.size()) +
         " run another pipeline than rank 0 (a different file, --set or run option): every process must run the "
         "same one";
}

// The world, as a comment at the top of the resolved pipeline.
std::string world_comment(World& world, const std::vector<std::string>& hosts) {
  std::ostringstream out;
  out << "# world: " << world.size() << (world.size() == 1 ? " process" : " processes");
  if (!world.launcher().empty()) out << " (" << world.launcher() << ")";
  out << "; each batch_size is per process, the global batch is batch_size x " << world.size() << "\n";
  for (size_t r = 0; r < hosts.size(); ++r) out << "#   rank " << r << " on " << hosts[r] << "\n";
  return out.str();
}

std::string timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y%m%d-%H%M%S", &tm);
  return buffer;
}

// A new folder for this run (`out` empty: under runs/). An explicit --out that already holds files is
// refused: an earlier run's results are never overwritten silently.
fs::path make_out_dir(const std::string& out, const std::string& pipeline_name) {
  if (!out.empty()) {
    const fs::path dir = out;
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

// The step a training checkpoint was written at (its "step" metadata).
int64_t checkpoint_step(const fs::path& path) {
  const SafetensorsFile file = SafetensorsFile::read(path);
  const auto& meta = file.metadata();
  auto it = meta.find("step");
  if (it == meta.end()) throw DataError(path.string(), "not a training checkpoint: no 'step' in its metadata");
  try {
    size_t used = 0;
    const long long step = std::stoll(it->second, &used);
    if (used == it->second.size() && step >= 0) return step;
  } catch (const std::exception&) {
  }
  throw DataError(path.string(), "the checkpoint's 'step' metadata is not a step number: '" + it->second + "'");
}

// The data position a checkpoint was written at (its "samples" metadata: items
// consumed over every process); -1 when it does not say.
int64_t checkpoint_items(const fs::path& path) {
  const auto& meta = SafetensorsFile::read(path).metadata();
  auto it = meta.find("samples");
  if (it == meta.end()) return -1;
  try {
    size_t used = 0;
    const long long items = std::stoll(it->second, &used);
    if (used == it->second.size() && items >= 0) return items;
  } catch (const std::exception&) {
  }
  throw DataError(path.string(), "the checkpoint's 'samples' metadata is not a count: '" + it->second + "'");
}

// One line every `period` seconds: steps, loss, images/s, ETA.
class ProgressLine {
 public:
  ProgressLine(RunContext& ctx, double period, double max_time, std::string name)
      : ctx_(ctx), period_(period), max_time_(max_time), name_(std::move(name)) {
    if (period_ > 0) thread_ = std::thread([this] { loop(); });
  }
  ~ProgressLine() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void loop() {
    const auto start = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(mutex_);
    int64_t last_steps = 0, last_images = 0;
    double last_t = 0;
    while (!cv_.wait_for(lock, std::chrono::duration<double>(period_), [this] { return done_; })) {
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const int64_t steps = ctx_.start_step + ctx_.steps_done();
      const int64_t images = ctx_.images_done();
      if (steps == last_steps && images == last_images) continue;
      const double rate = (steps - last_steps) / std::max(1e-9, t - last_t);
      const double image_rate = (images - last_images) / std::max(1e-9, t - last_t);
      std::ostringstream line;
      line << "[" << name_ << "] step " << steps;
      if (ctx_.max_steps > 0) line << "/" << ctx_.max_steps;
      const double loss = ctx_.metrics().latest("loss");
      if (!std::isnan(loss)) line << "  loss " << std::setprecision(4) << loss;
      const double fid = ctx_.metrics().latest("fid");  // from a sample_quality node, when there is one
      if (!std::isnan(fid)) line << "  FID " << std::setprecision(4) << fid;
      line << std::fixed << std::setprecision(1) << "  " << image_rate << " img/s  " << rate << " steps/s  elapsed "
           << format_duration(t);
      double eta = -1;
      if (ctx_.max_steps > 0 && rate > 0) eta = (ctx_.max_steps - steps) / rate;
      if (max_time_ > 0) eta = eta < 0 ? max_time_ - t : std::min(eta, max_time_ - t);
      if (eta >= 0) line << "  ETA " << format_duration(eta);
      ctx_.info(line.str());
      last_steps = steps;
      last_images = images;
      last_t = t;
    }
  }

  static std::string format_duration(double seconds) {
    const long long s = static_cast<long long>(seconds + 0.5);
    std::ostringstream out;
    if (s >= 3600) out << s / 3600 << "h";
    if (s >= 60) out << (s / 60) % 60 << "m";
    out << s % 60 << "s";
    return out.str();
  }

  RunContext& ctx_;
  double period_, max_time_;
  std::string name_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

void write_text(const fs::path& path, const std::string& text) { write_file_atomically(path, text); }

OptionTable run_options() {
  return {shared::pipeline_file(),
          shared::set_overrides(),
          shared::output(),
          shared::device(),
          shared::threads(),
          shared::teams(),
          OptionSpec::integer("max-steps", "N", "stop each source after this many packets").at_least(0),
          OptionSpec::number("max-time", "SECONDS", "stop the sources after this many seconds; in-flight work finishes"),
          shared::prefetch(),
          OptionSpec::text("trace", "FILE", "write a Chrome trace (open in Perfetto) to this file"),
          OptionSpec::text("resume", "CHECKPOINT",
                           "continue a training run from this checkpoint (weights, EMA, optimiser, step)"),
          OptionSpec::number("progress", "SECONDS", "seconds between progress lines; 0 turns them off").at_least(0).fallback("10"),
          OptionSpec::flag("quiet", "no profile table at the end").short_name('q')};
}

}  // namespace

int run_spec(PipelineSpec spec, const RunSettings& settings) {
  if (!settings.device.empty()) {
    const std::string device = settings.device;
    try {
      DeviceSpec::parse(device);
    } catch (const std::invalid_argument& e) {
      throw ConfigError(SourceLocation{"--device", 0, 0, ""}, e.what());
    }
    spec.device = device;
  }
  if (settings.threads) spec.threads = *settings.threads;
  if (spec.deterministic && spec.threads == 0) {
    throw ConfigError(SourceLocation{spec.file, 0, 0, "deterministic"},
                      "deterministic: true needs a fixed thread count (set `threads:` or --threads N): oneDNN's "
                      "results are bitwise reproducible only at an equal number of threads");
  }
  RunOptions run_options;
  run_options.prefetch = settings.prefetch;
  run_options.max_time_s = settings.max_time_s;
  const long long max_steps = settings.max_steps;

  const int threads = spec.threads > 0 ? spec.threads : usable_cpus();
  if (settings.teams) spec.teams = *settings.teams;
  run_options.compute_threads = team_threads(spec, threads);
  oneapi::tbb::global_control parallelism(oneapi::tbb::global_control::max_allowed_parallelism,
                                          static_cast<size_t>(std::max(1, threads)));

  // A checkpoint to resume from is checked before anything is created.
  fs::path resume_path;
  int64_t start_step = 0, start_items = -1;
  if (!settings.resume.empty()) {
    resume_path = settings.resume;
    start_step = checkpoint_step(resume_path);
    start_items = checkpoint_items(resume_path);
    if (max_steps >= 0 && max_steps <= start_step) {
      throw ConfigError(SourceLocation{"--max-steps", 0, 0, ""},
                        "the checkpoint is at step " + std::to_string(start_step) +
                            "; --max-steps counts from the start of training, so it must be larger");
    }
  }

  // Several processes: the same pipeline everywhere; rank 0 alone writes.
  World& world = *process_world();
  {
    std::ostringstream run_key;
    run_key << spec.resolved_yaml() << "\n# max-steps " << max_steps << " max-time " << run_options.max_time_s
            << " threads " << threads << " trace " << !settings.trace_file.empty() << " resume " << (resume_path.empty() ? "" : fs::absolute(resume_path).string());
    // Every process knows the outcome: all exit 2 together, rank 0 says why.
    const std::string mismatch = check_same_pipeline(world, run_key.str());
    if (!mismatch.empty()) {
      if (world.rank() == 0) std::cerr << "error: " << mismatch << "\n";
      return kExitBadInput;
    }
  }
  const std::vector<std::string> hosts = world.allgather(world.host());
  const bool writer = world.rank() == 0;

  auto device = std::make_shared<Device>(DeviceSpec::parse(spec.device));
  const fs::path out_dir =
      world.broadcast(writer ? make_out_dir(settings.out, spec.name).string() : "", 0);
  RunContext ctx(device, spec.seed);
  ctx.deterministic = spec.deterministic;
  ctx.threads = threads;
  ctx.teams = spec.teams;
  ctx.max_steps = max_steps;
  ctx.resume_path = resume_path;
  ctx.start_step = start_step;
  ctx.start_items = start_items;
  if (writer) {
    ctx.set_out_dir(out_dir);
    ctx.set_metrics(std::make_shared<MetricsLog>(out_dir / "metrics.jsonl"));
    write_text(out_dir / "pipeline.yaml", world_comment(world, hosts) + spec.resolved_yaml());
  }
  // Every process records its trace; rank 0 gathers them and writes the file.
  if (!settings.trace_file.empty()) run_options.trace_file = writer ? settings.trace_file : "-";

  if (writer) {
    // One write, so that no other process's message lands inside the line.
    std::ostringstream header;
    header << "diffuflow: running '" << spec.name << "' on " << device->spec().str() << " ("
              << describe_cpu_model() << ", ISA " << describe_cpu_isa() << ", " << describe_versions() << ", "
              << threads << " threads" << (spec.teams > 1 ? " in " + std::to_string(spec.teams) + " teams" : "");
    if (world.distributed()) {
      header << " x " << world.size() << " processes";
      for (size_t r = 0; r < hosts.size(); ++r) header << (r ? ", " : ": ") << "rank " << r << " on " << hosts[r];
    }
    header << ") -> " << out_dir.string() << "\n";
    std::cerr << header.str() << std::flush;
  }

  std::unique_ptr<Pipeline> pipeline;
  try {
    pipeline = std::make_unique<Pipeline>(spec, ctx, run_options);
  } catch (...) {
    // Nothing ran: leave no folder that looks like a result.
    std::error_code ignored;
    if (writer) fs::remove_all(out_dir, ignored);
    throw;
  }

  g_stopping = &ctx;
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  RunReport report;
  {
    ProgressLine progress(ctx, writer ? settings.progress_s : 0.0, run_options.max_time_s, spec.name);
    report = pipeline->run();
  }
  pipeline.reset();  // nodes and resources finish their work (final checkpoints) here
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  g_stopping = nullptr;
  // A signal that reached any process stopped them all at the same step: every
  // process exits with its code (128 + N), whichever got it.
  if (world.distributed()) {
    int64_t signal_number = g_signal;
    world.allreduce_max(&signal_number, 1);
    g_signal = static_cast<std::sig_atomic_t>(signal_number);
  }

  if (!writer) return g_signal != 0 ? 128 + g_signal : kExitOk;
  write_text(out_dir / "profile.json", report.json());
  if (!settings.quiet) std::cerr << report.table();
  std::cerr << "diffuflow: results in " << out_dir.string() << "\n";
  if (g_signal != 0) {
    std::cerr << "diffuflow: stopped by signal " << g_signal << " (" << strsignal(g_signal) << "), exit code "
              << 128 + g_signal << "\n";
    return 128 + g_signal;
  }
  return kExitOk;
}

namespace {

int run_pipeline(const ParsedOptions& opts) {
  PipelineSpec spec = load_from_command_line(opts);
  RunSettings settings;
  if (opts.has("out")) settings.out = opts.text("out");
  if (opts.has("device")) settings.device = opts.text("device");
  if (opts.has("threads")) settings.threads = static_cast<int>(opts.integer("threads"));
  if (opts.has("teams")) settings.teams = static_cast<int>(opts.integer("teams"));
  settings.prefetch = static_cast<int>(opts.integer("prefetch"));
  if (opts.has("max-time")) {
    settings.max_time_s = opts.number("max-time");
    if (!(settings.max_time_s > 0)) throw ConfigError(SourceLocation{"--max-time", 0, 0, ""}, "must be > 0");
  }
  if (opts.has("max-steps")) settings.max_steps = opts.integer("max-steps");
  if (opts.has("trace")) settings.trace_file = opts.text("trace");
  if (opts.has("resume")) settings.resume = opts.text("resume");
  settings.progress_s = opts.number("progress");
  settings.quiet = opts.flag("quiet");
  return run_spec(std::move(spec), settings);
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(run, "run a pipeline; results, metrics and profile go to its output folder", run_options(),
                           run_pipeline);

}  // namespace diffuflow
