#include "graph/errors.hpp"
#include "graph/spec.hpp"

#include "test_util.hpp"
#include <doctest/doctest.h>

using namespace diffuflow;

namespace {

// Validates `yaml` and returns the errors (none if it is valid).
std::vector<ConfigError> errors_of(const std::string& yaml, const std::vector<Override>& overrides = {}) {
  try {
    parse_pipeline(yaml, "p.yaml", overrides);
  } catch (const ConfigErrors& e) {
    return e.errors();
  }
  return {};
}

ConfigError only_error(const std::vector<ConfigError>& errors) {
  REQUIRE(errors.size() == 1);
  return errors[0];
}


}  // namespace

TEST_CASE("a valid pipeline has no errors and keeps its settings") {
  const auto spec = parse_pipeline(R"(
name: ok
seed: 42
threads: 2
nodes:
  - {name: src, type: test_source, params: {count: 3}}
  - {name: sink, type: test_sink}
edges: [src -> sink]
)",
                                   "p.yaml");
  CHECK(spec.seed == 42);
  CHECK(spec.threads == 2);
  CHECK(spec.nodes[0].params.integer("count") == 3);
  CHECK(spec.resolved_yaml().find("count: 3") != std::string::npos);
}

TEST_CASE("a YAML syntax error reports file, line and column") {
  const auto e = only_error(errors_of("name: x\nnodes:\n  - {name: a, type: test_source\nedges: []\n"));
  CHECK(e.where().file == "p.yaml");
  CHECK(e.where().line == 4);
  CHECK(e.where().column >= 1);
  CHECK(test::contains(e.what(), "p.yaml:4:"));
  CHECK(test::contains(e.message(), "YAML syntax error"));
}

TEST_CASE("an unknown node type suggests the closest registered name, at the type's position") {
  const auto e = only_error(errors_of(R"(name: x
nodes:
  - name: src
    type: test_sorce
edges: []
)"));
  CHECK(e.where().line == 4);
  CHECK(e.where().column == 11);
  CHECK(e.where().key_path == "nodes[0].type");
  CHECK(test::contains(e.message(), "unknown node type 'test_sorce'"));
  CHECK(test::contains(e.message(), "did you mean 'test_source'"));
}

TEST_CASE("an unknown parameter is reported at its key with the closest name") {
  const auto e = only_error(errors_of(R"(name: x
nodes:
  - name: src
    type: test_source
    params:
      cuont: 3
  - {name: sink, type: test_sink}
edges: [src -> sink]
)"));
  CHECK(e.where().line == 6);
  CHECK(e.where().column == 7);
  CHECK(e.where().key_path == "nodes[0].params.cuont");
  CHECK(test::contains(e.message(), "did you mean 'count'"));
}

TEST_CASE("a mistyped parameter names the expected type and the value given") {
  const auto e = only_error(errors_of(R"(name: x
nodes:
  - name: src
    type: test_source
    params: {count: many}
  - {name: sink, type: test_sink}
edges: [src -> sink]
)"));
  CHECK(e.where().line == 5);
  CHECK(e.where().column == 21);
  CHECK(test::contains(e.message(), "expected int"));
  CHECK(test::contains(e.message(), "'many'"));
}

TEST_CASE("a value out of range names the allowed range") {
  const auto e = only_error(errors_of(R"(name: x
nodes:
  - {name: src, type: test_source, params: {count: -4}}
  - {name: sink, type: test_sink}
edges: [src -> sink]
)"));
  CHECK(e.where().line == 3);
  CHECK(test::contains(e.message(), "out of range"));
  CHECK(test::contains(e.message(), ">= 0"));
}

TEST_CASE("a missing required parameter is reported with its type and doc") {
  const auto errors = errors_of(R"(name: x
resources:
  - {name: r, type: test_resource}
nodes:
  - {name: src, type: test_source}
  - {name: sink, type: test_sink}
edges: [src -> sink]
)");
  REQUIRE(errors.size() == 1);
  CHECK(test::contains(errors[0].message(), "missing required parameter 'size'"));
  CHECK(errors[0].where().line == 3);
}

TEST_CASE("an edge to a missing node or port is reported at the edge") {
  auto errors = errors_of(R"(name: x
nodes:
  - {name: src, type: test_source}
  - {name: sink, type: test_sink}
edges:
  - src -> sinc
  - src.outt -> sink
)");
  REQUIRE(errors.size() == 2);
  CHECK(errors[0].where().line == 6);
  CHECK(test::contains(errors[0].message(), "node 'sinc'"));
  CHECK(test::contains(errors[0].message(), "did you mean 'sink'"));
  CHECK(errors[1].where().line == 7);
  CHECK(test::contains(errors[1].message(), "no output port 'outt'"));
  CHECK(test::contains(errors[1].message(), "its outputs: out"));
}

TEST_CASE("fields written upstream satisfy readers across joins and loops") {
  CHECK(errors_of(R"(name: x
nodes:
  - {name: src, type: test_source}
  - {name: gate, type: limiter}
  - {name: step, type: test_loop}
  - {name: sink, type: test_sink}
edges: [src -> gate, gate -> step.start, step.again -> step.back, step.done -> sink, sink -> gate.decrement]
)").empty());
  CHECK(errors_of(R"(name: x
nodes:
  - {name: src, type: test_source}
  - {name: join, type: test_pair_sum}
  - {name: add, type: test_add}
  - {name: sink, type: test_sink}
edges: [src -> join.a, src -> join.b, join -> add, add -> sink]
)").empty());
}

TEST_CASE("an input port with no incoming edge is an error") {
  const auto e = only_error(errors_of(R"(name: x
nodes:
  - {name: lonely, type: test_resourceless}
)"));
  CHECK(e.where().line == 3);
  CHECK(test::contains(e.message(), "input port 'in' of node 'lonely' has no incoming edge"));
}

TEST_CASE("a field read but never written upstream is reported at the reading node") {
  const auto errors = errors_of(R"(name: x
nodes:
  - {name: a, type: test_needs_iter}
  - {name: src, type: test_source}
  - {name: sink, type: test_sink}
edges: [src -> a, a -> sink]
)");
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].where().line == 3);
  CHECK(test::contains(errors[0].message(), "reads field 'iter'"));
  CHECK(test::contains(errors[0].message(), "upstream writes: value"));
}

TEST_CASE("a cycle without a limiter is an error; the same cycle behind a limiter is fine") {
  const auto errors = errors_of(R"(name: x
nodes:
  - {name: src, type: test_source}
  - {name: step, type: test_loop}
  - {name: body, type: test_add}
  - {name: sink, type: test_sink}
edges: [src -> step.start, step.again -> body, body -> step.back, step.done -> sink]
)");
  REQUIRE(errors.size() == 1);
  CHECK(test::contains(errors[0].message(), "cycle without a limiter"));
  CHECK(test::contains(errors[0].message(), "step"));
  CHECK(test::contains(errors[0].message(), "body"));
  CHECK(errors[0].where().line == 4);
  CHECK(errors_of(R"(name: x
nodes:
  - {name: src, type: test_source}
  - {name: gate, type: limiter}
  - {name: step, type: test_loop}
  - {name: body, type: test_add}
  - {name: sink, type: test_sink}
edges: [src -> gate, gate -> step.start, step.again -> body, body -> step.back, step.done -> sink, sink -> gate.decrement]
)").empty());
}

TEST_CASE("every error of a file is reported, not just the first") {
  const auto errors = errors_of(R"(name: x
colour: blue
nodes:
  - {name: src, type: test_source, params: {count: lots}}
  - {name: sink, type: test_snik}
  - {name: add, type: test_add, params: {amont: 2}}
edges: [src -> add]
)");
  REQUIRE(errors.size() == 4);
  CHECK(test::contains(errors[0].message(), "unknown top-level key 'colour'"));
  CHECK(errors[1].where().line == 4);
  CHECK(errors[2].where().line == 5);
  CHECK(errors[3].where().line == 6);
}

TEST_CASE("--set overrides are type-checked like the YAML they replace") {
  const std::string yaml = R"(name: x
nodes:
  - {name: src, type: test_source, params: {count: 3}}
  - {name: sink, type: test_sink}
edges: [src -> sink]
)";
  auto spec = parse_pipeline(yaml, "p.yaml", {parse_override("src.count=9"), parse_override("seed=5")});
  CHECK(spec.nodes[0].params.integer("count") == 9);
  CHECK(spec.seed == 5);
  const auto e = only_error(errors_of(yaml, {parse_override("src.count=nine")}));
  CHECK(e.where().file == "--set");
  CHECK(e.where().key_path == "src.count");
  CHECK(test::contains(e.message(), "expected int"));
  CHECK(test::contains(only_error(errors_of(yaml, {parse_override("src.cont=1")})).message(), "did you mean 'count'"));
  CHECK(test::contains(only_error(errors_of(yaml, {parse_override("scr.count=1")})).message(), "did you mean 'src'"));
  CHECK_THROWS_AS(parse_override("nonsense"), ConfigError);
}

TEST_CASE("duplicate node names and a bad device are reported") {
  const auto errors = errors_of(R"(name: x
device: tpu
nodes:
  - {name: src, type: test_source}
  - {name: src, type: test_sink}
edges: []
)");
  REQUIRE(errors.size() == 2);
  CHECK(test::contains(errors[0].message(), "device must be"));
  CHECK(errors[0].where().line == 2);
  CHECK(test::contains(errors[1].message(), "used twice"));
  CHECK(errors[1].where().line == 5);
}

TEST_CASE("a resource reference must name a declared resource of the right type") {
  const auto errors = errors_of(R"(name: x
resources:
  - {name: thing, type: test_resource, params: {size: 2}}
nodes:
  - {name: src, type: test_source}
  - {name: user, type: test_uses_resource, params: {res: thng}}
  - {name: sink, type: test_sink}
edges: [src -> user, user -> sink]
)");
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].where().line == 6);
  CHECK(test::contains(errors[0].message(), "'thng' is not a declared resource"));
  CHECK(test::contains(errors[0].message(), "did you mean 'thing'"));
}

TEST_CASE("a field named by a parameter is checked like a declared one") {
  const auto errors = errors_of(R"(name: x
nodes:
  - {name: src, type: test_source}
  - {name: show, type: test_show, params: {field: value}}
  - {name: show2, type: test_show, params: {field: valeu}}
edges: [src -> show, src -> show2]
)");
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].where().line == 5);
  CHECK(test::contains(errors[0].message(), "reads field 'valeu'"));
}

TEST_CASE("a field read with another dtype and rank than it is written is refused at the reader's position") {
  const auto e = only_error(errors_of(R"(name: typed
nodes:
  - {name: src, type: test_tensor_source}
  - {name: reader, type: test_read_index}
edges: [src -> reader]
)"));
  CHECK(e.where().file == "p.yaml");
  CHECK(e.where().line == 4);
  CHECK(e.where().column == 5);
  CHECK(test::contains(e.message(), "node 'reader' (test_read_index) reads field 'image' on input 'in' as s32 tensor of "
                              "rank 1 on the host, but node 'src' (test_tensor_source) writes it as f32 tensor of "
                              "rank 4 on the host"));
}

TEST_CASE("typed fields: a rank mismatch and a tensor read as a number are refused; matching fields pass") {
  CHECK(test::contains(only_error(errors_of("name: t\nnodes:\n  - {name: src, type: test_tensor_source}\n"
                                      "  - {name: r, type: test_read_rank2}\nedges: [src -> r]\n"))
                     .message(),
                 "as f32 tensor of rank 2, but node 'src' (test_tensor_source) writes it as f32 tensor of rank 4"));
  CHECK(test::contains(only_error(errors_of("name: t\nnodes:\n  - {name: src, type: test_tensor_source}\n"
                                      "  - {name: r, type: test_read_number}\nedges: [src -> r]\n"))
                     .message(),
                 "reads field 'image' on input 'in' as number, but node 'src' (test_tensor_source) writes it as "
                 "f32 tensor"));
  CHECK(errors_of("name: t\nnodes:\n  - {name: src, type: test_tensor_source}\n"
                  "  - {name: r, type: test_read_image}\nedges: [src -> r]\n")
            .empty());
  // An integer may be read as a number.
  CHECK(errors_of("name: t\nnodes:\n  - {name: src, type: test_tensor_source}\n"
                  "  - {name: r, type: test_read_value_number}\nedges: [src -> r]\n")
            .empty());
}

TEST_CASE("typed fields pass through nodes that forward their input, and are checked at the far end") {
  const auto e = only_error(errors_of(R"(name: through
nodes:
  - {name: src, type: test_tensor_source}
  - {name: gate, type: limiter}
  - {name: pass, type: test_enter}
  - {name: reader, type: test_read_index}
edges: [src -> gate, gate -> pass, pass -> reader, pass -> gate.decrement]
)"));
  CHECK(test::contains(e.message(), "node 'src' (test_tensor_source) writes it as f32 tensor of rank 4"));
  CHECK(e.where().line == 6);
}

TEST_CASE("a field read on the host but written on the device is refused only when the device is not the host") {
  const std::string pipeline = "name: t\nnodes:\n  - {name: src, type: test_tensor_source}\n"
                               "  - {name: r, type: test_read_on_host}\nedges: [src -> r]\n";
  CHECK(errors_of(pipeline).empty());
  const auto e = only_error(errors_of("device: gpu\n" + pipeline));
  CHECK(test::contains(e.message(), "as f32 tensor of rank 4 on the host, but node 'src' (test_tensor_source) writes it as "
                              "f32 tensor of rank 4 on the device"));
}

TEST_CASE("a field named by a parameter is checked against what the port expects of it") {
  const auto e = only_error(errors_of(R"(name: named
nodes:
  - {name: src, type: test_tensor_source}
  - {name: show, type: test_show_image, params: {field: value}}
edges: [src -> show]
)"));
  CHECK(test::contains(e.message(), "node 'show' (test_show_image) reads field 'value' on input 'in' as f32 tensor of "
                              "rank 4, but node 'src' (test_tensor_source) writes it as integer"));
  CHECK(errors_of("name: named\nnodes:\n  - {name: src, type: test_tensor_source}\n"
                  "  - {name: show, type: test_show_image, params: {field: image}}\nedges: [src -> show]\n")
            .empty());
}
