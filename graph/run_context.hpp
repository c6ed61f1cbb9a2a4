// RunContext: the services a running pipeline gives its nodes and resources:
// the device, the seed and per-node random streams, the output folder, the
// metrics log, shared resources by name, and the stop flag.
#pragma once

#include "graph/device.hpp"
#include "graph/counter_rng.hpp"
#include "graph/params.hpp"
#include "graph/world.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace diffuflow {

class Resource;

// A piece of work done off the graph's nodes (a communication thread's
// collective), on a named track of the profile and trace.
struct Span {
  std::string track;  // "backward.allreduce"
  std::string type;   // "allreduce"
  int64_t start_ns = 0, end_ns = 0;  // steady clock (RunContext::clock_ns)
  int64_t seq = -1;
};

// Metrics as JSON lines: {"step": 12, "node": "loss", "name": "loss", "value": 0.31}.
class MetricsLog {
 public:
  MetricsLog() = default;
  explicit MetricsLog(const std::filesystem::path& file);
  void log(int64_t step, const std::string& node, const std::string& name, double value);
  // The latest value of a metric (NaN when never logged), for progress lines.
  double latest(const std::string& name) const;
  // Writes buffered lines out; a failed write (disk full, file-size limit)
  // throws, naming the file, here or from log().
  void flush();

 private:
  void flush_locked();

  mutable std::mutex mutex_;
  std::filesystem::path file_;
  std::ofstream out_;
  std::map<std::string, double> latest_;
  std::chrono::steady_clock::time_point last_flush_{};
};

class RunContext {
 public:
  RunContext();
  explicit RunContext(std::shared_ptr<Device> device, uint64_t seed = 0);

  Device& device() { return *device_; }
  std::shared_ptr<Device> device_ptr() const { return device_; }
  uint64_t seed() const { return seed_; }
  void set_seed(uint64_t seed) { seed_ = seed; }
  bool deterministic = false;
  int threads = 0;  // 0: every usable CPU (usable_cpus())
  int teams = 1;    // the U-Net's batch split among this many OpenMP teams (PipelineSpec::teams)

  // The processes this run is spread over (data parallel); a world of one by default.
  World& world() const { return *world_; }
  std::shared_ptr<World> world_ptr() const { return world_; }
  void set_world(std::shared_ptr<World> world) { world_ = std::move(world); }

  // A random stream that depends only on (pipeline seed, name, seq), never on
  // thread scheduling: the basis of reproducible runs.
  std::mt19937_64 rng(const std::string& name, int64_t seq = 0) const;
  // The random stream of one item (sample) of the data stream: depends only on
  // (pipeline seed, name, position), never on which process or batch holds it.
  CounterRng item_rng(const std::string& name, int64_t position) const;
  static uint64_t mix(uint64_t a, uint64_t b);

  // Where artefacts go; empty when the run writes nothing (validation, tests).
  const std::filesystem::path& out_dir() const { return out_dir_; }
  void set_out_dir(std::filesystem::path dir) { out_dir_ = std::move(dir); }
  MetricsLog& metrics() { return *metrics_; }
  void set_metrics(std::shared_ptr<MetricsLog> metrics) { metrics_ = std::move(metrics); }

  // Step budget for sources: -1 means unbounded. Counts the steps skipped on resume.
  int64_t max_steps = -1;
  // Time budget in seconds from the start of Pipeline::run (--max-time; 0: none).
  // The pipeline sets it from its RunOptions before building the nodes.
  double max_time_s = 0;

  // The run's clock, for schedules that span the time budget: seconds since
  // Pipeline::run started. Processes of a data-parallel run must take equal
  // steps, so there run_seconds() is the clock they agreed on at the latest
  // step (the gradient exchange sets the maximum of their local clocks);
  // elsewhere it is local_run_seconds().
  void start_clock() { start_ns_.store(clock_ns()); }
  double local_run_seconds() const { return static_cast<double>(clock_ns() - start_ns_.load()) * 1e-9; }
  void set_agreed_run_seconds(double seconds) { agreed_ns_.store(static_cast<int64_t>(seconds * 1e9)); }
  double run_seconds() const {
    const int64_t agreed = agreed_ns_.load();
    return agreed >= 0 ? static_cast<double>(agreed) * 1e-9 : local_run_seconds();
  }

  // Resuming a run: the checkpoint to restore from (empty: a fresh run) and the
  // step it was written at. The builder fast-forwards every source by
  // start_step packets (all randomness is keyed by (seed, node, seq), so the
  // resumed run sees exactly the batches, timesteps and noise it would have);
  // nodes with state (the optimiser) restore it from resume_path.
  std::filesystem::path resume_path;
  int64_t start_step = 0;
  // The data position the checkpoint was written at: items (samples) consumed
  // over all processes; -1 when unknown (sources then skip start_step packets).
  int64_t start_items = -1;
  std::atomic<bool>& stop_flag() { return stop_; }
  bool stop_requested() const { return stop_.load(std::memory_order_relaxed); }
  // Asks the sources to stop. When processes must agree on where to stop (data
  // parallel training: set_stop_needs_agreement), it only marks the wish;
  // the processes then agree on a step (stop_at_step) and all stop after it.
  // Async-signal-safe.
  void request_stop() {
    if (stop_needs_agreement_.load()) {
      stop_wanted_.store(true);
    } else {
      stop_.store(true);
    }
  }
  void set_stop_needs_agreement(bool needed) { stop_needs_agreement_.store(needed); }
  // A node gathers every process's results on rank 0 (rank_gather), so
  // sources of independent work (sampling chains) may split it between the
  // processes; without one every process does all of it and rank 0 writes.
  void set_results_gathered(bool gathered) { results_gathered_.store(gathered); }
  bool results_gathered() const { return results_gathered_.load(); }
  bool stop_wanted() const { return stop_wanted_.load() || stop_.load(); }
  // Sources emit no packet numbered `step` or later (-1: no such limit).
  void stop_at_step(int64_t step) {
    int64_t current = stop_at_.load();
    while ((current < 0 || step < current) && !stop_at_.compare_exchange_weak(current, step)) {
    }
  }
  int64_t stop_at() const { return stop_at_.load(std::memory_order_relaxed); }
  // How many packets a source may be ahead of the slowest of its descendants
  // (the pipeline's prefetch); agreed stops allow for it.
  int64_t source_lead = 4;

  // Shared objects declared under `resources:`, looked up by name and type.
  void add_resource(const std::string& name, std::shared_ptr<Resource> resource);
  std::shared_ptr<Resource> resource(const std::string& name) const;
  template <typename T>
  std::shared_ptr<T> resource_as(const std::string& name) const {
    auto typed = std::dynamic_pointer_cast<T>(resource(name));
    if (!typed) throw std::runtime_error("resource '" + name + "' is not of the type this node needs");
    return typed;
  }

  // Progress counters for the progress line: nodes that finish a unit of work
  // (an optimiser step, a finished sample batch) report it here.
  void count_progress(int64_t steps, int64_t images) {
    steps_done_.fetch_add(steps, std::memory_order_relaxed);
    images_done_.fetch_add(images, std::memory_order_relaxed);
  }
  int64_t steps_done() const { return steps_done_.load(std::memory_order_relaxed); }
  int64_t images_done() const { return images_done_.load(std::memory_order_relaxed); }

  // Spans of work off the graph's nodes; the pipeline adds them to its
  // profile and trace. Thread-safe.
  static int64_t clock_ns();
  void record_span(Span span);
  std::vector<Span> spans() const;

  // Run metadata: named text entries describing what the run computes (the
  // settings a model is trained with), contributed by nodes and resources as
  // they are constructed and recorded by whatever writes the run's artefacts
  // (a checkpoint's metadata). A key given twice with different values is
  // ambiguous and left out of run_metadata().
  void add_run_metadata(const std::string& key, const std::string& value);
  std::map<std::string, std::string> run_metadata() const;

  // Metadata read from the run's inputs (the checkpoint a model's weights come
  // from), for the nodes that must agree with it. The first entry for a key stays.
  struct InputMetadata {
    std::string value;
    std::string source;  // where it was read, for messages
  };
  void add_input_metadata(const std::string& key, const std::string& value, const std::string& source);
  std::optional<InputMetadata> input_metadata(const std::string& key) const;

  // One line to stderr, serialised across threads.
  void info(const std::string& line) const;

 private:
  std::shared_ptr<Device> device_;
  std::shared_ptr<World> world_;
  uint64_t seed_ = 0;
  std::filesystem::path out_dir_;
  std::shared_ptr<MetricsLog> metrics_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> stop_needs_agreement_{false};
  std::atomic<bool> results_gathered_{false};
  std::atomic<bool> stop_wanted_{false};
  std::atomic<int64_t> stop_at_{-1};
  std::atomic<int64_t> steps_done_{0};
  std::atomic<int64_t> images_done_{0};
  std::atomic<int64_t> start_ns_{clock_ns()};
  std::atomic<int64_t> agreed_ns_{-1};
  std::map<std::string, std::shared_ptr<Resource>> resources_;
  mutable std::mutex spans_mutex_;
  std::vector<Span> spans_;
  mutable std::mutex metadata_mutex_;
  std::map<std::string, std::optional<std::string>> run_metadata_;  // nullopt: ambiguous
  std::map<std::string, InputMetadata> input_metadata_;
};

}  // namespace diffuflow
