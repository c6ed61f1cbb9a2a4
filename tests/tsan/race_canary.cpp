// A pipeline with a real data race, built only into ThreadSanitizer builds
// (DIFFUFLOW_SANITIZE_THREAD). Its ctest entry passes only when TSan reports
// the race inside RacyCounter::process (frame 0 of the report), which runs on oneTBB's workers: proof
// that the TSan run sees node bodies and that no suppression hides them.
#include "graph/pipeline.hpp"
#include "graph/registry.hpp"

#include <chrono>
#include <cstdio>
#include <thread>

namespace {

using namespace diffuflow;

int64_t g_total = 0;  // deliberately unsynchronised

class Source : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "race canary: emits packets";
    c.outputs = {{"out", {"value"}, "value"}};
    return c;
  }
  Source(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
  bool produce(Emitter& out) override {
    out.emit(Packet(next_).with("value", next_));
    return ++next_ < 64;
  }

 private:
  int64_t next_ = 0;
};

class RacyCounter : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "race canary: adds to a global without a lock";
    c.inputs = {{"in", {"value"}, ""}};
    return c;
  }
  RacyCounter(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
  void process(const NodeInput& in, Emitter&) override {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    g_total += in.packet().integer("value");
  }
};

}  // namespace

DIFFUFLOW_REGISTER_NODE(canary_source, Source);
DIFFUFLOW_REGISTER_NODE(canary_racy_counter, RacyCounter);

int main() {
  const PipelineSpec spec = parse_pipeline(R"(
name: race_canary
nodes:
  - {name: src, type: canary_source}
  - {name: count, type: canary_racy_counter, concurrency: 4}
edges: [src -> count]
)",
                                           "race_canary.yaml");
  RunContext ctx(Device::host(), spec.seed);
  Pipeline pipeline(spec, ctx);
  pipeline.run();
  std::printf("total %lld\n", static_cast<long long>(g_total));
  return 0;
}
