// Small node types used only by the graph tests: a counting source, an adder,
// a two-input join, a loop body, a sink that records what it saw, and a node
// that fails on a chosen step.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace diffuflow::test {

struct SinkRecord {
  int64_t seq;
  int64_t value;
};

// What every test_sink node saw, by node name (cleared by reset_sinks()).
std::vector<SinkRecord> sink_records(const std::string& name);
void reset_sinks();

// Highest number of packets seen between test_enter and test_leave at once.
int64_t max_in_flight_seen();

}  // namespace diffuflow::test
