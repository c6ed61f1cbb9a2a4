// limiter: bounds how many packets are in flight between it and the node that
// feeds its `decrement` port. Built into the graph builder (a
// tbb::flow::limiter_node with a queue in front so nothing is dropped).
//
//   - {name: gate, type: limiter, params: {max_in_flight: 1}}
//   edges:
//     - loader -> gate.in
//     - gate.out -> model
//     - optimiser.out -> gate.decrement      # one packet back = one slot free
//
// A cycle in the graph must be bounded by a limiter: either the limiter is on
// the cycle or the cycle is only entered downstream of one.
#pragma once

#include "graph/node.hpp"

namespace diffuflow {

constexpr const char* kLimiterType = "limiter";

class Limiter : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, max_in_flight, 1, "packets allowed past before a decrement", .range(1, 1 << 20));
  };

  static NodeContract contract();
  Limiter(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
};

}  // namespace diffuflow
