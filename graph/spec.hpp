// PipelineSpec: a YAML pipeline file, parsed and validated before anything runs.
//
//   name: noising_chain
//   device: cpu            # cpu | gpu | gpu:N
//   seed: 0
//   threads: 0             # 0: every CPU the process may use
//   teams: 1               # the U-Net's batch split among this many OpenMP teams
//   deterministic: false
//   resources:
//     - {name: schedule, type: noise_schedule, params: {kind: linear}}
//   nodes:
//     - {name: loader, type: mnist_loader, params: {path: data/mnist, batch_size: 8}}
//     - {name: noiser, type: noiser, params: {schedule: schedule}, concurrency: 2}
//   edges:
//     - loader -> noiser              # first output port to first input port
//     - noiser.out -> writer.in       # ports named explicitly
//
// Validation collects every problem it can find (YAML syntax stops it early),
// each with file:line:column and the key path.
#pragma once

#include "graph/errors.hpp"
#include "graph/params.hpp"

#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

namespace diffuflow {

struct NodeSpec {
  std::string name;
  std::string type;
  ParamValues params;
  int concurrency = 1;
  YAML::Node raw_params;
  SourceLocation where;
};

struct ResourceSpec {
  std::string name;
  std::string type;
  ParamValues params;
  YAML::Node raw_params;
  SourceLocation where;
};

struct EdgeSpec {
  std::string from_node, from_port;  // port may be empty in the file: the first port is meant
  std::string to_node, to_port;
  int from_index = 0;  // resolved port indices
  int to_index = 0;
  SourceLocation where;
  std::string str() const { return from_node + "." + from_port + " -> " + to_node + "." + to_port; }
};

struct PipelineSpec {
  std::string file;
  std::string name;
  std::string device = "cpu";
  uint64_t seed = 0;
  int threads = 0;
  // Each U-Net pass's batch split into `teams` parts computed at once, each
  // by a team of threads / teams OpenMP threads (UNetModel::set_teams); the
  // other device work runs on one such team.
  int teams = 1;
  bool deterministic = false;
  std::vector<ResourceSpec> resources;
  std::vector<NodeSpec> nodes;
  std::vector<EdgeSpec> edges;

  int node_index(const std::string& name) const;
  const ResourceSpec* resource(const std::string& name) const;

  // The pipeline as resolved (defaults filled in, overrides applied), as YAML text.
  std::string resolved_yaml() const;
};

// One `--set target.param=value` override, checked like the YAML it replaces.
struct Override {
  std::string target;  // node or resource name; or "pipeline" for top-level keys (seed, device, threads, teams)
  std::string param;
  std::string value;   // YAML scalar or flow sequence text, e.g. "3", "1e-4", "[0, 10, 999]"
};
Override parse_override(const std::string& text);  // ConfigError on a malformed "a.b=c"

// Loads, resolves and validates a pipeline file. Throws ConfigErrors listing
// every problem found. `overrides` are applied before validation.
PipelineSpec load_pipeline(const std::string& path, const std::vector<Override>& overrides = {});
// The same from YAML text (for tests and C++-built pipelines); `file` names it in messages.
PipelineSpec parse_pipeline(const std::string& yaml_text, const std::string& file,
                            const std::vector<Override>& overrides = {});
// The same from a YAML tree built in memory (graph/spec_builder.hpp); its nodes
// carry no positions, so errors name `file` and the key path only.
PipelineSpec parse_pipeline_tree(const YAML::Node& root, const std::string& file,
                                 const std::vector<Override>& overrides = {});

// Graph-level checks on an already parsed spec (also run by parse_pipeline):
// edges to missing nodes or ports, unconnected inputs, fields read that no
// upstream node writes, cycles that no limiter bounds. Appends to `errors`.
void validate_graph(const PipelineSpec& spec, std::vector<ConfigError>& errors);

}  // namespace diffuflow
