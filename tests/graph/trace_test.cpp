#include "graph/pipeline.hpp"
#include "test_nodes.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <vector>

using namespace diffuflow;
namespace fs = std::filesystem;

namespace {

struct Slice {
  double start_us;
  double end_us;
};

}  // namespace

TEST_CASE("the trace puts overlapping invocations of a concurrent node on separate tracks") {
  test::reset_sinks();
  const test::TempDir dir("diffuflow-trace");
  const fs::path file = dir / "trace.json";
  PipelineSpec spec = parse_pipeline(R"(
name: trace
nodes:
  - {name: src, type: test_source, params: {count: 24}}
  - {name: slow, type: test_add, params: {sleep_us: 3000}, concurrency: 4}
  - {name: sink, type: test_sink}
edges: [src -> slow, slow -> sink]
)",
                                     "test.yaml");
  // Four threads whatever the machine, so that invocations of `slow` overlap.
  oneapi::tbb::global_control parallelism(oneapi::tbb::global_control::max_allowed_parallelism, 4);
  oneapi::tbb::task_arena arena(4);
  arena.execute([&] {
    RunContext ctx(Device::host(), spec.seed);
    RunOptions options;
    options.trace_file = file.string();
    Pipeline pipeline(spec, ctx, options);
    pipeline.run();
  });

  std::ifstream in(file);
  const nlohmann::json events = nlohmann::json::parse(in).at("traceEvents");
  std::map<int64_t, std::string> track_names;
  std::map<int64_t, std::vector<Slice>> slices;  // by track
  std::map<std::string, std::set<int64_t>> tracks_of;
  int64_t slow_slices = 0;
  for (const auto& e : events) {
    const int64_t tid = e.at("tid").get<int64_t>();
    if (e.at("ph") == "M" && e.at("name") == "thread_name") {
      CHECK(track_names.count(tid) == 0);
      track_names[tid] = e.at("args").at("name").get<std::string>();
    }
    if (e.at("ph") != "X") continue;
    const double ts = e.at("ts").get<double>();
    slices[tid].push_back({ts, ts + e.at("dur").get<double>()});
    const std::string node = e.at("name").get<std::string>();
    tracks_of[node].insert(tid);
    if (node == "slow") ++slow_slices;
  }
  CHECK(slow_slices == 24);
  REQUIRE(tracks_of["slow"].size() > 1);
  CHECK(tracks_of["src"].size() == 1);
  CHECK(tracks_of["sink"].size() == 1);
  for (const int64_t tid : tracks_of["slow"]) {
    REQUIRE(track_names.count(tid) == 1);
    CHECK(track_names[tid].rfind("slow #", 0) == 0);
  }
  // No two slices on one track overlap (1 ns of slack for the microsecond floats).
  for (auto& [tid, list] : slices) {
    CAPTURE(track_names[tid]);
    REQUIRE(track_names.count(tid) == 1);
    std::sort(list.begin(), list.end(), [](const Slice& a, const Slice& b) { return a.start_us < b.start_us; });
    for (size_t i = 1; i < list.size(); ++i) CHECK(list[i - 1].end_us <= list[i].start_us + 1e-3);
  }
  // Tracks of different nodes never share a tid.
  std::set<int64_t> seen;
  for (const auto& [node, tids] : tracks_of)
    for (const int64_t tid : tids) CHECK(seen.insert(tid).second);
}
