// Small node types used only by the graph tests: a counting source, an adder,
// a two-input join, a loop body, a sink that records what it saw, a node whose
// packets take uneven time, and a node that fails on a chosen step.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
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

// The threads a test_thread_probe resource and test_device_probe nodes were
// made on, and those the nodes processed packets on (cleared by
// reset_thread_probes()).
struct ThreadProbes {
  std::vector<std::thread::id> resource_made, node_made, node_ran;
};
ThreadProbes thread_probes();
void reset_thread_probes();

}  // namespace diffuflow::test
