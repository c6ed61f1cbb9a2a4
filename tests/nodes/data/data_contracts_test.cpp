#include "graph/registry.hpp"
#include "node_test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>

using namespace diffuflow;
using diffuflow::test::field_names;

TEST_CASE("data and output nodes are registered with host-only contracts of the expected shape") {
  const auto& registry = Registry::instance();
  for (const char* source : {"mnist_loader", "image_folder_loader", "synthetic_source", "toy2d_source"}) {
    CAPTURE(source);
    const NodeContract* contract = registry.node_contract(source);
    REQUIRE(contract != nullptr);
    CHECK(contract->is_source());
    CHECK(contract->host_only);
    REQUIRE(contract->outputs.size() == 1);
    CHECK(field_names(contract->outputs[0]) == std::vector<std::string>{"x0", "labels"});
    for (const char* param : {"batch_size", "shuffle", "epochs", "drop_last"}) {
      CAPTURE(param);
      CHECK(std::any_of(contract->params.begin(), contract->params.end(),
                        [&](const ParamSpec& spec) { return spec.name == param; }));
    }
  }
  const NodeContract* augment = registry.node_contract("augment");
  REQUIRE(augment != nullptr);
  CHECK(field_names(augment->inputs.at(0)) == std::vector<std::string>{"x0"});
  CHECK(field_names(augment->outputs.at(0)) == std::vector<std::string>{"x0"});
  const NodeContract* writer = registry.node_contract("image_writer");
  REQUIRE(writer != nullptr);
  CHECK(writer->inputs.size() == 1);
  CHECK(writer->outputs.empty());
}
