// Helpers for testing one node or resource without building a graph.
//
//   RunContext ctx;
//   auto schedule = make_resource("noise_schedule", "schedule", "{kind: linear}", ctx);  // also added to ctx
//   auto node = make_node("noiser", "{schedule: schedule}", ctx);
//   CollectingEmitter out;
//   node->process(single_input(Packet(0).with("x0", x0).with("t", t).share()), out);
//   const Packet& result = out.packet(0);
//
// Parameters are resolved against the type's table, so defaults apply and a bad
// value throws ConfigErrors exactly as it would in a pipeline.
#pragma once

#include "graph/errors.hpp"
#include "graph/node.hpp"
#include "graph/params.hpp"
#include "graph/registry.hpp"
#include "graph/resource.hpp"
#include "graph/run_context.hpp"

#include <yaml-cpp/yaml.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace diffuflow::test {

// Stores every (port, packet) a node emits, in order.
class CollectingEmitter : public Emitter {
 public:
  using Emitter::emit;
  void emit(int port, PacketPtr packet) override { emitted.emplace_back(port, std::move(packet)); }

  size_t size() const { return emitted.size(); }
  const Packet& packet(size_t i) const { return *emitted.at(i).second; }
  int port(size_t i) const { return emitted.at(i).first; }
  void clear() { emitted.clear(); }

  std::vector<std::pair<int, PacketPtr>> emitted;
};

// Resolves `yaml_params` (a YAML mapping, e.g. "{kind: cosine}") against a
// parameter table; throws ConfigErrors listing every problem.
inline ParamValues resolve_test_params(const std::vector<ParamSpec>& table, const std::string& yaml_params) {
  std::vector<ConfigError> errors;
  SourceLocation where;
  where.file = "<test>";
  ParamValues params = resolve_params(table, YAML::Load(yaml_params.empty() ? "{}" : yaml_params), where, errors);
  if (!errors.empty()) throw ConfigErrors(std::move(errors));
  return params;
}

// Creates a registered node type with resolved params. The node's name defaults to its type.
inline std::unique_ptr<Node> make_node(const std::string& type, const std::string& yaml_params, RunContext& ctx,
                                       const std::string& name = "") {
  const NodeContract* contract = Registry::instance().node_contract(type);
  if (!contract) throw std::runtime_error("make_node: unknown node type '" + type + "'");
  NodeConfig config;
  config.name = name.empty() ? type : name;
  config.type = type;
  config.params = resolve_test_params(contract->params, yaml_params);
  return Registry::instance().create_node(config, ctx);
}

// Creates a registered resource type with resolved params and adds it to ctx under `name`.
inline std::shared_ptr<Resource> make_resource(const std::string& type, const std::string& name,
                                               const std::string& yaml_params, RunContext& ctx) {
  const ResourceContract* contract = Registry::instance().resource_contract(type);
  if (!contract) throw std::runtime_error("make_resource: unknown resource type '" + type + "'");
  ResourceConfig config;
  config.name = name;
  config.type = type;
  config.params = resolve_test_params(contract->params, yaml_params);
  if (contract->check) contract->check(config.params, PipelineFacts{ctx.deterministic});
  auto resource = Registry::instance().create_resource(config, ctx);
  ctx.add_resource(name, resource);
  return resource;
}

// The names of the fields a port reads or writes, in contract order.
inline std::vector<std::string> field_names(const PortSpec& port) {
  std::vector<std::string> names;
  for (const auto& f : port.fields) names.push_back(f.name);
  return names;
}

// A NodeInput holding the given packets (one per input port, for join nodes).
inline NodeInput single_input(PacketPtr packet, int port = 0) {
  NodeInput in;
  in.port = port;
  in.packets.push_back(std::move(packet));
  return in;
}

inline NodeInput joined_input(std::vector<PacketPtr> packets) {
  NodeInput in;
  in.packets = std::move(packets);
  return in;
}

}  // namespace diffuflow::test
