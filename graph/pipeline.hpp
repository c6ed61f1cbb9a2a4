// Pipeline: a validated PipelineSpec built onto a tbb::flow::graph and run.
//
//   PipelineSpec spec = load_pipeline("pipelines/noising_chain.yaml");
//   RunContext ctx(std::make_shared<Device>(DeviceSpec::parse(spec.device)), spec.seed);
//   Pipeline pipeline(spec, ctx);        // creates resources and nodes
//   RunReport report = pipeline.run();   // blocks until drained, stopped or failed
//
// Mapping: a source becomes an input_node; a node with several `join` inputs
// gets a tag-matching join_node on the packet seq; `limiter` becomes a
// limiter_node with a queue in front; device nodes (contract.host_only ==
// false) run on one compute thread that owns the oneDNN/OpenMP cores, through
// an async_node, so TBB workers keep the data path moving. Every packet a
// source emits carries a ticket; at most `prefetch` tickets per source are
// alive at once, which bounds how far the data path runs ahead.
//
// An exception in a node cancels the graph; run() then throws a NodeError
// naming the node, the step and the cause (a DataError stays a DataError).
#pragma once

#include "graph/run_context.hpp"
#include "graph/spec.hpp"
#include "graph/spec_builder.hpp"  // PipelineSpecBuilder: a PipelineSpec from C++

#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

class Node;

struct NodeProfile {
  std::string name;
  std::string type;
  int64_t count = 0;      // invocations
  double busy_s = 0;      // sum of invocation durations
  double active_s = 0;    // union of invocation intervals (<= wall time)
  double mean_ms = 0;
  double p95_ms = 0;
  double wait_s = 0;      // wall time minus active time: waiting for input (or blocked downstream)
  double busy_fraction = 0;  // active_s / wall
};

struct RunReport {
  double wall_s = 0;
  bool stopped_early = false;
  std::vector<NodeProfile> nodes;

  std::string table() const;         // a printable profile table
  std::string json() const;          // the same as JSON
};

struct RunOptions {
  int prefetch = 4;          // packets each source may have alive at once
  int compute_threads = 0;   // OpenMP threads of the compute thread; 0: every usable CPU
  double max_time_s = 0;     // 0: no limit
  std::string trace_file;    // Chrome trace JSON; empty: none
};

class Pipeline {
 public:
  Pipeline(const PipelineSpec& spec, RunContext& ctx, RunOptions options = {});
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  RunReport run();
  Node& node(const std::string& name);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffuflow
