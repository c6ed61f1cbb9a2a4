#include "test_nodes.hpp"

#include "graph/registry.hpp"

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

namespace diffuflow::test {

namespace {

std::mutex g_mutex;
std::map<std::string, std::vector<SinkRecord>> g_records;
std::atomic<int64_t> g_in_flight{0};
std::atomic<int64_t> g_max_in_flight{0};

class CounterSource : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: emits packets with value = seq";
    c.params = {ParamSpec::integer("count", 10, "packets to emit").at_least(0)};
    c.outputs = {{"out", {"value"}, "value"}};
    return c;
  }
  CounterSource(const NodeConfig& config, RunContext& ctx) : Node(config, ctx), count_(config.params.integer("count")) {}
  bool produce(Emitter& out) override {
    if (next_ >= count_) return false;
    out.emit(Packet(next_).with("value", next_));
    ++next_;
    return next_ < count_;
  }

 private:
  int64_t count_;
  int64_t next_ = 0;
};

class Add : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: value += amount";
    c.params = {ParamSpec::integer("amount", 1, "added"), ParamSpec::integer("sleep_us", 0, "work time")};
    c.inputs = {{"in", {"value"}, ""}};
    c.outputs = {{"out", {"value"}, ""}};
    return c;
  }
  Add(const NodeConfig& config, RunContext& ctx)
      : Node(config, ctx), amount_(config.params.integer("amount")), sleep_us_(config.params.integer("sleep_us")) {}
  void process(const NodeInput& in, Emitter& out) override {
    if (sleep_us_) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us_));
    out.emit(in.packet().with("value", in.packet().integer("value") + amount_));
  }

 private:
  int64_t amount_, sleep_us_;
};

// The same as Add, but declared a device node: it runs on the compute thread.
class DeviceAdd : public Add {
 public:
  static NodeContract contract() {
    NodeContract c = Add::contract();
    c.doc = "test: value += amount, on the compute thread";
    c.host_only = false;
    return c;
  }
  using Add::Add;
};

class PairSum : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: joins two packets of the same seq, writes sum";
    c.inputs = {{"a", {"value"}, ""}, {"b", {"value"}, ""}};
    c.outputs = {{"out", {"value"}, ""}};
    c.passthrough = false;
    return c;
  }
  PairSum(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
  void process(const NodeInput& in, Emitter& out) override {
    if (in.packets.size() != 2 || in[0].seq() != in[1].seq()) throw std::logic_error("join delivered a bad pair");
    out.emit(Packet(in.seq()).with("value", in[0].integer("value") + in[1].integer("value")));
  }
};

// Loop body: counts `iter` up to `rounds`, emitting on `again` until done.
class LoopStep : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: a loop that runs `rounds` times per packet";
    c.params = {ParamSpec::integer("rounds", 3, "rounds per packet").at_least(1)};
    c.inputs = {{"start", {"value"}, ""}, {"back", {"value"}, ""}};
    c.outputs = {{"again", {"iter"}, ""}, {"done", {"iter"}, ""}};
    c.input_policy = InputPolicy::any;
    return c;
  }
  LoopStep(const NodeConfig& config, RunContext& ctx) : Node(config, ctx), rounds_(config.params.integer("rounds")) {}
  void process(const NodeInput& in, Emitter& out) override {
    const Packet& p = in.packet();
    const int64_t iter = in.port == 0 ? 1 : p.integer("iter") + 1;
    Packet next = p.with("iter", iter).with("value", p.integer("value") + 100);
    out.emit(iter >= rounds_ ? 1 : 0, std::move(next));
  }

 private:
  int64_t rounds_;
};

class Enter : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: counts packets in flight (with test_leave)";
    c.inputs = {{"in", {}, ""}};
    c.outputs = {{"out", {}, ""}};
    return c;
  }
  Enter(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
  void process(const NodeInput& in, Emitter& out) override {
    const int64_t now = ++g_in_flight;
    int64_t seen = g_max_in_flight.load();
    while (now > seen && !g_max_in_flight.compare_exchange_weak(seen, now)) {
    }
    out.emit(in.ptr());
  }
};

class Leave : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: ends a packet's time in flight";
    c.inputs = {{"in", {}, ""}};
    c.outputs = {{"out", {}, ""}};
    return c;
  }
  Leave(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
  void process(const NodeInput& in, Emitter& out) override {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    --g_in_flight;
    out.emit(in.ptr());
  }
};

class Sink : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: records (seq, value)";
    c.inputs = {{"in", {"value"}, ""}};
    c.outputs = {{"out", {}, "the packet, for feedback edges"}};
    return c;
  }
  Sink(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
  void process(const NodeInput& in, Emitter& out) override {
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      g_records[name()].push_back({in.seq(), in.packet().integer("value")});
    }
    out.emit(in.ptr());
  }
};

class FailAt : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: throws on a chosen seq";
    c.params = {ParamSpec::integer("step", 3, "seq that fails")};
    c.inputs = {{"in", {}, ""}};
    c.outputs = {{"out", {}, ""}};
    return c;
  }
  FailAt(const NodeConfig& config, RunContext& ctx) : Node(config, ctx), step_(config.params.integer("step")) {}
  void process(const NodeInput& in, Emitter& out) override {
    if (in.seq() == step_) throw std::runtime_error("deliberate failure");
    out.emit(in.ptr());
  }

 private:
  int64_t step_;
};

}  // namespace

std::vector<SinkRecord> sink_records(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_records[name];
}

void reset_sinks() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_records.clear();
  g_in_flight = 0;
  g_max_in_flight = 0;
}

int64_t max_in_flight_seen() { return g_max_in_flight.load(); }

}  // namespace diffuflow::test

DIFFUFLOW_REGISTER_NODE(test_source, diffuflow::test::CounterSource);
DIFFUFLOW_REGISTER_NODE(test_add, diffuflow::test::Add);
DIFFUFLOW_REGISTER_NODE(test_device_add, diffuflow::test::DeviceAdd);
DIFFUFLOW_REGISTER_NODE(test_pair_sum, diffuflow::test::PairSum);
DIFFUFLOW_REGISTER_NODE(test_loop, diffuflow::test::LoopStep);
DIFFUFLOW_REGISTER_NODE(test_enter, diffuflow::test::Enter);
DIFFUFLOW_REGISTER_NODE(test_leave, diffuflow::test::Leave);
DIFFUFLOW_REGISTER_NODE(test_sink, diffuflow::test::Sink);
DIFFUFLOW_REGISTER_NODE(test_fail, diffuflow::test::FailAt);

namespace diffuflow::test {
namespace {

class TestResource : public Resource {
 public:
  static ResourceContract contract() {
    ResourceContract c;
    c.doc = "test: a resource with one required parameter";
    c.params = {ParamSpec::integer("size", 0, "a size").required()};
    return c;
  }
  TestResource(const ResourceConfig&, RunContext&) {}
};

class UsesResource : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: names a resource";
    c.params = {ParamSpec::resource("res", "test_resource", "the resource")};
    c.inputs = {{"in", {}, ""}};
    c.outputs = {{"out", {}, ""}};
    return c;
  }
  UsesResource(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
};

class NeedsIter : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: reads a field nobody writes";
    c.inputs = {{"in", {"iter"}, ""}};
    c.outputs = {{"out", {}, ""}};
    return c;
  }
  NeedsIter(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
};

// A non-source with an input that is never connected.
class Resourceless : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: has an input port";
    c.inputs = {{"in", {}, ""}};
    return c;
  }
  Resourceless(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
};

}  // namespace
}  // namespace diffuflow::test

DIFFUFLOW_REGISTER_RESOURCE(test_resource, diffuflow::test::TestResource);
DIFFUFLOW_REGISTER_NODE(test_uses_resource, diffuflow::test::UsesResource);
DIFFUFLOW_REGISTER_NODE(test_needs_iter, diffuflow::test::NeedsIter);
DIFFUFLOW_REGISTER_NODE(test_resourceless, diffuflow::test::Resourceless);

namespace diffuflow::test {
namespace {

// Reads the field its `field` parameter names.
class Show : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: reads the field named by a parameter";
    c.params = {ParamSpec::text("field", "value", "field to read")};
    c.inputs = {{"in", {}, "", {"field"}}};
    return c;
  }
  Show(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
};

}  // namespace
}  // namespace diffuflow::test

DIFFUFLOW_REGISTER_NODE(test_show, diffuflow::test::Show);
