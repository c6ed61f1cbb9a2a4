#include "graph/errors.hpp"
#include "graph/pipeline.hpp"
#include "test_nodes.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <set>

using namespace diffuflow;
using diffuflow::test::reset_sinks;
using diffuflow::test::reset_thread_probes;
using diffuflow::test::sink_records;
using diffuflow::test::thread_probes;
using diffuflow::test::ThreadProbes;

namespace {

RunReport run_yaml(const std::string& yaml, int64_t max_steps = -1, int prefetch = 4) {
  PipelineSpec spec = parse_pipeline(yaml, "test.yaml");
  RunContext ctx(Device::host(), spec.seed);
  ctx.max_steps = max_steps;
  RunOptions options;
  options.prefetch = prefetch;
  Pipeline pipeline(spec, ctx, options);
  return pipeline.run();
}

std::vector<int64_t> sorted_values(const std::string& sink) {
  std::vector<int64_t> values;
  for (const auto& r : sink_records(sink)) values.push_back(r.value);
  std::sort(values.begin(), values.end());
  return values;
}

}  // namespace

TEST_CASE("a linear chain delivers every packet once, at concurrency 1, 2 and 4") {
  for (int concurrency : {1, 2, 4}) {
    CAPTURE(concurrency);
    reset_sinks();
    run_yaml(R"(
name: chain
nodes:
  - {name: src, type: test_source, params: {count: 50}}
  - {name: add, type: test_add, params: {amount: 10}, concurrency: )" +
             std::to_string(concurrency) + R"(}
  - {name: sink, type: test_sink}
edges: [src -> add, add -> sink]
)");
    const auto values = sorted_values("sink");
    REQUIRE(values.size() == 50);
    for (int64_t i = 0; i < 50; ++i) CHECK(values[i] == i + 10);
  }
}

TEST_CASE("device nodes run on the compute thread and deliver every packet") {
  for (int concurrency : {1, 3}) {
    CAPTURE(concurrency);
    reset_sinks();
    run_yaml(R"(
name: device
nodes:
  - {name: src, type: test_source, params: {count: 25}}
  - {name: add, type: test_device_add, params: {amount: 7}, concurrency: )" +
             std::to_string(concurrency) + R"(}
  - {name: more, type: test_device_add, params: {amount: 1}}
  - {name: sink, type: test_sink}
edges: [src -> add, add -> more, more -> sink]
)");
    const auto values = sorted_values("sink");
    REQUIRE(values.size() == 25);
    for (int64_t i = 0; i < 25; ++i) CHECK(values[i] == i + 8);
  }
}

TEST_CASE("resources and nodes of a pipeline with device nodes are made on its compute thread") {
  // A model makes primitives as it is made; on any thread but the compute
  // thread they would start a second OpenMP team (docs/design.md).
  reset_sinks();
  reset_thread_probes();
  run_yaml(R"(
name: probes
resources:
  - {name: probe, type: test_thread_probe}
nodes:
  - {name: src, type: test_source, params: {count: 5}}
  - {name: dev, type: test_device_probe, params: {probe: probe}}
  - {name: sink, type: test_sink}
edges: [src -> dev, dev -> sink]
)");
  CHECK(sorted_values("sink").size() == 5);
  const ThreadProbes seen = thread_probes();
  REQUIRE(seen.resource_made.size() == 1);
  REQUIRE(seen.node_made.size() == 1);
  REQUIRE(seen.node_ran.size() == 5);
  CHECK(seen.resource_made[0] != std::this_thread::get_id());
  CHECK(seen.node_made[0] == seen.resource_made[0]);
  for (const auto& id : seen.node_ran) CHECK(id == seen.resource_made[0]);

  // A resource that fails as it is made fails the build with its own error.
  reset_thread_probes();
  CHECK_THROWS_WITH_AS(run_yaml(R"(
name: probes
resources:
  - {name: probe, type: test_thread_probe, params: {fail: true}}
nodes:
  - {name: src, type: test_source, params: {count: 5}}
  - {name: dev, type: test_device_probe, params: {probe: probe}}
  - {name: sink, type: test_sink}
edges: [src -> dev, dev -> sink]
)"),
                       "test_thread_probe: asked to fail", ConfigError);
}

TEST_CASE("fan-out then a tag-matching join pairs packets by seq") {
  for (int concurrency : {1, 4}) {
    CAPTURE(concurrency);
    reset_sinks();
    const std::string c = std::to_string(concurrency);
    run_yaml(R"(
name: diamond
nodes:
  - {name: src, type: test_source, params: {count: 40}}
  - {name: left, type: test_add, params: {amount: 1000, sleep_us: 50}, concurrency: )" + c + R"(}
  - {name: right, type: test_add, params: {amount: 1}, concurrency: )" + c + R"(}
  - {name: join, type: test_pair_sum}
  - {name: sink, type: test_sink}
edges: [src -> left, src -> right, left -> join.a, right -> join.b, join -> sink]
)");
    const auto records = sink_records("sink");
    REQUIRE(records.size() == 40);
    std::set<int64_t> seqs;
    for (const auto& r : records) {
      CHECK(r.value == 2 * r.seq + 1001);  // (seq + 1000) + (seq + 1)
      seqs.insert(r.seq);
    }
    CHECK(seqs.size() == 40);
  }
}

TEST_CASE("every node passes packets on in the order it received them, at any concurrency") {
  // A parallel node finishes its packets out of order (each group of five
  // takes 5, 4, 3, 2, 1 units of work), yet the nodes after it see them in
  // seq order: training applies its steps in the order of the data, whatever
  // the thread scheduling. Also through a device node, a join, and a node
  // that drops some packets and doubles others.
  for (int concurrency : {1, 4}) {
    CAPTURE(concurrency);
    reset_sinks();
    const std::string c = std::to_string(concurrency);
    run_yaml(R"(
name: in_order
nodes:
  - {name: src, type: test_source, params: {count: 60}}
  - {name: slow, type: test_uneven, params: {sleep_us: 300}, concurrency: )" + c + R"(}
  - {name: more, type: test_add, params: {amount: 1000}}
  - {name: fast, type: test_add, params: {amount: 1}, concurrency: )" + c + R"(}
  - {name: join, type: test_pair_sum}
  - {name: dev, type: test_device_add, params: {amount: 0}, concurrency: )" + c + R"(}
  - {name: gaps, type: test_uneven, params: {drop_every: 3, twice_every: 4}, concurrency: )" + c + R"(}
  - {name: direct, type: test_sink}
  - {name: sink, type: test_sink}
edges: [src -> slow, slow -> more, src -> fast, more -> join.a, fast -> join.b, slow -> direct, join -> dev,
        dev -> gaps, gaps -> sink]
)");
    std::vector<int64_t> expected_direct, expected_sink;
    for (int64_t seq = 0; seq < 60; ++seq) {
      expected_direct.push_back(seq);
      if (seq % 3 == 0) continue;
      expected_sink.push_back(seq);
      if (seq % 4 == 0) expected_sink.push_back(seq);
    }
    auto seqs = [](const std::string& sink) {
      std::vector<int64_t> out;
      for (const auto& r : sink_records(sink)) out.push_back(r.seq);
      return out;
    };
    CHECK(seqs("direct") == expected_direct);
    CHECK(seqs("sink") == expected_sink);
    for (const auto& r : sink_records("sink")) CHECK(r.value == 2 * r.seq + 1001);
  }
}

TEST_CASE("a limiter on a feedback cycle bounds the packets in flight") {
  for (int limit : {1, 3}) {
    CAPTURE(limit);
    reset_sinks();
    run_yaml(R"(
name: gated
nodes:
  - {name: src, type: test_source, params: {count: 30}}
  - {name: gate, type: limiter, params: {max_in_flight: )" + std::to_string(limit) + R"(}}
  - {name: enter, type: test_enter}
  - {name: leave, type: test_leave, concurrency: 4}
  - {name: sink, type: test_sink}
edges: [src -> gate, gate -> enter, enter -> leave, leave -> sink, sink -> gate.decrement]
)",
             -1, 16);
    CHECK(sink_records("sink").size() == 30);
    CHECK(diffuflow::test::max_in_flight_seen() <= limit);
    CHECK(diffuflow::test::max_in_flight_seen() >= 1);
  }
}

TEST_CASE("a loop inside the graph runs each packet the requested number of rounds") {
  reset_sinks();
  run_yaml(R"(
name: loop
nodes:
  - {name: src, type: test_source, params: {count: 12}}
  - {name: gate, type: limiter, params: {max_in_flight: 4}}
  - {name: step, type: test_loop, params: {rounds: 5}, concurrency: 2}
  - {name: body, type: test_add, params: {amount: 1}}
  - {name: sink, type: test_sink}
edges:
  - src -> gate
  - gate -> step.start
  - step.again -> body
  - body -> step.back
  - step.done -> sink
  - sink -> gate.decrement
)");
  const auto records = sink_records("sink");
  REQUIRE(records.size() == 12);
  // 5 rounds of +100 in the loop step and 4 passes through body (+1 each).
  for (const auto& r : records) CHECK(r.value == r.seq + 5 * 100 + 4);
}

TEST_CASE("an exception in a node cancels the graph and names node, step and cause") {
  reset_sinks();
  try {
    run_yaml(R"(
name: failing
nodes:
  - {name: src, type: test_source, params: {count: 1000}}
  - {name: boom, type: test_fail, params: {step: 3}}
  - {name: sink, type: test_sink}
edges: [src -> boom, boom -> sink]
)");
    FAIL("run() should have thrown");
  } catch (const NodeError& e) {
    CHECK(e.node() == "boom");
    CHECK(e.step() == 3);
    CHECK(std::string(e.what()).find("deliberate failure") != std::string::npos);
  }
  CHECK(sink_records("sink").size() < 1000);
}

TEST_CASE("max_steps stops every source after that many packets") {
  reset_sinks();
  run_yaml(R"(
name: capped
nodes:
  - {name: src, type: test_source, params: {count: 100}}
  - {name: sink, type: test_sink}
edges: [src -> sink]
)",
           7);
  CHECK(sink_records("sink").size() == 7);
}

TEST_CASE("the profile counts every invocation of every node") {
  reset_sinks();
  const RunReport report = run_yaml(R"(
name: profiled
nodes:
  - {name: src, type: test_source, params: {count: 20}}
  - {name: add, type: test_add, params: {sleep_us: 100}}
  - {name: sink, type: test_sink}
edges: [src -> add, add -> sink]
)");
  REQUIRE(report.nodes.size() == 3);
  const auto& add = report.nodes[1];
  CHECK(add.name == "add");
  CHECK(add.count == 20);
  CHECK(add.busy_s >= 20 * 100e-6);
  CHECK(add.p95_ms >= add.mean_ms * 0.5);
  CHECK(report.json().find("\"busy_fraction\"") != std::string::npos);
  CHECK(report.table().find("add") != std::string::npos);
}

TEST_CASE("a pipeline assembled in C++ validates and runs like its YAML twin") {
  reset_sinks();
  PipelineSpec spec = PipelineSpecBuilder("from_cpp")
                          .node("src", "test_source", {{"count", 5}})
                          .node("add", "test_add", {{"amount", 2}})
                          .node("sink", "test_sink")
                          .edge("src -> add")
                          .edge("add -> sink")
                          .build();
  RunContext ctx;
  Pipeline(spec, ctx).run();
  CHECK(sorted_values("sink") == std::vector<int64_t>{2, 3, 4, 5, 6});
  CHECK_THROWS_AS(PipelineSpecBuilder("bad").node("src", "test_sourse").build(), ConfigErrors);
}
