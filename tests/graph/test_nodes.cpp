#include "test_nodes.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

namespace diffuflow::test {

namespace {

const ScalarField<int64_t> kValue{"value", "a counter"};
const ScalarField<int64_t> kIter{"iter", "loop rounds taken"};

std::mutex g_mutex;
std::map<std::string, std::vector<SinkRecord>> g_records;
std::atomic<int64_t> g_in_flight{0};
std::atomic<int64_t> g_max_in_flight{0};

class CounterSource : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, count, 10, "packets to emit", .at_least(0));
  };
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: emits packets with value = seq";
    c.outputs = {{"out", {kValue}, "value"}};
    return c;
  }
  CounterSource(const NodeConfig& config, RunContext& ctx)
      : Node(config, ctx), count_(config.params_as<Params>().count) {}
  bool produce(Emitter& out) override {
    if (next_ >= count_) return false;
    out.emit(Packet(next_).with(kValue, next_));
    ++next_;
    return next_ < count_;
  }

 private:
  int64_t count_;
  int64_t next_ = 0;
};

class Add : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, amount, 1, "added");
    DIFFUFLOW_PARAM(int64_t, sleep_us, 0, "work time");
  };
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: value += amount";
    c.inputs = {{"in", {kValue}, ""}};
    c.outputs = {{"out", {kValue}, ""}};
    return c;
  }
  Add(const NodeConfig& config, RunContext& ctx) : Node(config, ctx), params_(config.params_as<Params>()) {}
  void process(const NodeInput& in, Emitter& out) override {
    if (params_.sleep_us) std::this_thread::sleep_for(std::chrono::microseconds(params_.sleep_us));
    out.emit(in.packet().with(kValue, in.packet().get(kValue) + params_.amount));
  }

 private:
  Params params_;
};

// Takes longer over the earlier packets of each group of five (sleep_us times
// 5, 4, 3, 2, 1), so that at concurrency > 1 later packets finish first; may
// drop some packets and emit two of others.
class Uneven : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, sleep_us, 100, "work time of the fastest packet");
    DIFFUFLOW_PARAM(int64_t, drop_every, 0, "emit nothing for seqs that are multiples of this (0: none)",
                    .at_least(0));
    DIFFUFLOW_PARAM(int64_t, twice_every, 0, "emit two packets for seqs that are multiples of this (0: none)",
                    .at_least(0));
  };
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: passes packets on after uneven work, dropping or doubling some";
    c.inputs = {{"in", {kValue}, ""}};
    c.outputs = {{"out", {kValue}, ""}};
    return c;
  }
  Uneven(const NodeConfig& config, RunContext& ctx) : Node(config, ctx), params_(config.params_as<Params>()) {}
  void process(const NodeInput& in, Emitter& out) override {
    const int64_t seq = in.seq();
    std::this_thread::sleep_for(std::chrono::microseconds(params_.sleep_us * (5 - seq % 5)));
    if (params_.drop_every && seq % params_.drop_every == 0) return;
    out.emit(in.ptr());
    if (params_.twice_every && seq % params_.twice_every == 0) out.emit(in.ptr());
  }

 private:
  Params params_;
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
    c.inputs = {{"a", {kValue}, ""}, {"b", {kValue}, ""}};
    c.outputs = {{"out", {kValue}, ""}};
    c.passthrough = false;
    return c;
  }
  PairSum(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
  void process(const NodeInput& in, Emitter& out) override {
    if (in.packets.size() != 2 || in[0].seq() != in[1].seq()) throw std::logic_error("join delivered a bad pair");
    out.emit(Packet(in.seq()).with(kValue, in[0].get(kValue) + in[1].get(kValue)));
  }
};

// Loop body: counts `iter` up to `rounds`, emitting on `again` until done.
class LoopStep : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, rounds, 3, "rounds per packet", .at_least(1));
  };
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: a loop that runs `rounds` times per packet";
    c.inputs = {{"start", {kValue}, ""}, {"back", {kValue}, ""}};
    c.outputs = {{"again", {kIter}, ""}, {"done", {kIter}, ""}};
    c.input_policy = InputPolicy::any;
    return c;
  }
  LoopStep(const NodeConfig& config, RunContext& ctx) : Node(config, ctx), rounds_(config.params_as<Params>().rounds) {}
  void process(const NodeInput& in, Emitter& out) override {
    const Packet& p = in.packet();
    const int64_t iter = in.port == 0 ? 1 : p.get(kIter) + 1;
    Packet next = p.with(kIter, iter).with(kValue, p.get(kValue) + 100);
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
    c.inputs = {{"in", {kValue}, ""}};
    c.outputs = {{"out", {}, "the packet, for feedback edges"}};
    return c;
  }
  Sink(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
  void process(const NodeInput& in, Emitter& out) override {
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      g_records[name()].push_back({in.seq(), in.packet().get(kValue)});
    }
    out.emit(in.ptr());
  }
};

class FailAt : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, step, 3, "seq that fails");
  };
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: throws on a chosen seq";
    c.inputs = {{"in", {}, ""}};
    c.outputs = {{"out", {}, ""}};
    return c;
  }
  FailAt(const NodeConfig& config, RunContext& ctx) : Node(config, ctx), step_(config.params_as<Params>().step) {}
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
DIFFUFLOW_REGISTER_NODE(test_uneven, diffuflow::test::Uneven);
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
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, size, 0, "a size", .required());
  };
  static ResourceContract contract() {
    ResourceContract c;
    c.doc = "test: a resource with one required parameter";
    return c;
  }
  TestResource(const ResourceConfig&, RunContext&) {}
};

class UsesResource : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, res, "", "the resource", .resource("test_resource"));
  };
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: names a resource";
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
    c.inputs = {{"in", {kIter}, ""}};
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

namespace diffuflow::test {
namespace {

std::mutex probe_mutex;
ThreadProbes probes;

void record(std::vector<std::thread::id>& where) {
  std::lock_guard<std::mutex> lock(probe_mutex);
  where.push_back(std::this_thread::get_id());
}

// Notes the thread it is made on; with `fail`, refuses to be made.
class ThreadProbe : public Resource {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(bool, fail, false, "throw a ConfigError when made");
  };
  static ResourceContract contract() {
    ResourceContract c;
    c.doc = "test: notes the thread it is made on";
    return c;
  }
  ThreadProbe(const ResourceConfig& config, RunContext&) {
    record(probes.resource_made);
    if (config.params_as<Params>().fail) throw ConfigError({}, "test_thread_probe: asked to fail");
  }
};

// A device node that notes the threads it is made and runs on.
class DeviceProbe : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, probe, "", "the probe resource", .resource("test_thread_probe"));
  };
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: notes the threads it is made and runs on";
    c.inputs = {{"in", {}, ""}};
    c.outputs = {{"out", {}, ""}};
    c.host_only = false;
    return c;
  }
  DeviceProbe(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) { record(probes.node_made); }
  void process(const NodeInput& in, Emitter& out) override {
    record(probes.node_ran);
    out.emit(in.packet());
  }
};

}  // namespace

ThreadProbes thread_probes() {
  std::lock_guard<std::mutex> lock(probe_mutex);
  return probes;
}

void reset_thread_probes() {
  std::lock_guard<std::mutex> lock(probe_mutex);
  probes = ThreadProbes();
}

}  // namespace diffuflow::test

DIFFUFLOW_REGISTER_RESOURCE(test_resource, diffuflow::test::TestResource);
DIFFUFLOW_REGISTER_RESOURCE(test_thread_probe, diffuflow::test::ThreadProbe);
DIFFUFLOW_REGISTER_NODE(test_device_probe, diffuflow::test::DeviceProbe);
DIFFUFLOW_REGISTER_NODE(test_uses_resource, diffuflow::test::UsesResource);
DIFFUFLOW_REGISTER_NODE(test_needs_iter, diffuflow::test::NeedsIter);
DIFFUFLOW_REGISTER_NODE(test_resourceless, diffuflow::test::Resourceless);

namespace diffuflow::test {
namespace {

// Reads the field its `field` parameter names.
class Show : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, field, "value", "field to read");
  };
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: reads the field named by a parameter";
    c.inputs = {{"in", {}, "", {"field"}}};
    return c;
  }
  Show(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
};

}  // namespace
}  // namespace diffuflow::test

DIFFUFLOW_REGISTER_NODE(test_show, diffuflow::test::Show);

// Typed fields: a source writing tensors of known dtype, rank and place, and
// readers that expect them one way or another.
namespace diffuflow::test {
namespace {

const TensorField kImage{"image", DType::f32, 4, Place::host, "[N,C,H,W] on the host"};
const TensorField kDeviceImage{"device_image", DType::f32, 4, Place::device, "[N,C,H,W] on the device"};
const TensorField kImageAsIndex{"image", DType::s32, 1, Place::host, "[N] indices"};
const TensorField kImageAsRank2{"image", DType::f32, 2, Place::any, "[N,D]"};
const ScalarField<double> kImageAsNumber{"image", "a number"};
const ScalarField<double> kValueAsNumber{"value", "an integer read as a number"};
const TensorField kDeviceImageOnHost{"device_image", DType::f32, 4, Place::host, "[N,C,H,W] mapped on the host"};

class TensorSource : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: writes typed tensor fields";
    c.outputs = {{"out", {kImage, kDeviceImage, kValue}, ""}};
    return c;
  }
  TensorSource(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
};

template <auto* Read>
class Reader : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: reads one typed field";
    c.inputs = {{"in", {*Read}, ""}};
    return c;
  }
  Reader(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
};

// Reads the field its `field` parameter names, expecting an f32 tensor of rank 4.
class ShowImage : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, field, "image", "field to read");
  };
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test: reads an image field named by a parameter";
    c.inputs = {{"in", {}, "", {FieldParam("field", TensorField("", DType::f32, 4, Place::any, ""))}}};
    return c;
  }
  ShowImage(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
};

}  // namespace
}  // namespace diffuflow::test

DIFFUFLOW_REGISTER_NODE(test_tensor_source, diffuflow::test::TensorSource);
DIFFUFLOW_REGISTER_NODE(test_read_image, diffuflow::test::Reader<&diffuflow::test::kImage>);
DIFFUFLOW_REGISTER_NODE(test_read_index, diffuflow::test::Reader<&diffuflow::test::kImageAsIndex>);
DIFFUFLOW_REGISTER_NODE(test_read_rank2, diffuflow::test::Reader<&diffuflow::test::kImageAsRank2>);
DIFFUFLOW_REGISTER_NODE(test_read_number, diffuflow::test::Reader<&diffuflow::test::kImageAsNumber>);
DIFFUFLOW_REGISTER_NODE(test_read_value_number, diffuflow::test::Reader<&diffuflow::test::kValueAsNumber>);
DIFFUFLOW_REGISTER_NODE(test_read_on_host, diffuflow::test::Reader<&diffuflow::test::kDeviceImageOnHost>);
DIFFUFLOW_REGISTER_NODE(test_show_image, diffuflow::test::ShowImage);
