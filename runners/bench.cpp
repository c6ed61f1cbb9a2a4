// `diffuflow bench KIND`: throughput of the real graphs, measured in-process.
//
//   diffuflow bench train  [--config unet-s] [--batch 64] [--threads N] [--warmup W] [--steps K] [--repeats R]
//   diffuflow bench sample [...]      DDIM chains, sampler <-> model_forward
//   diffuflow bench data   [...]      the data path alone (loader, augment, timesteps, noiser)
//   diffuflow bench unet   [...]      the U-Net alone, as `diffuflow bench-unet` times it, each GFLOP/s
//                                     figure also as a fraction of the matmul peak measured just before
//   diffuflow bench matmul [--threads N] [--precision f32|bf16]   GFLOP/s of a 2048^3 oneDNN matmul
//   diffuflow bench bandwidth [--threads N] [--mib 256]           GB/s of a oneDNN reorder copying M MiB
//
//   --sweep threads=1,2 | batch=16,32,64 | max_in_flight=1,2 | concurrency=NODE:1,2 | NODE.PARAM=a,b
//           | precision=f32,bf16 (bench unet, matmul; pipelines: model.precision=f32,bf16)
//           | convolution=direct,winograd (bench unet; pipelines: model.convolution=direct,winograd)
//           | bf16_backward=channels_last,blocked (bench unet; pipelines: model.bf16_backward=...)
//   --convolution by_shape|direct|winograd (bench unet: the f32 3x3 convolutions' algorithm)
//   --bf16-backward by_shape|channels_last|blocked (bench unet: bf16 training's backward convolution layout)
//   --activation-layout by_isa|blocked|channels_last (bench unet: the image activations' layout)
//   --json FILE --csv FILE --plot FILE.png
//   --breakdown (bench unet: time, FLOPs and bytes per layer kind)
//   --roofline FILE.png (bench unet: also the memory bandwidth, and the layer kinds on a roofline; implies --breakdown)
//
// Method. Each repeat builds a fresh Pipeline from pipelines/bench_KIND.yaml
// (with --set, --config and --batch applied), with no output folder (nothing
// is written), and runs it with --max-steps W+K+P (P = --prefetch, the most the
// data path runs ahead, so it is as busy during the window as in a long run;
// sample runs W+K chains). Every node invocation is
// recorded with its step (the Chrome trace the pipeline can write, kept in a
// temporary file and removed at once). A step is complete when the last
// invocation carrying its step number ends; with c_1 <= c_2 <= ... the sorted
// completion times, the measured window is (c_W, c_{W+K}] and
//
//   images/s = K * batch / (c_{W+K} - c_W).
//
// So building the pipeline (model resources, weights) and the W warm-up steps
// (oneDNN primitive creation, first touch of memory) are excluded, and the
// rate is the steady state of the whole graph, data path included. The
// per-node figures (busy %, mean ms) are those of the same window. Peak RSS is
// the high-water mark of each repeat (reset through /proc/self/clear_refs
// where the kernel allows it, else the process's).
#include "graph/atomic_file.hpp"
#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "graph/node.hpp"
#include "graph/openmp_policy.hpp"
#include "graph/pipeline.hpp"
#include "graph/registry.hpp"
#include "graph/world.hpp"
#include "nodes/common/images.hpp"
#include "nodes/common/plots.hpp"
#include "compute/program.hpp"
#include "runners/bench_measurement.hpp"
#include "runners/bench_roofline.hpp"
#include "runners/bench_unet.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <nlohmann/json.hpp>
#include <oneapi/tbb/global_control.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

namespace diffuflow {

namespace fs = std::filesystem;
using json = nlohmann::json;

using namespace bench_cli;

namespace {

const std::set<std::string> kKinds = {"train", "sample", "data", "unet", "matmul", "bandwidth"};
const std::set<std::string> kModelTypes = {"model_forward", "diffusion_loss", "model_backward", "optimiser"};
const std::set<std::string> kSourceTypes = {"mnist_loader", "image_folder_loader", "synthetic_source", "noise_source",
                                            "toy2d_source"};

// ---- intervals ----------------------------------------------------------------------------------

struct Interval {
  double start, end;  // seconds
};

double union_clipped(std::vector<Interval> v, double lo, double hi) {
  std::sort(v.begin(), v.end(), [](const Interval& a, const Interval& b) { return a.start < b.start; });
  double covered = 0, open_s = 0, open_e = -1;
  bool open = false;
  for (const auto& i : v) {
    const double s = std::max(i.start, lo), e = std::min(i.end, hi);
    if (e <= s) continue;
    if (open && s <= open_e) {
      open_e = std::max(open_e, e);
    } else {
      if (open) covered += open_e - open_s;
      open_s = s;
      open_e = e;
      open = true;
    }
  }
  if (open) covered += open_e - open_s;
  return covered;
}

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// ---- one pipeline measurement -------------------------------------------------------------------

PipelineSpec build_spec(const Settings& s) {
  // A first load finds the nodes and resources that --config and --batch apply to.
  const std::vector<Override> user = parse_overrides(s.sets);
  const PipelineSpec plain = load_pipeline(s.pipeline, user);
  std::vector<Override> overrides;
  for (const auto& r : plain.resources) {
    if (r.type == "unet_model" && !s.config.empty()) overrides.push_back({r.name, "config", s.config});
  }
  const int64_t steps = static_cast<int64_t>(s.warmup) + s.steps;
  for (const auto& n : plain.nodes) {
    if (kSourceTypes.count(n.type) && n.params.has("batch_size")) {
      overrides.push_back({n.name, "batch_size", std::to_string(s.batch)});
      if (n.type == "noise_source") overrides.push_back({n.name, "count", std::to_string(s.batch * steps)});
    }
    if (n.type == "limiter" && s.max_in_flight) {
      overrides.push_back({n.name, "max_in_flight", std::to_string(*s.max_in_flight)});
    }
  }
  overrides.insert(overrides.end(), user.begin(), user.end());  // --set has the last word
  if (s.param) overrides.push_back(*s.param);
  PipelineSpec spec = load_pipeline(s.pipeline, overrides);
  spec.threads = resolved_threads(s.threads);
  if (s.teams > 0) spec.teams = s.teams;
  if (s.concurrency_node) {
    const int index = spec.node_index(*s.concurrency_node);
    if (index < 0) throw bad_option("--sweep", "the pipeline has no node '" + *s.concurrency_node + "'");
    auto& node = spec.nodes[static_cast<size_t>(index)];
    const NodeContract* contract = Registry::instance().node_contract(node.type);
    if (contract && contract->max_concurrency > 0 && *s.concurrency > contract->max_concurrency) {
      throw bad_option("--sweep", "node '" + node.name + "' (" + node.type + ") allows concurrency up to " +
                                      std::to_string(contract->max_concurrency));
    }
    node.concurrency = *s.concurrency;
  }
  return spec;
}

Measurement measure_pipeline(const Settings& s) {
  const PipelineSpec spec = build_spec(s);
  const int threads = resolved_threads(s.threads);
  oneapi::tbb::global_control parallelism(oneapi::tbb::global_control::max_allowed_parallelism,
                                          static_cast<size_t>(s.graph_threads > 0 ? s.graph_threads : threads));
  static int counter = 0;
  const fs::path trace =
      fs::temp_directory_path() / ("diffuflow-bench-" + std::to_string(::getpid()) + "-" + std::to_string(++counter) +
                                   ".json");
  struct Remove {
    fs::path p;
    ~Remove() {
      std::error_code ignored;
      fs::remove(p, ignored);
    }
  } remove_trace{trace};

  Measurement m;
  const bool rss_reset = reset_peak_rss();
  RunReport report;
  {
    RunContext ctx(std::make_shared<Device>(DeviceSpec::parse(spec.device)), spec.seed);
    ctx.threads = threads;
    ctx.teams = spec.teams;
    // out_dir stays empty: nothing is written. Train and data run `prefetch` steps past the window: the
    // data path works that far ahead, so the measured steps carry their share of its work as they would
    // in a long run (stopping the source at W+K would leave the last steps' loading and noising in the warm-up).
    ctx.max_steps = static_cast<int64_t>(s.warmup) + s.steps + (s.kind == "sample" ? 0 : s.prefetch);
    RunOptions options;
    options.compute_threads = team_threads(spec, threads);
    options.prefetch = s.prefetch;
    options.trace_file = trace.string();
    const auto t0 = std::chrono::steady_clock::now();
    Pipeline pipeline(spec, ctx, options);
    m.setup_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    report = pipeline.run();
  }
  // Several processes: rank 0 has every rank's events (the trace is gathered there) and measures.
  World& world = *process_world();
  if (world.rank() != 0) return m;
  m.processes = world.size();
  m.peak_rss_mib = peak_rss_mib();
  if (!rss_reset) m.extra["peak_rss_scope"] = "process";
  m.wall_s = report.wall_s;

  // Read the invocations back: per node, (start, end, step).
  std::ifstream in(trace);
  const json events = json::parse(in).at("traceEvents");
  std::map<std::string, std::vector<Interval>> by_node;
  std::map<std::string, std::string> type_of;
  std::map<int64_t, double> done;  // step -> the end of its last invocation
  double first = INFINITY;
  // Per rank (trace process rank + 1): step completions and the communication spans.
  std::map<int, std::map<int64_t, double>> rank_done;
  std::map<int, std::vector<std::pair<double, double>>> rank_wait, rank_sum;  // (end, duration) in s
  for (const auto& e : events) {
    if (e.value("ph", "") != "X") continue;
    const int pid = e.value("pid", 1);
    if (pid != 1) {
      const double end = (e.at("ts").get<double>() + e.at("dur").get<double>()) * 1e-6;
      const int64_t seq = e.at("args").value("seq", int64_t{-1});
      if (seq >= 0) rank_done[pid][seq] = std::max(rank_done[pid][seq], end);
    }
    {
      const double end = (e.at("ts").get<double>() + e.at("dur").get<double>()) * 1e-6;
      const std::string cat = e.value("cat", "");
      if (cat == "allreduce_wait") rank_wait[pid].push_back({end, e.at("dur").get<double>() * 1e-6});
      if (cat == "allreduce") rank_sum[pid].push_back({end, e.at("dur").get<double>() * 1e-6});
    }
    if (pid != 1) continue;
    const double start = e.at("ts").get<double>() * 1e-6, end = start + e.at("dur").get<double>() * 1e-6;
    const std::string name = e.at("name").get<std::string>();
    by_node[name].push_back({start, end});
    type_of[name] = e.at("cat").get<std::string>();
    first = std::min(first, start);
    const int64_t seq = e.at("args").value("seq", int64_t{-1});
    if (seq >= 0) done[seq] = std::max(done[seq], end);
  }
  std::vector<double> completions;
  for (const auto& [seq, t] : done) completions.push_back(t);
  std::sort(completions.begin(), completions.end());
  const size_t w = static_cast<size_t>(s.warmup), k = static_cast<size_t>(s.steps);
  if (completions.size() < w + k) {
    throw std::runtime_error("the pipeline completed " + std::to_string(completions.size()) + " steps, fewer than " +
                             std::to_string(w + k) + " (warm-up + measured): does its source run dry?");
  }
  const double lo = w > 0 ? completions[w - 1] : first, hi = completions[w + k - 1];
  m.window_s = hi - lo;
  m.warmup_s = lo - first;
  m.steps = static_cast<int64_t>(k);
  m.images = static_cast<int64_t>(k) * s.batch * m.processes;
  m.rate = m.window_s > 0 ? m.images / m.window_s : 0;
  std::vector<double> step_s;
  for (size_t i = w; i < w + k; ++i) step_s.push_back(completions[i] - (i > 0 ? completions[i - 1] : first));
  m.step_ms_median = median_of(step_s) * 1e3;
  // Each rank's window is its own steps W+1 .. W+K (its clock starts with its own run).
  rank_done[1] = done;
  for (int pid = 1; pid <= m.processes; ++pid) {
    std::vector<double> c;
    for (const auto& [seq, t] : rank_done[pid]) c.push_back(t);
    std::sort(c.begin(), c.end());
    if (c.size() < w + k) continue;
    const double rlo = w > 0 ? c[w - 1] : 0, rhi = c[w + k - 1];
    std::vector<double> steps_here;
    for (size_t i = std::max<size_t>(w, 1); i < w + k; ++i) steps_here.push_back(c[i] - c[i - 1]);
    auto per_step_ms = [&](const std::vector<std::pair<double, double>>& spans) {
      double sum = 0;
      for (const auto& [end, duration] : spans) sum += end > rlo && end <= rhi ? duration : 0;
      return sum / static_cast<double>(k) * 1e3;
    };
    const double exposed = per_step_ms(rank_wait[pid]), sums = per_step_ms(rank_sum[pid]);
    m.ranks.push_back({{"rank", pid - 1},
                       {"step_ms_median", median_of(steps_here) * 1e3},
                       {"exposed_comm_ms_per_step", exposed},
                       {"allreduce_ms_per_step", sums}});
    m.exposed_comm_ms = std::max(m.exposed_comm_ms, exposed);
    if (pid == 1) m.allreduce_ms = sums;
  }

  std::vector<Interval> model, compute;
  for (const auto& profile : report.nodes) {  // the pipeline's order, limiters left out
    NodeWindow n;
    n.name = profile.name;
    n.type = profile.type;
    const NodeContract* contract = Registry::instance().node_contract(n.type);
    n.device = contract && !contract->host_only;
    const auto& intervals = by_node[n.name];
    double sum = 0;
    for (const auto& i : intervals) {
      if (i.end > lo && i.end <= hi) {
        ++n.count;
        sum += i.end - i.start;
      }
    }
    n.mean_ms = n.count ? sum / n.count * 1e3 : 0;
    n.busy_fraction = m.window_s > 0 ? union_clipped(intervals, lo, hi) / m.window_s : 0;
    if (kModelTypes.count(n.type)) model.insert(model.end(), intervals.begin(), intervals.end());
    if (n.device) compute.insert(compute.end(), intervals.begin(), intervals.end());
    if (n.type == "model_forward" && m.window_s > 0) m.unet_forwards_per_s += n.count / m.window_s;
    m.nodes.push_back(n);
  }
  if (s.kind == "sample" && m.unet_forwards_per_s > 0) {
    // Chains in flight together finish together, so the completions of a few
    // chains say little about the rate; the U-Net forwards (one per denoising
    // step of a whole chain batch, serial on the compute thread) are steady.
    int64_t forwards = 0;
    for (const auto& n : m.nodes)
      if (n.type == "model_forward") forwards += static_cast<int64_t>(by_node[n.name].size());
    const double per_chain = static_cast<double>(forwards) / static_cast<double>(w + k);
    m.extra["forwards_per_chain"] = per_chain;
    m.extra["images_per_s_from_completions"] = m.rate;
    m.rate = m.unet_forwards_per_s * static_cast<double>(s.batch) / per_chain;
  }
  if (m.window_s > 0) {
    m.model_busy_fraction = union_clipped(model, lo, hi) / m.window_s;
    m.compute_busy_fraction = union_clipped(compute, lo, hi) / m.window_s;
  }
  return m;
}

// ---- results ------------------------------------------------------------------------------------

struct Row {
  std::string sweep_value;  // empty without a sweep
  double x = NAN;           // the value as a number, for the plot
  int threads = 0;
  int teams = 0;  // in effect (0: none, bench matmul and bandwidth)
  int64_t batch = 0;
  std::vector<Measurement> repeats;
  double median = 0, min = 0, max = 0;
  size_t median_index = 0;  // the repeat whose images/s is the median (the lower of two middles)
};

void summarise(Row& row) {
  std::vector<double> rates;
  for (const auto& m : row.repeats) rates.push_back(m.rate);
  row.median = median_of(rates);
  row.min = *std::min_element(rates.begin(), rates.end());
  row.max = *std::max_element(rates.begin(), rates.end());
  row.median_index = median_index(rates);
}

json node_json(const NodeWindow& n) {
  return {{"name", n.name}, {"type", n.type}, {"device", n.device}, {"count", n.count},
          {"busy_fraction", n.busy_fraction}, {"mean_ms", n.mean_ms}};
}

// The JSON and CSV name of a kind's rate.
std::string rate_key(const std::string& kind) {
  return kind == "matmul" ? "gflops_per_s" : kind == "bandwidth" ? "gb_per_s" : "images_per_s";
}
std::string rate_unit(const std::string& kind) {
  return kind == "matmul" ? "GFLOP/s" : kind == "bandwidth" ? "GB/s" : "images/s";
}

json measurement_json(const Measurement& m, const std::string& kind) {
  json j = {{rate_key(kind), m.rate},         {"window_s", m.window_s},     {"images", m.images},
            {"steps", m.steps},               {"step_ms_median", m.step_ms_median},
            {"model_busy_fraction", m.model_busy_fraction},
            {"compute_busy_fraction", m.compute_busy_fraction},
            {"unet_forwards_per_s", m.unet_forwards_per_s},
            {"setup_s", m.setup_s},           {"warmup_s", m.warmup_s},     {"wall_s", m.wall_s},
            {"peak_rss_mib", m.peak_rss_mib},  {"processes", m.processes},
            {"exposed_comm_ms_per_step", m.exposed_comm_ms}, {"allreduce_ms_per_step", m.allreduce_ms},
            {"ranks", m.ranks}};
  json nodes = json::array();
  for (const auto& n : m.nodes) nodes.push_back(node_json(n));
  j["nodes"] = nodes;
  for (const auto& [key, value] : m.extra.items()) j[key] = value;
  return j;
}

std::string fixed(double v, int digits = 1) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(digits) << v;
  return out.str();
}

void print_breakdown(const Measurement& m, std::ostream& out) {
  if (m.nodes.empty()) return;
  // Columns as wide as the longest name (communication rows: "backward.allreduce_wait").
  size_t name_width = 14, type_width = 18;
  for (const auto& n : m.nodes) {
    name_width = std::max(name_width, n.name.size() + 2);
    type_width = std::max(type_width, n.type.size() + 2);
  }
  const int nw = static_cast<int>(name_width), tw = static_cast<int>(type_width);
  out << "  " << std::left << std::setw(nw) << "node" << std::setw(tw) << "type" << std::setw(8) << "where"
      << std::right << std::setw(7) << "count" << std::setw(9) << "busy%" << std::setw(11) << "mean ms" << "\n";
  for (const auto& n : m.nodes) {
    out << "  " << std::left << std::setw(nw) << n.name << std::setw(tw) << n.type << std::setw(8)
        << (n.device ? "compute" : "tbb") << std::right << std::setw(7) << n.count << std::setw(8)
        << fixed(n.busy_fraction * 100) << "%" << std::setw(11) << fixed(n.mean_ms, 2) << "\n";
  }
}

void write_text(const std::string& path, const std::string& text) {
  try {
    write_file_atomically(path, text);
  } catch (const std::runtime_error& e) {
    throw DataError(path, e.what());
  }
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

// ---- the command --------------------------------------------------------------------------------

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, sep)) parts.push_back(part);
  return parts;
}

int parse_positive(const std::string& text, const std::string& option) {
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size() && v >= 1 && v <= (1 << 24)) return static_cast<int>(v);
  } catch (const std::exception&) {
  }
  throw bad_option(option, "'" + text + "' is not a whole number >= 1");
}

OptionTable bench_options() {
  return {OptionSpec::positional("kind", "train|sample|data|unet|matmul|bandwidth",
                                 "what to measure: the training, sampling or data graph, the U-Net alone, the "
                                 "machine's matmul peak or its memory bandwidth"),
          shared::unet_config(),
          shared::batch(),
          shared::threads().fallback("0"),
          shared::teams(),
          OptionSpec::integer("graph-threads", "N",
                              "pipelines: the graph's TBB threads (max_allowed_parallelism; 0: --threads), the "
                              "compute thread's OpenMP team keeping --threads")
              .range(0, 4096)
              .fallback("0"),
          shared::steps()
              .range(1, 1 << 20)
              .fallback("10"),
          shared::warmup().fallback("2"),
          OptionSpec::integer("repeats", "R", "repeat the whole measurement R times, each with a fresh pipeline")
              .range(1, 10000)
              .fallback("3"),
          shared::prefetch(),
          shared::unet_mode().fallback("forward"),
          OptionSpec::text("pipeline", "P.yaml", "the pipeline to run (default pipelines/bench_KIND.yaml)"),
          shared::set_overrides(),
          OptionSpec::text("sweep", "NAME=v1,v2,...",
                           "one dimension: threads=1,2 | teams=1,2,4 | batch=16,32,64 | max_in_flight=1,2 | "
                           "concurrency=NODE:1,2 | "
                           "NODE.PARAM=a,b | precision=f32,bf16 (bench unet, matmul) | convolution=direct,winograd (bench "
                           "unet) | bf16_backward=channels_last,blocked (bench unet)"),
          shared::precision().fallback(""),
          shared::convolution().fallback(""),
          shared::bf16_backward().fallback(""),
          shared::activation_layout().fallback(""),
          shared::breakdown(),
          shared::json_file(),
          OptionSpec::text("csv", "FILE", "write one CSV row per sweep value"),
          OptionSpec::text("plot", "FILE.png",
                           "write a PNG line plot of images/s (matmul: GFLOP/s; bandwidth: GB/s; min-max bars) against "
                           "the swept value"),
          OptionSpec::text("roofline", "FILE.png",
                           "bench unet: also measure the memory bandwidth, and draw each layer kind's FLOP/byte and "
                           "GFLOP/s under the bandwidth and matmul-peak roofs (implies --breakdown)"),
          OptionSpec::integer("mib", "M", "bench bandwidth: MiB copied per pass (default 256, beyond the caches)")
              .range(1, 65536)};
}

int run_bench(const ParsedOptions& opts) {
  Settings base;
  base.kind = opts.text("kind");
  if (!kKinds.count(base.kind)) {
    throw bad_option("KIND", "unknown bench '" + base.kind + "': train, sample, data, unet, matmul or bandwidth");
  }
  // unet, matmul and bandwidth run no pipeline; the last two are probes of the machine (no batch).
  const bool probe = base.kind == "matmul" || base.kind == "bandwidth";
  const bool standalone = base.kind == "unet" || probe;
  base.pipeline = opts.has("pipeline") ? opts.text("pipeline") : "pipelines/bench_" + base.kind + ".yaml";
  if (opts.has("config")) base.config = opts.text("config");
  base.batch = opts.integer("batch");
  base.threads = static_cast<int>(opts.integer("threads"));
  if (opts.has("teams")) {
    base.teams = static_cast<int>(opts.integer("teams"));
    if (probe) throw bad_option("--teams", "bench " + base.kind + " runs no U-Net");
  }
  base.graph_threads = static_cast<int>(opts.integer("graph-threads"));
  if (base.graph_threads > 0 && standalone) {
    throw bad_option("--graph-threads", "bench " + base.kind + " runs no graph; pipelines (train, sample, data) take it");
  }
  base.steps = static_cast<int>(opts.integer("steps"));
  base.warmup = static_cast<int>(opts.integer("warmup"));
  base.repeats = static_cast<int>(opts.integer("repeats"));
  base.prefetch = static_cast<int>(opts.integer("prefetch"));
  base.sets = opts.texts("set");
  const std::string mode = opts.text("mode");
  if (mode != "forward" && mode != "train" && !(mode == "both" && base.kind == "unet")) {
    throw bad_option("--mode", "bench unet times forward, train or both; the other kinds take no --mode both");
  }
  const UNetBenchMode unet_mode = parse_enum<UNetBenchMode>(mode);
  base.breakdown = opts.flag("breakdown");
  if (base.breakdown && base.kind != "unet") throw bad_option("--breakdown", "only bench unet has a breakdown");
  if (opts.has("roofline")) {
    if (base.kind != "unet") throw bad_option("--roofline", "only bench unet draws a roofline");
    if (opts.has("sweep")) throw bad_option("--roofline", "a roofline shows one run: no --sweep");
    base.roofline = opts.text("roofline");
    check_png_path(base.roofline, "--roofline");
    base.breakdown = true;
  }
  if (opts.has("precision")) {
    if (!standalone) {
      throw bad_option("--precision", "pipelines set the model's precision as a parameter: --set model.precision=bf16");
    }
    base.precision = enum_name(enum_option<Precision>(opts, "precision"));
    if (base.kind == "bandwidth") throw bad_option("--precision", "bench bandwidth copies f32; it takes no precision");
  }
  if (opts.has("convolution")) {
    if (base.kind != "unet") {
      throw bad_option("--convolution", "only bench unet takes it; pipelines set --set model.convolution=direct");
    }
    base.convolution = enum_name(enum_option<ConvAlgorithm>(opts, "convolution"));
  }
  if (opts.has("bf16-backward")) {
    if (base.kind != "unet") {
      throw bad_option("--bf16-backward",
                       "only bench unet takes it; pipelines set --set model.bf16_backward=blocked");
    }
    base.bf16_backward = enum_name(enum_option<Bf16Backward>(opts, "bf16-backward"));
  }
  if (opts.has("activation-layout")) {
    if (base.kind != "unet") {
      throw bad_option("--activation-layout",
                       "only bench unet takes it; pipelines set --set model.activation_layout=channels_last");
    }
    base.activation_layout = enum_name(enum_option<ActivationLayout>(opts, "activation-layout"));
  }
  if (opts.has("mib")) {
    if (base.kind != "bandwidth") throw bad_option("--mib", "only bench bandwidth copies a buffer of M MiB");
    base.mib = opts.integer("mib");
  }
  // Under mpirun every process runs the same measurements; rank 0 reports them.
  World& world = *process_world();
  if (world.distributed() && base.kind != "train") {
    throw bad_option("KIND", "under mpirun only `bench train` runs (data parallel); bench " + base.kind +
                                 " measures one process");
  }
  std::ostringstream discarded;
  std::ostream& out = world.rank() == 0 ? std::cout : discarded;
  if (standalone && !base.sets.empty()) throw bad_option("--set", "bench " + base.kind + " runs no pipeline");

  // The sweep: a name and its values; one Settings per value.
  std::string sweep_name;
  std::vector<std::string> sweep_values;
  if (opts.has("sweep")) {
    const std::string text = opts.text("sweep");
    const auto eq = text.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == text.size()) {
      throw bad_option("--sweep", "expected NAME=v1,v2,... (threads, batch, max_in_flight, concurrency=NODE:v1,v2, "
                                  "or NODE.PARAM)");
    }
    sweep_name = text.substr(0, eq);
    std::string values = text.substr(eq + 1);
    if (sweep_name == "concurrency") {
      const auto colon = values.find(':');
      if (colon == std::string::npos || colon == 0) throw bad_option("--sweep", "concurrency=NODE:v1,v2,...");
      base.concurrency_node = values.substr(0, colon);
      values = values.substr(colon + 1);
    }
    sweep_values = split(values, ',');
    if (sweep_values.empty()) throw bad_option("--sweep", "no values");
    const bool known = sweep_name == "threads" || sweep_name == "teams" || sweep_name == "batch" ||
                       sweep_name == "max_in_flight" ||
                       sweep_name == "concurrency" || sweep_name == "precision" || sweep_name == "convolution" ||
                       sweep_name == "bf16_backward" || sweep_name.find('.') != std::string::npos;
    if (!known) {
      throw bad_option("--sweep", "unknown sweep '" + sweep_name +
                                      "': threads, teams, batch, max_in_flight, concurrency=NODE:..., precision, "
                                      "convolution, bf16_backward (bench unet), or NODE.PARAM");
    }
    if (base.kind == "unet" && sweep_name != "threads" && sweep_name != "teams" && sweep_name != "batch" &&
        sweep_name != "precision" &&
        sweep_name != "convolution" && sweep_name != "bf16_backward") {
      throw bad_option("--sweep", "bench unet sweeps threads, teams, batch, precision, convolution or bf16_backward");
    }
    if (base.kind != "unet" && (sweep_name == "convolution" || sweep_name == "bf16_backward")) {
      throw bad_option("--sweep", "only bench unet sweeps " + sweep_name + "; pipelines: --sweep model." + sweep_name +
                                      "=...");
    }
    if (base.kind == "matmul" && sweep_name != "threads" && sweep_name != "precision") {
      throw bad_option("--sweep", "bench matmul sweeps threads or precision");
    }
    if (base.kind == "bandwidth" && sweep_name != "threads") throw bad_option("--sweep", "bench bandwidth sweeps threads");
    if (!standalone && sweep_name == "precision") {
      throw bad_option("--sweep", "pipelines sweep the model's precision as a parameter: --sweep model.precision=f32,bf16");
    }
    for (const auto& v : sweep_values) {
      try {
        if (sweep_name == "precision") parse_enum<Precision>(v, "precision");
        if (sweep_name == "convolution") parse_enum<ConvAlgorithm>(v, "convolution");
        if (sweep_name == "bf16_backward") parse_enum<Bf16Backward>(v, "bf16_backward");
      } catch (const ConfigError& e) {
        throw bad_option("--sweep", e.message());
      }
    }
  }
  std::vector<Row> rows;
  std::vector<Settings> points;
  for (size_t i = 0; i < std::max<size_t>(1, sweep_values.size()); ++i) {
    Settings s = base;
    Row row;
    if (!sweep_values.empty()) {
      const std::string& v = sweep_values[i];
      row.sweep_value = v;
      if (sweep_name == "threads") s.threads = parse_positive(v, "--sweep");
      if (sweep_name == "teams") s.teams = parse_positive(v, "--sweep");
      if (sweep_name == "batch") s.batch = parse_positive(v, "--sweep");
      if (sweep_name == "max_in_flight") s.max_in_flight = parse_positive(v, "--sweep");
      if (sweep_name == "concurrency") s.concurrency = parse_positive(v, "--sweep");
      if (sweep_name == "precision") s.precision = v;
      if (sweep_name == "convolution") s.convolution = v;
      if (sweep_name == "bf16_backward") s.bf16_backward = v;
      if (sweep_name.find('.') != std::string::npos) s.param = parse_override(sweep_name + "=" + v);
      try {
        size_t used = 0;
        row.x = std::stod(v, &used);
        if (used != v.size()) row.x = NAN;
      } catch (const std::exception&) {
        row.x = NAN;
      }
    }
    row.threads = resolved_threads(s.threads);
    row.batch = s.batch;
    if (std::isnan(row.x)) row.x = sweep_values.empty() ? row.threads : static_cast<double>(i);
    rows.push_back(row);
    points.push_back(s);
  }
  // Every point's pipeline is checked before anything runs; each row records the teams in effect (--teams, else
  // the pipeline's; bench unet: --teams, else 1).
  for (size_t i = 0; i < points.size(); ++i) {
    if (!standalone) {
      const PipelineSpec spec = build_spec(points[i]);
      rows[i].teams = spec.teams;
      team_threads(spec, resolved_threads(points[i].threads));
    } else if (base.kind == "unet") {
      rows[i].teams = std::max(1, points[i].teams);
    }
  }

  // The machine first.
  out << "bench " << base.kind << (standalone ? "" : " (" + base.pipeline + ")") << "\n"
            << "machine: " << describe_cpu_model() << ", CPUs " << describe_cpu_count()
            << ", OpenMP wait " << describe_openmp_wait_policy() << "\n"
            << "oneDNN ISA: " << describe_cpu_isa() << "\n"
            << "versions: " << describe_versions() << "\n"
            << (world.distributed() ? "processes: " + std::to_string(world.size()) +
                                          " (mpirun; batch and threads per process, images/s over all)\n"
                                    : "")
            << "threads: " << resolved_threads(base.threads) << " (OpenMP threads of the compute thread and TBB "
            << "max_allowed_parallelism)" << (sweep_name == "threads" ? ", swept" : "")
            << (base.graph_threads > 0 ? "; the graph's TBB threads: " + std::to_string(base.graph_threads) : "")
            << (sweep_name == "teams" ? "; teams swept (the U-Net's batch split among them)"
                : rows.front().teams > 1
                    ? "; in " + std::to_string(rows.front().teams) + " teams (the U-Net's batch split among them)"
                    : "")
            << "\n"
            << "settings: ";
  const std::string precision = base.precision.empty() ? "f32" : base.precision;
  if (base.kind == "matmul") {
    out << "precision " << (sweep_name == "precision" ? "swept" : precision);
  } else if (base.kind == "bandwidth") {
    out << base.mib << " MiB copied per pass";
  } else {
    out << "config " << (base.config.empty() ? "(pipeline's)" : base.config) << ", batch " << base.batch;
  }
  out << ", warm-up " << base.warmup << ", measured " << base.steps << ", repeats " << base.repeats;
  if (base.kind == "unet") {
    out << ", mode " << mode << ", precision " << (sweep_name == "precision" ? "swept" : precision) << ", convolution "
        << (sweep_name == "convolution" ? "swept" : base.convolution.empty() ? "by_shape" : base.convolution)
        << ", bf16 backward "
        << (sweep_name == "bf16_backward" ? "swept" : base.bf16_backward.empty() ? "by_shape" : base.bf16_backward)
        << ", activations " << (base.activation_layout.empty() ? "by_isa" : base.activation_layout);
  }
  if (!standalone) out << ", prefetch " << base.prefetch;
  out << "\n";
  const std::string method =
      base.kind == "matmul"
          ? "one [2048,2048] x [2048,2048] oneDNN matmul (bf16: bf16 inputs, f32 output), operands converted "
            "before timing; GFLOP/s = 2*2048^3 / median pass time per repeat"
      : base.kind == "bandwidth"
          ? "one oneDNN reorder copying a plain f32 buffer of " + std::to_string(base.mib) +
                " MiB into another, both touched before timing; GB/s = 2 * buffer bytes (read + written) / median "
                "pass time per repeat"
      : base.kind == "unet"
          ? "bench-unet times each U-Net pass alone (no graph) on 28x28 inputs; images/s = batch / median pass time "
            "per repeat; forward passes reuse the converted weights (as sampling does), forward+backward passes "
            "convert them again (as after an optimiser step); before each repeat, the matmul peak probe (bench matmul) in the same precision and threads, "
            "and each GFLOP/s figure as a fraction of it" +
                std::string(base.roofline.empty() ? ""
                                                  : "; then the bandwidth probe (bench bandwidth, 256 MiB, median of 10 passes) for the "
                                                    "roofline's memory roof")
          : "one run with --max-steps W+K+prefetch (sample: W+K) per repeat, a fresh pipeline each; a step completes when its last node "
            "invocation ends; images/s = K*batch / (completion of step W+K - completion of step W), so building "
            "the pipeline and the W warm-up steps (primitive creation) are excluded; node figures are from the same "
            "window" +
                std::string(base.kind == "sample"
                                ? "; sampling images/s = U-Net forwards/s in the window * batch / forwards per chain "
                                  "(chains in flight together finish together, forwards are evenly spaced)"
                                : "");
  out << "method: " << method << "\n" << std::flush;

  for (size_t i = 0; i < rows.size(); ++i) {
    Row& row = rows[i];
    for (int r = 0; r < base.repeats; ++r) {
      Measurement m = base.kind == "unet"     ? measure_unet(points[i], unet_mode)
                      : base.kind == "matmul"    ? measure_matmul(points[i])
                      : base.kind == "bandwidth" ? measure_bandwidth_row(points[i])
                                              : measure_pipeline(points[i]);
      out << (row.sweep_value.empty() ? "" : sweep_name + "=" + row.sweep_value + " ") << "repeat " << r + 1
                << "/" << base.repeats << ": " << fixed(m.rate) << " " << rate_unit(base.kind);
      if (base.kind == "unet") out << unet_figures(m, unet_mode);
      if (probe) out << " (" << m.extra["implementation"].get<std::string>() << ")";
      if (!standalone) {
        out << " (" << m.images << " images in " << fixed(m.window_s, 3) << " s; step " << fixed(m.step_ms_median)
                  << " ms median; model busy " << fixed(m.model_busy_fraction * 100) << "%, compute thread busy "
                  << fixed(m.compute_busy_fraction * 100) << "%";
        if (base.kind == "sample") out << "; " << fixed(m.unet_forwards_per_s, 2) << " U-Net forwards/s";
        if (m.processes > 1) {
          out << "; " << m.processes << " processes: exposed communication " << fixed(m.exposed_comm_ms, 2)
              << " ms/step, allreduce " << fixed(m.allreduce_ms, 2) << " ms/step, step ms median per rank";
          for (const auto& r : m.ranks) out << " " << fixed(r.at("step_ms_median").get<double>());
        }
        out << "; setup " << fixed(m.setup_s, 2) << " s, warm-up " << fixed(m.warmup_s, 2) << " s)";
      }
      out << ", peak RSS " << fixed(m.peak_rss_mib) << " MiB\n" << std::flush;
      row.repeats.push_back(std::move(m));
    }
    summarise(row);
  }

  // Summary: one line per row; the node breakdown of the median repeat.
  const bool with_forward = base.kind == "unet" && unet_mode != UNetBenchMode::train;
  const bool with_train = base.kind == "unet" && unet_mode != UNetBenchMode::forward;
  out << "\n" << std::left << std::setw(16) << (sweep_name.empty() ? "" : sweep_name) << std::right
            << std::setw(10) << "threads";
  if (!probe) out << std::setw(8) << "batch";
  out << std::setw(14) << rate_unit(base.kind) << std::setw(10) << "min" << std::setw(10) << "max";
  if (with_forward) out << std::setw(14) << "fwd GFLOP/s" << std::setw(9) << "of peak";
  if (with_train) out << std::setw(14) << "f+b GFLOP/s" << std::setw(9) << "of peak";
  if (base.kind == "unet") out << std::setw(14) << "peak GFLOP/s";
  if (!standalone) out << std::setw(12) << "model busy";
  if (base.kind == "sample") out << std::setw(12) << "forwards/s";
  out << std::setw(14) << "peak RSS MiB" << "\n";
  for (const auto& row : rows) {
    const Measurement& m = row.repeats[row.median_index];
    out << std::left << std::setw(16) << row.sweep_value << std::right << std::setw(10) << row.threads;
    if (!probe) out << std::setw(8) << row.batch;
    out << std::setw(14) << fixed(row.median) << std::setw(10) << fixed(row.min) << std::setw(10) << fixed(row.max);
    auto number = [&](const char* key, double scale, int width, const char* suffix) {
      const json& v = m.extra.contains(key) ? m.extra.at(key) : json(nullptr);
      out << std::setw(width) << (v.is_number() ? fixed(v.get<double>() * scale) + suffix : std::string("-"));
    };
    if (with_forward) {
      number("forward_gflops_per_s", 1, 14, "");
      number("forward_fraction_of_peak", 100, 9, "%");
    }
    if (with_train) {
      number("forward_backward_gflops_per_s", 1, 14, "");
      number("forward_backward_fraction_of_peak", 100, 9, "%");
    }
    if (base.kind == "unet") number("matmul_peak_gflops_per_s", 1, 14, "");
    if (!standalone) out << std::setw(11) << fixed(m.model_busy_fraction * 100) << "%";
    if (base.kind == "sample") out << std::setw(12) << fixed(m.unet_forwards_per_s, 2);
    out << std::setw(14) << fixed(m.peak_rss_mib) << "\n";
  }
  if (base.breakdown) {
    for (const auto& row : rows) {
      out << "\nmedian repeat" << (row.sweep_value.empty() ? "" : " of " + sweep_name + "=" + row.sweep_value) << ", ";
      print_unet_breakdown(row.repeats[row.median_index].extra.at("breakdown"), out);
    }
  }
  if (!base.roofline.empty()) {
    const Measurement& m = rows.front().repeats[rows.front().median_index];
    out << "\nmedian repeat, ";
    print_unet_roofline(m.extra.at("roofline"), out);
    const std::string title = roofline_title(base.config.empty() ? "unet-s" : base.config, base.batch, precision,
                                             resolved_threads(base.threads), describe_cpu_model());
    write_png_atomic(draw_unet_roofline(m.extra.at("roofline"), title), base.roofline);
    out << "wrote " << base.roofline << "\n";
  }
  if (!standalone) {
    for (const auto& row : rows) {
      out << "\nper node, median repeat" << (row.sweep_value.empty() ? "" : " of " + sweep_name + "=" + row.sweep_value)
                << " (busy% and mean ms within the measured window):\n";
      print_breakdown(row.repeats[row.median_index], out);
    }
  }

  if (world.rank() != 0) return kExitOk;
  if (opts.has("json")) {
    json j;
    j["bench"] = base.kind;
    j["pipeline"] = standalone ? "" : base.pipeline;
    j["machine"] = {{"cpu_model", describe_cpu_model()},
                    {"cores", static_cast<int>(std::thread::hardware_concurrency())},
                    {"cpus", describe_cpu_count()},
                    {"openmp_wait", describe_openmp_wait_policy()},
                    {"isa", describe_cpu_isa()},
                    {"versions", describe_versions()}};
    j["settings"] = {{"config", base.config}, {"batch", base.batch},       {"threads", resolved_threads(base.threads)},
                     {"teams", sweep_name == "teams" || rows.front().teams == 0 ? json(nullptr)
                                                                                : json(rows.front().teams)},
                     {"graph_threads", base.graph_threads},
                     {"steps", base.steps},   {"warmup", base.warmup},     {"repeats", base.repeats},
                     {"prefetch", base.prefetch}, {"mode", mode}, {"processes", world.size()},          {"set", base.sets},
                     {"precision", precision}};
    j["method"] = method;
    j["sweep"] = sweep_name.empty() ? json(nullptr) : json{{"name", sweep_name}, {"values", sweep_values}};
    j["results"] = json::array();
    for (const auto& row : rows) {
      const Measurement& m = row.repeats[row.median_index];
      json r = {{"sweep_value", row.sweep_value},
                {"threads", row.threads},
                {"teams", row.teams > 0 ? json(row.teams) : json(nullptr)},
                {"batch", row.batch},
                {rate_key(base.kind), {{"median", row.median}, {"min", row.min}, {"max", row.max}}},
                {"model_busy_fraction", m.model_busy_fraction},
                {"compute_busy_fraction", m.compute_busy_fraction},
                {"unet_forwards_per_s", m.unet_forwards_per_s},
                {"step_ms_median", m.step_ms_median},
                {"peak_rss_mib", m.peak_rss_mib},
                {"processes", m.processes},
                {"global_batch", row.batch * m.processes},
                {"exposed_comm_ms_per_step", m.exposed_comm_ms},
                {"allreduce_ms_per_step", m.allreduce_ms},
                {"ranks", m.ranks}};
      json nodes = json::array();
      for (const auto& n : m.nodes) nodes.push_back(node_json(n));
      r["nodes"] = nodes;
      // bench unet: the GFLOP/s figures and their fractions of the matmul peak, of the median repeat.
      for (const char* key : kUNetFigures)
        if (m.extra.contains(key)) r[key] = m.extra.at(key);
      r["repeats"] = json::array();
      for (const auto& rep : row.repeats) r["repeats"].push_back(measurement_json(rep, base.kind));
      j["results"].push_back(r);
    }
    write_text(opts.text("json"), j.dump(2) + "\n");
    out << "wrote " << opts.text("json") << "\n";
  }
  if (opts.has("csv")) {
    std::ostringstream csv;
    const std::string rate = rate_key(base.kind);
    csv << "bench,sweep,value,config,threads,batch,steps,warmup,repeats," << rate << "_median," << rate << "_min,"
        << rate << "_max,model_busy_fraction,compute_busy_fraction,unet_forwards_per_s,step_ms_median,"
           "peak_rss_mib,processes,exposed_comm_ms_per_step,allreduce_ms_per_step";
    for (const char* key : kUNetFigures) csv << "," << key;
    csv << "\n";
    for (const auto& row : rows) {
      const Measurement& m = row.repeats[row.median_index];
      csv << base.kind << "," << csv_field(sweep_name) << "," << csv_field(row.sweep_value) << ","
          << csv_field(base.config) << "," << row.threads << "," << row.batch << "," << base.steps << ","
          << base.warmup << "," << base.repeats << "," << row.median << "," << row.min << "," << row.max << ","
          << m.model_busy_fraction << "," << m.compute_busy_fraction << "," << m.unet_forwards_per_s << ","
          << m.step_ms_median << "," << m.peak_rss_mib << "," << m.processes << "," << m.exposed_comm_ms << ","
          << m.allreduce_ms;
      for (const char* key : kUNetFigures) {  // empty but for bench unet
        csv << ",";
        if (m.extra.contains(key) && m.extra.at(key).is_number()) csv << m.extra.at(key).get<double>();
      }
      csv << "\n";
    }
    write_text(opts.text("csv"), csv.str());
    out << "wrote " << opts.text("csv") << "\n";
  }
  if (opts.has("plot")) {
    LineSeries series;
    series.label = base.kind;
    for (const auto& row : rows) {
      series.x.push_back(row.x);
      series.y.push_back(row.median);
      series.y_lo.push_back(row.min);
      series.y_hi.push_back(row.max);
    }
    LinePlotStyle style;
    style.title = "bench " + base.kind + ": " +
                  (base.kind == "matmul"      ? "2048^3 " + precision
                   : base.kind == "bandwidth" ? std::to_string(base.mib) + " MiB copy"
                                         : (base.config.empty() ? std::string("pipeline's model") : base.config) +
                                               (sweep_name == "batch" ? "" : ", batch " + std::to_string(base.batch))) +
                  (sweep_name == "threads" ? "" : ", " + std::to_string(resolved_threads(base.threads)) + " threads") +
                  " (median of " + std::to_string(base.repeats) + ", min-max bars)";
    style.x_label = sweep_name.empty() ? "threads" : sweep_name;
    style.y_label = rate_unit(base.kind);
    bool numeric = true;
    for (const auto& row : rows) numeric = numeric && !row.sweep_value.empty() && std::isfinite(row.x);
    style.categorical_x = sweep_name == "batch" || !numeric;
    write_png_atomic(draw_line_plot({series}, style), opts.text("plot"));
    out << "wrote " << opts.text("plot") << "\n";
  }
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(bench,
                           "measure images/s of the training, sampling or data graph or the U-Net alone, or the "
                           "GFLOP/s of a oneDNN matmul, or the memory bandwidth of a oneDNN copy",
                           bench_options(), run_bench);

}  // namespace diffuflow
