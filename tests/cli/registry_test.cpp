#include "graph/registry.hpp"

#include <doctest/doctest.h>

#include <algorithm>

using namespace diffuflow;

TEST_CASE("built-in node types are registered even though nodes/ is linked statically") {
  const auto types = Registry::instance().node_types();
  CHECK(std::find(types.begin(), types.end(), "timestep_sampler") != types.end());
  const NodeContract* contract = Registry::instance().node_contract("timestep_sampler");
  REQUIRE(contract != nullptr);
  CHECK(contract->type == "timestep_sampler");
  CHECK(contract->inputs.size() == 1);
}
