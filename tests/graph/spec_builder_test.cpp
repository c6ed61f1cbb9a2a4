// PipelineSpecBuilder: typed values, parameter structs, and errors that name
// the C++ call they come from (never a line of YAML the caller did not write).
#include "graph/errors.hpp"
#include "graph/pipeline.hpp"
#include "test_nodes.hpp"

#include "test_util.hpp"
#include <doctest/doctest.h>

#include <algorithm>

using namespace diffuflow;
using diffuflow::test::reset_sinks;
using diffuflow::test::sink_records;

namespace {

// What build() throws, as text ("" when it builds).
std::string build_error(const PipelineSpecBuilder& builder) {
  try {
    builder.build();
  } catch (const ConfigErrors& e) {
    return e.what();
  }
  return "";
}


std::vector<int64_t> sorted_values(const std::string& sink) {
  std::vector<int64_t> values;
  for (const auto& r : sink_records(sink)) values.push_back(r.value);
  std::sort(values.begin(), values.end());
  return values;
}

DIFFUFLOW_ENUM(Colour, red, green);

// Parameter structs declaring the same rows as test nodes' (tests/graph/test_nodes.cpp):
// test_source's, and the one test_add and test_device_add share.
struct Counting {
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, count, 10, "packets to emit", .at_least(0));
  };
};
struct Adding {
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, amount, 1, "added");
    DIFFUFLOW_PARAM(int64_t, sleep_us, 0, "work time");
  };
};
struct UsingResource {
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, res, "", "the resource", .resource("test_resource"));
  };
};
struct Unregistered {
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, nothing_takes_this, 0, "no node declares this row");
  };
};

}  // namespace

TEST_CASE("builder values are C++ values of the parameter's type") {
  CHECK(SpecValue(8).describe() == "the integer 8");
  CHECK(SpecValue(int64_t{1} << 40).describe() == "the integer 1099511627776");
  CHECK(SpecValue(0.5).describe() == "the number 0.5");
  CHECK(SpecValue(true).describe() == "the boolean true");
  CHECK(SpecValue("digits").describe() == "the text \"digits\"");
  CHECK(SpecValue(std::string("8")).describe() == "the text \"8\"");
  CHECK(SpecValue(Colour::green).describe() == "the text \"green\"");
  CHECK(SpecValue({1, 28, 28}).describe() == "the integer list [1, 28, 28]");
  CHECK(SpecValue(std::vector<int>{1, 2}).describe() == "the integer list [1, 2]");
  CHECK(SpecValue(std::vector<int64_t>{1, 28, 28}).describe() == "the integer list [1, 28, 28]");
  CHECK(SpecValue({0.5, 1.5}).describe() == "the number list [0.5, 1.5]");
  CHECK(SpecValue({"a", "b"}).describe() == "the text list [\"a\", \"b\"]");
}

TEST_CASE("a value out of range names the builder call and the parameter") {
  const std::string error = build_error(PipelineSpecBuilder("ranges")
                                            .node("src", "test_source", {{"count", -1}})
                                            .node("add", "test_add", {{"amount", "1"}})
                                            .node("sink", "test_sink")
                                            .edge("src -> add")
                                            .edge("add -> sink"));
  CAPTURE(error);
  // Reported in the order of the calls, though the builder finds the second and validation the first.
  CHECK(error.find("node(\"src\"") < error.find("node(\"add\""));
  CHECK(test::contains(error, "PipelineSpecBuilder.node(\"src\", test_source): parameter 'count': value -1 is out of range"));
  CHECK(!test::contains(error, ":1:"));  // no position in YAML the caller never wrote
  CHECK(!test::contains(error, "nodes[0]"));
}

TEST_CASE("a value of another C++ type is refused, not parsed as YAML") {
  const std::string error = build_error(PipelineSpecBuilder("types")
                                            .node("src", "test_source", {{"count", "5"}})
                                            .node("add", "test_add", {{"amount", 2.5}})
                                            .node("sink", "test_sink")
                                            .edge("src -> add")
                                            .edge("add -> sink"));
  CAPTURE(error);
  CHECK(test::contains(error, "PipelineSpecBuilder.node(\"src\", test_source): parameter 'count': expected int >= 0, got the "
                        "text \"5\""));
  CHECK(test::contains(error, "PipelineSpecBuilder.node(\"add\", test_add): parameter 'amount': expected int, got the number "
                        "2.5"));
  // An integer is a valid number: only these two problems are reported.
  CHECK(std::count(error.begin(), error.end(), '\n') == 1);
}

TEST_CASE("unknown types, parameters, settings and edge ends name their call") {
  const std::string error = build_error(PipelineSpecBuilder("names")
                                            .setting("sed", 3)
                                            .setting("threads", "2")
                                            .node("src", "test_sourse")
                                            .node("add", "test_add", {{"amuont", 2}})
                                            .node("sink", "test_sink")
                                            .edge("add -> sink"));
  CAPTURE(error);
  CHECK(test::contains(error, "PipelineSpecBuilder.setting(\"sed\"): unknown pipeline setting 'sed' (did you mean 'seed'?)"));
  CHECK(test::contains(error, "PipelineSpecBuilder.setting(\"threads\"): expected an integer, got the text \"2\""));
  CHECK(test::contains(error, "PipelineSpecBuilder.node(\"src\", test_sourse): type: unknown node type 'test_sourse' (did "
                        "you mean 'test_source'?)"));
  CHECK(test::contains(error, "PipelineSpecBuilder.node(\"add\", test_add): parameter 'amuont': unknown parameter 'amuont' "
                        "(did you mean 'amount'?)"));

  const std::string edge = build_error(PipelineSpecBuilder("edges")
                                           .node("src", "test_source")
                                           .node("sink", "test_sink")
                                           .edge("src -> sink")
                                           .edge("src -> nowhere"));
  CAPTURE(edge);
  CHECK(test::contains(edge, "PipelineSpecBuilder.edge(\"src -> nowhere\"): "));
  CHECK(test::contains(edge, "nowhere"));
}

TEST_CASE("a node's parameter struct finds its registered type and runs") {
  reset_sinks();
  Counting::Params counting;
  counting.count = 4;
  Adding::Params adding;
  adding.amount = 100;
  // test_add and test_device_add take the same struct: the type is named.
  PipelineSpec spec = PipelineSpecBuilder("structs")
                          .node<Counting>("src", counting)
                          .node("add", "test_device_add", adding)
                          .node("sink", "test_sink")
                          .edge("src -> add")
                          .edge("add -> sink")
                          .build();
  CHECK(spec.nodes[0].type == "test_source");
  RunContext ctx;
  Pipeline(spec, ctx).run();
  CHECK(sorted_values("sink") == std::vector<int64_t>{100, 101, 102, 103});
}

TEST_CASE("a parameter struct that fits no type, several types or another type is an error naming the call") {
  const std::string none = build_error(PipelineSpecBuilder("none").node<Unregistered>("x", Unregistered::Params{}));
  CAPTURE(none);
  CHECK(test::contains(none, "PipelineSpecBuilder.node<...>(\"x\"): no registered node type takes this parameter struct "
                       "(nothing_takes_this)"));
  CHECK(std::count(none.begin(), none.end(), '\n') == 0);  // nothing else about the unknown node

  const std::string several = build_error(PipelineSpecBuilder("several").node<Adding>("add", Adding::Params{}));
  CAPTURE(several);
  CHECK(test::contains(several, "several types take this parameter struct (test_add, test_device_add)"));

  const std::string other = build_error(PipelineSpecBuilder("other").node("sink", "test_sink", Adding::Params{}));
  CAPTURE(other);
  CHECK(test::contains(other, "PipelineSpecBuilder.node(\"sink\", test_sink): the parameter struct given is not "
                        "test_sink's"));
}

TEST_CASE("a required parameter left at its struct default is reported missing at the call") {
  const std::string error =
      build_error(PipelineSpecBuilder("required").node<UsingResource>("user", UsingResource::Params{}));
  CAPTURE(error);
  CHECK(test::contains(error, "PipelineSpecBuilder.node(\"user\", test_uses_resource): parameter 'res': missing required "
                        "parameter 'res'"));
}

TEST_CASE("the builder's YAML is a pipeline file that resolves to the same spec") {
  PipelineSpecBuilder builder("twin");
  builder.setting("seed", 3)
      .node("src", "test_source", {{"count", 5}})
      .node("add", "test_add", {{"amount", 2}}, 2)
      .node("sink", "test_sink")
      .edge("src -> add")
      .edge("add -> sink");
  const PipelineSpec built = builder.build();
  const PipelineSpec parsed = parse_pipeline(builder.yaml(), "twin.yaml");
  CHECK(built.resolved_yaml() == parsed.resolved_yaml());
  CHECK(parsed.seed == 3);
  CHECK(parsed.nodes[1].concurrency == 2);
}
