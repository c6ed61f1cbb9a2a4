#include "graph/limiter.hpp"

#include "graph/registry.hpp"

namespace diffuflow {

NodeContract Limiter::contract() {
  NodeContract c;
  c.doc = "Lets at most max_in_flight packets past until packets arrive on 'decrement' (built into the builder).";
  c.example = "{name: gate, type: limiter, params: {max_in_flight: 1}}";
  c.inputs = {{"in", {}, "any packet"}, {"decrement", {}, "any packet: frees one slot"}};
  c.outputs = {{"out", {}, "the packets of 'in', unchanged"}};
  c.input_policy = InputPolicy::any;
  c.max_concurrency = 1;
  return c;
}

}  // namespace diffuflow
