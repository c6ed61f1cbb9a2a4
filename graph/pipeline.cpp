// The only translation unit that includes <tbb/flow_graph.h>: nodes are
// unit-tested without a graph, and every graph is built here.
#include "graph/pipeline.hpp"

#include "graph/atomic_file.hpp"
#include "graph/limiter.hpp"
#include "graph/node.hpp"
#include "graph/registry.hpp"
#include "graph/world.hpp"

#include <nlohmann/json.hpp>
#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/global_control.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <future>
#include <functional>
#include <iomanip>
#include <mutex>
#include <sstream>
#include <thread>
#include <tuple>
#include <utility>

namespace diffuflow {

namespace flow = oneapi::tbb::flow;

namespace {

using Msg = PacketPtr;
using Clock = std::chrono::steady_clock;

// What a node body receives: the port (for `any` nodes), the packet(s), and
// the input's place in the order the node received its inputs.
struct Work {
  int port = 0;
  std::vector<PacketPtr> packets;
  uint64_t order = 0;
};

// What a node body returns: packets tagged with the output port they go to,
// and the order of the input they came from.
struct Routed {
  uint64_t order = 0;
  std::vector<std::pair<int, PacketPtr>> packets;
};
using RoutedPtr = std::shared_ptr<Routed>;

constexpr int kMaxPorts = 4;
using RouterPorts = std::tuple<Msg, Msg, Msg, Msg>;
using Router = flow::multifunction_node<RoutedPtr, RouterPorts>;
using Numberer = flow::multifunction_node<Msg, std::tuple<Work>>;
using Join2 = flow::join_node<std::tuple<Msg, Msg>, flow::tag_matching>;
using Join3 = flow::join_node<std::tuple<Msg, Msg, Msg>, flow::tag_matching>;
using Join4 = flow::join_node<std::tuple<Msg, Msg, Msg, Msg>, flow::tag_matching>;

constexpr const char* kTicketField = "_ticket";

// Held by every packet that descends from one source packet. When the last
// such packet is gone, the source may emit one more (see RunOptions::prefetch).
class Ticket : public Payload {
 public:
  explicit Ticket(std::function<void()> release) : release_(std::move(release)) {}
  ~Ticket() override { release_(); }

 private:
  std::function<void()> release_;
};

class CollectingEmitter : public Emitter {
 public:
  CollectingEmitter(Routed& out, size_t ports, const std::string& node) : out_(out), ports_(ports), node_(node) {}
  void emit(int port, PacketPtr packet) override {
    if (port < 0 || static_cast<size_t>(port) >= ports_) {
      throw std::logic_error("node '" + node_ + "' emitted on output port " + std::to_string(port) + " of " +
                             std::to_string(ports_));
    }
    out_.packets.emplace_back(port, std::move(packet));
  }

 private:
  Routed& out_;
  size_t ports_;
  const std::string& node_;
};

// One thread that runs every device node's oneDNN work, with an OpenMP team
// of its own: TBB workers run the data path, this thread owns the compute cores.
// Resources and nodes are made on it too (a model zeroes its gradients with a
// primitive as it is made): an OpenMP region on any other thread would give
// that thread a team of its own, idle threads that count against libgomp's
// CPU budget and cut every team's spin before sleeping (docs/design.md).
class ComputeExecutor {
 public:
  explicit ComputeExecutor(int omp_threads) : thread_([this, omp_threads] { loop(omp_threads); }) {}
  ~ComputeExecutor() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closing_ = true;
    }
    ready_.notify_one();
    thread_.join();
  }
  void submit(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    ready_.notify_one();
  }
  // Runs `job` on the compute thread and returns when it is done; an
  // exception it throws is rethrown here.
  void call(const std::function<void()>& job) {
    std::packaged_task<void()> task(job);
    std::future<void> done = task.get_future();
    submit([&task] { task(); });
    done.get();
  }

 private:
  void loop(int omp_threads) {
    if (omp_threads > 0) omp_set_num_threads(omp_threads);
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return closing_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_;
  bool closing_ = false;
  std::thread thread_;
};

struct Interval {
  int64_t start_ns;
  int64_t end_ns;
  int64_t seq;
};

}  // namespace

struct Pipeline::Impl {
  struct Runtime {
    const NodeSpec* spec = nullptr;
    const NodeContract* contract = nullptr;
    std::unique_ptr<Node> node;
    // Graph pieces (only those this node needs are set).
    std::unique_ptr<flow::input_node<Msg>> source;
    std::unique_ptr<flow::limiter_node<Msg>> source_gate;
    std::unique_ptr<flow::queue_node<Msg>> limiter_queue;
    std::unique_ptr<flow::limiter_node<Msg>> limiter;
    std::unique_ptr<flow::function_node<Msg, flow::continue_msg>> decrement;
    std::vector<std::unique_ptr<Numberer>> adapters;
    std::unique_ptr<flow::graph_node> join;
    std::unique_ptr<flow::graph_node> join_adapter;
    std::unique_ptr<flow::function_node<Work, RoutedPtr>> body;
    std::unique_ptr<flow::async_node<Work, RoutedPtr>> async_body;
    std::unique_ptr<flow::sequencer_node<RoutedPtr>> in_order;
    std::unique_ptr<Router> router;
    // The next input's place in the order this node receives its inputs.
    std::atomic<uint64_t> next_order{0};
    // Source state (the input_node body runs serially).
    std::deque<PacketPtr> pending;
    bool exhausted = false;
    int64_t emitted = 0;
    // Profile.
    std::mutex profile_mutex;
    std::vector<Interval> intervals;
  };

  const PipelineSpec& spec;
  RunContext& ctx;
  RunOptions options;
  flow::graph graph;
  std::vector<std::unique_ptr<Runtime>> nodes;
  std::unique_ptr<ComputeExecutor> executor;
  std::shared_ptr<std::atomic<bool>> alive = std::make_shared<std::atomic<bool>>(true);
  Clock::time_point start;

  std::mutex failure_mutex;
  std::exception_ptr failure;
  std::string failure_node;
  int64_t failure_step = -1;
  std::atomic<bool> failed{false};

  // For tests of failure handling: DIFFUFLOW_FAULT=node:step makes `node` fail
  // at `step` (seq) with an error, as a real fault in that step would.
  std::string fault_node;
  int64_t fault_step = -2;

  Impl(const PipelineSpec& s, RunContext& c, RunOptions o) : spec(s), ctx(c), options(std::move(o)) {
    if (const char* fault = std::getenv("DIFFUFLOW_FAULT")) {
      const std::string text = fault;
      const size_t colon = text.rfind(':');
      if (colon != std::string::npos) {
        fault_node = text.substr(0, colon);
        fault_step = std::strtoll(text.c_str() + colon + 1, nullptr, 10);
      }
    }
  }
  ~Impl() { alive->store(false); }

  int64_t now_ns() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  }

  void record(Runtime& rt, int64_t t0, int64_t t1, int64_t seq) {
    std::lock_guard<std::mutex> lock(rt.profile_mutex);
    rt.intervals.push_back({t0, t1, seq});
  }

  void fail(Runtime& rt, int64_t seq, std::exception_ptr error) {
    {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) {
        failure = error;
        failure_node = rt.spec->name;
        failure_step = seq;
      }
    }
    failed.store(true);
    ctx.request_stop();
    graph.cancel();
  }

  RoutedPtr invoke(Runtime& rt, const Work& work) {
    auto routed = std::make_shared<Routed>();
    routed->order = work.order;
    if (failed.load()) return routed;
    const int64_t seq = work.packets.empty() ? -1 : work.packets.front()->seq();
    const int64_t t0 = now_ns();
    try {
      if (seq == fault_step && rt.spec->name == fault_node) {
        throw std::runtime_error("a fault injected by DIFFUFLOW_FAULT=" + fault_node + ":" + std::to_string(seq));
      }
      CollectingEmitter emitter(*routed, rt.contract->outputs.size(), rt.spec->name);
      rt.node->process(NodeInput{work.port, work.packets}, emitter);
    } catch (...) {
      fail(rt, seq, std::current_exception());
      routed->packets.clear();
    }
    record(rt, t0, now_ns(), seq);
    return routed;
  }

  // On resume, sources seek to the checkpoint's data position, or replay their
  // first start_step packets without emitting them.
  void fast_forward(Runtime& rt) {
    if (rt.node->seek(ctx.start_step, ctx.start_items)) {
      rt.emitted = ctx.start_step;
      return;
    }
    while (rt.emitted < ctx.start_step && !rt.exhausted) {
      if (rt.pending.empty()) {
        Routed out;
        CollectingEmitter emitter(out, rt.contract->outputs.size(), rt.spec->name);
        if (!rt.node->produce(emitter)) rt.exhausted = true;
        for (auto& [port, packet] : out.packets) rt.pending.push_back(std::move(packet));
        if (out.packets.empty()) continue;
      }
      rt.pending.pop_front();
      ++rt.emitted;
    }
  }

  Msg produce(Runtime& rt, oneapi::tbb::flow_control& control) {
    while (rt.pending.empty()) {
      const bool budget_spent = (ctx.max_steps >= 0 && rt.emitted >= ctx.max_steps) ||
                                (ctx.stop_at() >= 0 && rt.emitted >= ctx.stop_at());
      if (rt.exhausted || budget_spent || ctx.stop_requested() || failed.load()) {
        control.stop();
        return {};
      }
      Routed out;
      const int64_t t0 = now_ns();
      try {
        CollectingEmitter emitter(out, rt.contract->outputs.size(), rt.spec->name);
        if (!rt.node->produce(emitter)) rt.exhausted = true;
      } catch (...) {
        fail(rt, rt.emitted, std::current_exception());
        control.stop();
        return {};
      }
      record(rt, t0, now_ns(), rt.emitted);
      for (auto& [port, packet] : out.packets) rt.pending.push_back(std::move(packet));
    }
    PacketPtr next = std::move(rt.pending.front());
    rt.pending.pop_front();
    ++rt.emitted;
    // Attach the ticket that frees a prefetch slot when the last descendant dies.
    std::weak_ptr<std::atomic<bool>> alive_flag = alive;
    flow::limiter_node<Msg>* gate = rt.source_gate.get();
    auto ticket = std::make_shared<const Ticket>([alive_flag, gate] {
      auto flag = alive_flag.lock();
      if (flag && flag->load()) gate->decrementer().try_put(flow::continue_msg());
    });
    Packet stamped = *next;
    stamped.set(kTicketField, std::shared_ptr<const Payload>(ticket));
    return std::move(stamped).share();
  }

  void build() {
    const auto& registry = Registry::instance();
    bool any_device_node = false;
    for (const auto& n : spec.nodes) any_device_node = any_device_node || !registry.node_contract(n.type)->host_only;
    if (any_device_node) executor = std::make_unique<ComputeExecutor>(options.compute_threads);
    auto make = [&] {
      for (const auto& r : spec.resources) {
        ResourceConfig config{r.name, r.type, r.params};
        ctx.add_resource(r.name, registry.create_resource(config, ctx));
      }
      for (const auto& n : spec.nodes) {
        auto rt = std::make_unique<Runtime>();
        rt->spec = &n;
        rt->contract = registry.node_contract(n.type);
        if (rt->contract->outputs.size() > kMaxPorts || rt->contract->inputs.size() > kMaxPorts) {
          throw std::logic_error("node type '" + n.type + "' has more than " + std::to_string(kMaxPorts) + " ports");
        }
        NodeConfig config{n.name, n.type, n.params, n.concurrency};
        rt->node = registry.create_node(config, ctx);
        nodes.push_back(std::move(rt));
      }
    };
    if (executor)
      executor->call(make);
    else
      make();
    for (auto& rt : nodes) make_flow_nodes(*rt);
    for (const auto& e : spec.edges) connect(e);
  }

  static size_t concurrency_of(const NodeSpec& n) {
    return n.concurrency == 0 ? static_cast<size_t>(flow::unlimited) : static_cast<size_t>(n.concurrency);
  }

  void make_flow_nodes(Runtime& rt) {
    Runtime* r = &rt;
    const NodeContract& c = *rt.contract;
    if (c.type == kLimiterType) {
      rt.limiter_queue = std::make_unique<flow::queue_node<Msg>>(graph);
      rt.limiter = std::make_unique<flow::limiter_node<Msg>>(
          graph, static_cast<size_t>(params_from<Limiter::Params>(rt.spec->params).max_in_flight));
      flow::make_edge(*rt.limiter_queue, *rt.limiter);
      rt.decrement = std::make_unique<flow::function_node<Msg, flow::continue_msg>>(
          graph, flow::unlimited, [](const Msg&) { return flow::continue_msg(); });
      flow::make_edge(*rt.decrement, rt.limiter->decrementer());
      return;
    }
    if (c.is_source()) {
      rt.source = std::make_unique<flow::input_node<Msg>>(
          graph, [this, r](oneapi::tbb::flow_control& control) { return produce(*r, control); });
      rt.source_gate =
          std::make_unique<flow::limiter_node<Msg>>(graph, static_cast<size_t>(std::max(1, options.prefetch)));
      flow::make_edge(*rt.source, *rt.source_gate);
      return;
    }
    // Body.
    if (c.host_only) {
      rt.body = std::make_unique<flow::function_node<Work, RoutedPtr>>(
          graph, concurrency_of(*rt.spec), [this, r](const Work& work) { return invoke(*r, work); });
    } else {
      using Gateway = flow::async_node<Work, RoutedPtr>::gateway_type;
      rt.async_body = std::make_unique<flow::async_node<Work, RoutedPtr>>(
          graph, concurrency_of(*rt.spec), [this, r](const Work& work, Gateway& gateway) {
            gateway.reserve_wait();
            executor->submit([this, r, work = Work(work), &gateway]() mutable {
              RoutedPtr routed = invoke(*r, work);
              work.packets.clear();
              gateway.try_put(routed);
              gateway.release_wait();
            });
          });
    }
    flow::receiver<Work>& body_in = rt.body ? static_cast<flow::receiver<Work>&>(*rt.body)
                                            : static_cast<flow::receiver<Work>&>(*rt.async_body);
    flow::sender<RoutedPtr>& body_out = rt.body ? static_cast<flow::sender<RoutedPtr>&>(*rt.body)
                                                : flow::output_port<0>(*rt.async_body);  // async_node: via its port
    // Inputs. Each input is numbered in the order it arrives, by a serial
    // node that passes it on within its body (a function_node may hand its
    // next input to another worker before it passes on its last output).
    const size_t k = c.inputs.size();
    if (c.input_policy == InputPolicy::any || k == 1) {
      for (size_t p = 0; p < k; ++p) {
        const int port = static_cast<int>(p);
        rt.adapters.push_back(std::make_unique<Numberer>(
            graph, flow::serial, [r, port](const Msg& m, Numberer::output_ports_type& ports) {
              std::get<0>(ports).try_put(Work{port, {m}, r->next_order++});
            }));
        flow::make_edge(*rt.adapters.back(), body_in);
      }
    } else if (k == 2) {
      make_join<Join2>(rt, body_in, std::make_index_sequence<2>{});
    } else if (k == 3) {
      make_join<Join3>(rt, body_in, std::make_index_sequence<3>{});
    } else {
      make_join<Join4>(rt, body_in, std::make_index_sequence<4>{});
    }
    // Outputs, in the order of the inputs they came from, whatever the
    // node's concurrency: every input gives one Routed (empty when the node
    // emits nothing or fails), so the sequencer never waits for a gap.
    if (!c.outputs.empty()) {
      rt.in_order = std::make_unique<flow::sequencer_node<RoutedPtr>>(
          graph, [](const RoutedPtr& routed) { return static_cast<size_t>(routed->order); });
      flow::make_edge(body_out, *rt.in_order);
      rt.router = std::make_unique<Router>(
          graph, flow::serial, [](const RoutedPtr& routed, Router::output_ports_type& ports) {
            for (auto& [port, packet] : routed->packets) {
              switch (port) {
                case 0: std::get<0>(ports).try_put(packet); break;
                case 1: std::get<1>(ports).try_put(packet); break;
                case 2: std::get<2>(ports).try_put(packet); break;
                default: std::get<3>(ports).try_put(packet); break;
              }
            }
          });
      flow::make_edge(*rt.in_order, *rt.router);
    }
  }

  // A tag-matching join on the step number, whose tuples are numbered like
  // single inputs.
  template <typename JoinT, size_t... I>
  void make_join(Runtime& rt, flow::receiver<Work>& body_in, std::index_sequence<I...>) {
    using Tuple = typename JoinT::output_type;
    using TupleNumberer = flow::multifunction_node<Tuple, std::tuple<Work>>;
    auto tag = [](const Msg& m) { return static_cast<flow::tag_value>(m->seq()); };
    auto join = std::make_unique<JoinT>(graph, ((void)I, tag)...);
    Runtime* r = &rt;
    auto adapter = std::make_unique<TupleNumberer>(
        graph, flow::serial, [r](const Tuple& t, typename TupleNumberer::output_ports_type& ports) {
          std::get<0>(ports).try_put(Work{0, {std::get<I>(t)...}, r->next_order++});
        });
    flow::make_edge(*join, *adapter);
    flow::make_edge(*adapter, body_in);
    rt.join = std::move(join);
    rt.join_adapter = std::move(adapter);
  }

  flow::sender<Msg>& output_of(Runtime& rt, int port) {
    if (rt.limiter) return *rt.limiter;
    if (rt.source_gate) return *rt.source_gate;
    switch (port) {
      case 0: return flow::output_port<0>(*rt.router);
      case 1: return flow::output_port<1>(*rt.router);
      case 2: return flow::output_port<2>(*rt.router);
      default: return flow::output_port<3>(*rt.router);
    }
  }

  flow::receiver<Msg>& input_of(Runtime& rt, int port) {
    if (rt.limiter) {
      if (port == 0) return *rt.limiter_queue;
      return *rt.decrement;
    }
    if (!rt.join) return *rt.adapters.at(static_cast<size_t>(port));
    const size_t k = rt.contract->inputs.size();
    if (k == 2) {
      auto& j = static_cast<Join2&>(*rt.join);
      if (port == 0) return flow::input_port<0>(j);
      return flow::input_port<1>(j);
    }
    if (k == 3) {
      auto& j = static_cast<Join3&>(*rt.join);
      if (port == 0) return flow::input_port<0>(j);
      if (port == 1) return flow::input_port<1>(j);
      return flow::input_port<2>(j);
    }
    auto& j = static_cast<Join4&>(*rt.join);
    if (port == 0) return flow::input_port<0>(j);
    if (port == 1) return flow::input_port<1>(j);
    if (port == 2) return flow::input_port<2>(j);
    return flow::input_port<3>(j);
  }

  void connect(const EdgeSpec& e) {
    Runtime& from = *nodes.at(static_cast<size_t>(spec.node_index(e.from_node)));
    Runtime& to = *nodes.at(static_cast<size_t>(spec.node_index(e.to_node)));
    const int from_port = e.from_port.empty() ? 0 : from.contract->output_index(e.from_port);
    const int to_port = e.to_port.empty() ? 0 : to.contract->input_index(e.to_port);
    flow::make_edge(output_of(from, from_port), input_of(to, to_port));
  }

  NodeProfile profile_of(Runtime& rt, double wall_s) {
    std::vector<Interval> intervals;
    {
      std::lock_guard<std::mutex> lock(rt.profile_mutex);
      intervals = rt.intervals;
    }
    return profile_of(rt.spec->name, rt.spec->type, std::move(intervals), wall_s);
  }

  // The spans recorded off the nodes (RunContext::record_span), per track, in
  // this run's clock.
  std::vector<std::tuple<std::string, std::string, std::vector<Interval>>> span_tracks() const {
    const int64_t origin =
        std::chrono::duration_cast<std::chrono::nanoseconds>(start.time_since_epoch()).count();
    std::vector<std::tuple<std::string, std::string, std::vector<Interval>>> tracks;
    for (const Span& span : ctx.spans()) {
      auto it = std::find_if(tracks.begin(), tracks.end(), [&](const auto& t) { return std::get<0>(t) == span.track; });
      if (it == tracks.end()) it = tracks.insert(tracks.end(), {span.track, span.type, {}});
      std::get<2>(*it).push_back({span.start_ns - origin, span.end_ns - origin, span.seq});
    }
    return tracks;
  }

  NodeProfile profile_of(const std::string& name, const std::string& type, std::vector<Interval> intervals,
                         double wall_s) {
    NodeProfile p;
    p.name = name;
    p.type = type;
    p.count = static_cast<int64_t>(intervals.size());
    if (intervals.empty()) {
      p.wait_s = wall_s;
      return p;
    }
    std::vector<double> durations;
    for (const auto& i : intervals) durations.push_back((i.end_ns - i.start_ns) * 1e-9);
    for (double d : durations) p.busy_s += d;
    p.mean_ms = p.busy_s / durations.size() * 1e3;
    std::sort(durations.begin(), durations.end());
    p.p95_ms = durations[std::min(durations.size() - 1, static_cast<size_t>(0.95 * durations.size()))] * 1e3;
    std::sort(intervals.begin(), intervals.end(), [](const Interval& a, const Interval& b) {
      return a.start_ns < b.start_ns;
    });
    int64_t covered = 0, open_start = intervals[0].start_ns, open_end = intervals[0].end_ns;
    for (const auto& i : intervals) {
      if (i.start_ns > open_end) {
        covered += open_end - open_start;
        open_start = i.start_ns;
        open_end = i.end_ns;
      } else {
        open_end = std::max(open_end, i.end_ns);
      }
    }
    covered += open_end - open_start;
    p.active_s = covered * 1e-9;
    p.wait_s = std::max(0.0, wall_s - p.active_s);
    p.busy_fraction = wall_s > 0 ? p.active_s / wall_s : 0;
    return p;
  }

  // One track per node, and one per concurrent slot for a node whose
  // invocations overlap (Perfetto draws overlapping slices on one track as if
  // nested): each invocation goes to the lowest slot free when it started, so
  // no two slices on a track overlap. Slot k of a node with several is named
  // "name #k (type)".
  //
  // Several processes: each is a trace process (pid rank + 1, named "rank r on
  // host"); every rank's events are gathered to rank 0, which writes the file.
  // Times run from each process's own start of the run.
  void write_trace(const std::string& path) {
    World& world = ctx.world();
    const int pid = world.rank() + 1;
    nlohmann::json events = nlohmann::json::array();
    const std::string process =
        world.distributed() ? "rank " + std::to_string(world.rank()) + " on " + world.host() : "diffuflow";
    events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"tid", 0}, {"args", {{"name", process}}}});
    events.push_back(
        {{"name", "process_sort_index"}, {"ph", "M"}, {"pid", pid}, {"tid", 0}, {"args", {{"sort_index", pid}}}});
    int64_t next_tid = 0;
    for (size_t i = 0; i < nodes.size(); ++i) {
      Runtime& rt = *nodes[i];
      std::vector<Interval> intervals = [&rt] {
        std::lock_guard<std::mutex> lock(rt.profile_mutex);
        return rt.intervals;
      }();
      std::sort(intervals.begin(), intervals.end(), [](const Interval& a, const Interval& b) {
        return a.start_ns != b.start_ns ? a.start_ns < b.start_ns : a.end_ns < b.end_ns;
      });
      std::vector<int64_t> slot_end;  // per slot: the end of its latest invocation
      std::vector<size_t> slot_of(intervals.size());
      for (size_t j = 0; j < intervals.size(); ++j) {
        size_t slot = 0;
        while (slot < slot_end.size() && slot_end[slot] > intervals[j].start_ns) ++slot;
        if (slot == slot_end.size()) slot_end.push_back(0);
        slot_end[slot] = intervals[j].end_ns;
        slot_of[j] = slot;
      }
      const size_t tracks = std::max<size_t>(1, slot_end.size());
      const int64_t first_tid = next_tid;
      next_tid += static_cast<int64_t>(tracks);
      for (size_t slot = 0; slot < tracks; ++slot) {
        const int64_t tid = first_tid + static_cast<int64_t>(slot);
        const std::string track = tracks == 1 ? rt.spec->name : rt.spec->name + " #" + std::to_string(slot);
        events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", tid},
                          {"args", {{"name", track + " (" + rt.spec->type + ")"}}}});
        events.push_back(
            {{"name", "thread_sort_index"}, {"ph", "M"}, {"pid", pid}, {"tid", tid}, {"args", {{"sort_index", tid}}}});
      }
      for (size_t j = 0; j < intervals.size(); ++j) {
        const Interval& iv = intervals[j];
        events.push_back({{"name", rt.spec->name}, {"cat", rt.spec->type}, {"ph", "X"}, {"pid", pid},
                          {"tid", first_tid + static_cast<int64_t>(slot_of[j])}, {"ts", iv.start_ns / 1000.0},
                          {"dur", (iv.end_ns - iv.start_ns) / 1000.0}, {"args", {{"seq", iv.seq}}}});
      }
    }
    // Work off the nodes (a communication thread): one track each.
    for (auto& [track, type, intervals] : span_tracks()) {
      const int64_t tid = next_tid++;
      events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", tid},
                        {"args", {{"name", track + " (" + type + ")"}}}});
      events.push_back(
          {{"name", "thread_sort_index"}, {"ph", "M"}, {"pid", pid}, {"tid", tid}, {"args", {{"sort_index", tid}}}});
      for (const Interval& iv : intervals) {
        events.push_back({{"name", track}, {"cat", type}, {"ph", "X"}, {"pid", pid}, {"tid", tid},
                          {"ts", iv.start_ns / 1000.0}, {"dur", (iv.end_ns - iv.start_ns) / 1000.0},
                          {"args", {{"seq", iv.seq}}}});
      }
    }
    if (world.distributed()) {
      const std::vector<std::string> parts = world.gather(events.dump(), 0);
      if (world.rank() != 0) return;
      events = nlohmann::json::array();
      for (const auto& part : parts) {
        for (auto& event : nlohmann::json::parse(part)) events.push_back(std::move(event));
      }
    }
    nlohmann::json trace = {{"traceEvents", events}, {"displayTimeUnit", "ms"}};
    write_file_atomically(path, trace.dump() + "\n");
  }
};

Pipeline::Pipeline(const PipelineSpec& spec, RunContext& ctx, RunOptions options)
    : impl_((ctx.source_lead = std::max(1, options.prefetch), std::make_unique<Impl>(spec, ctx, std::move(options)))) {
  impl_->ctx.max_time_s = impl_->options.max_time_s;
  impl_->build();
}

Pipeline::~Pipeline() = default;

Node& Pipeline::node(const std::string& name) {
  for (auto& rt : impl_->nodes)
    if (rt->spec->name == name) return *rt->node;
  throw std::out_of_range("no node named '" + name + "'");
}

RunReport Pipeline::run() {
  Impl& impl = *impl_;
  impl.start = Clock::now();
  impl.ctx.start_clock();

  // --max-time: a watchdog asks the sources to stop; packets in flight drain.
  std::mutex watchdog_mutex;
  std::condition_variable watchdog_cv;
  bool done = false;
  std::thread watchdog;
  if (impl.options.max_time_s > 0) {
    watchdog = std::thread([&] {
      std::unique_lock<std::mutex> lock(watchdog_mutex);
      const auto deadline = impl.start + std::chrono::duration<double>(impl.options.max_time_s);
      if (!watchdog_cv.wait_until(lock, deadline, [&] { return done; })) impl.ctx.request_stop();
    });
  }

  for (auto& rt : impl.nodes) {
    if (rt->source && impl.ctx.start_step > 0) {
      try {
        impl.fast_forward(*rt);
      } catch (...) {
        impl.fail(*rt, rt->emitted, std::current_exception());
      }
    }
  }
  for (auto& rt : impl.nodes)
    if (rt->source && !impl.failed.load()) rt->source->activate();
  impl.graph.wait_for_all();
  {
    std::lock_guard<std::mutex> lock(watchdog_mutex);
    done = true;
  }
  watchdog_cv.notify_one();
  if (watchdog.joinable()) watchdog.join();

  if (!impl.failure) {
    for (auto& rt : impl.nodes) {
      try {
        rt->node->finish();
      } catch (...) {
        impl.fail(*rt, -1, std::current_exception());
        break;
      }
    }
  }
  try {
    impl.ctx.metrics().flush();
  } catch (...) {
    if (!impl.failure) throw;  // a node's failure (often the same full disk) is the one to report
  }

  RunReport report;
  report.wall_s = std::chrono::duration<double>(Clock::now() - impl.start).count();
  report.stopped_early = impl.ctx.stop_requested() || impl.ctx.stop_at() >= 0;
  for (auto& rt : impl.nodes) {
    if (rt->spec->type == kLimiterType) continue;
    report.nodes.push_back(impl.profile_of(*rt, report.wall_s));
  }
  for (auto& [track, type, intervals] : impl.span_tracks()) {
    report.nodes.push_back(impl.profile_of(track, type, std::move(intervals), report.wall_s));
  }
  // A failed process ends the job (MPI_Abort) instead of waiting for the others' trace.
  if (!impl.options.trace_file.empty() && !(impl.failure && impl.ctx.world().distributed())) {
    try {
      impl.write_trace(impl.options.trace_file);
    } catch (...) {
      if (!impl.failure) throw;  // as for the metrics: a node's failure is the one to report
    }
  }

  if (impl.failure) {
    const std::string where = "node '" + impl.failure_node + "'" +
                              (impl.failure_step >= 0 ? ", step " + std::to_string(impl.failure_step) : "");
    try {
      std::rethrow_exception(impl.failure);
    } catch (const DataError& e) {
      throw DataError(e.path(), std::string(e.what()).substr(e.path().size() + 2) + " (in " + where + ")");
    } catch (const ConfigError& e) {
      throw ConfigError(e.where(), e.message() + " (in " + where + ")");
    } catch (const std::exception& e) {
      throw NodeError(impl.failure_node, impl.failure_step, e.what());
    } catch (...) {
      throw NodeError(impl.failure_node, impl.failure_step, "unknown exception");
    }
  }
  // A source that neither ran dry nor was stopped means packets were kept alive somewhere.
  for (auto& rt : impl.nodes) {
    if (rt->source && !rt->exhausted && !impl.ctx.stop_requested() &&
        !(impl.ctx.max_steps >= 0 && rt->emitted >= impl.ctx.max_steps) &&
        !(impl.ctx.stop_at() >= 0 && rt->emitted >= impl.ctx.stop_at())) {
      throw std::runtime_error("the pipeline stalled: source '" + rt->spec->name + "' still had data after " +
                               std::to_string(rt->emitted) +
                               " packets, but nothing downstream released them (a node that keeps packets, or a "
                               "limiter whose decrement never arrives)");
    }
  }
  return report;
}

std::string RunReport::table() const {
  std::ostringstream out;
  out << std::left << std::setw(18) << "node" << std::setw(20) << "type" << std::right << std::setw(8) << "count"
      << std::setw(10) << "busy s" << std::setw(8) << "busy%" << std::setw(11) << "mean ms" << std::setw(11)
      << "p95 ms" << std::setw(10) << "wait s" << '\n';
  out << std::fixed;
  for (const auto& n : nodes) {
    out << std::left << std::setw(18) << n.name << std::setw(20) << n.type << std::right << std::setw(8) << n.count
        << std::setw(10) << std::setprecision(3) << n.busy_s << std::setw(7) << std::setprecision(1)
        << n.busy_fraction * 100 << '%' << std::setw(11) << std::setprecision(3) << n.mean_ms << std::setw(11)
        << n.p95_ms << std::setw(10) << n.wait_s << '\n';
  }
  out << "wall time " << std::setprecision(3) << wall_s << " s" << (stopped_early ? " (stopped early)" : "") << '\n';
  return out.str();
}

std::string RunReport::json() const {
  nlohmann::json j;
  j["wall_s"] = wall_s;
  j["stopped_early"] = stopped_early;
  j["nodes"] = nlohmann::json::array();
  for (const auto& n : nodes) {
    j["nodes"].push_back({{"name", n.name}, {"type", n.type}, {"count", n.count}, {"busy_s", n.busy_s},
                          {"active_s", n.active_s}, {"busy_fraction", n.busy_fraction}, {"mean_ms", n.mean_ms},
                          {"p95_ms", n.p95_ms}, {"wait_s", n.wait_s}});
  }
  return j.dump(2) + "\n";
}

}  // namespace diffuflow
