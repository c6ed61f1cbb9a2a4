#include "graph/registry.hpp"

#include "graph/limiter.hpp"

#include <stdexcept>

namespace diffuflow {

Registry& Registry::instance() {
  // Built-in graph types are added here, not by static registration lines:
  // graph/ is a static library and the linker would drop an unreferenced one.
  static Registry registry = [] {
    Registry r;
    r.add_node(kLimiterType, node_contract_of<Limiter>("Limiter"), [](const NodeConfig& config, RunContext& ctx) {
      return std::unique_ptr<Node>(std::make_unique<Limiter>(config, ctx));
    });
    return r;
  }();
  return registry;
}

int NodeContract::input_index(const std::string& port) const {
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].name == port) return static_cast<int>(i);
  return -1;
}

int NodeContract::output_index(const std::string& port) const {
  for (size_t i = 0; i < outputs.size(); ++i)
    if (outputs[i].name == port) return static_cast<int>(i);
  return -1;
}

bool Registry::add_node(const std::string& type, NodeContract contract, NodeFactory factory) {
  if (nodes_.count(type) || resources_.count(type)) {
    throw std::logic_error("node type '" + type + "' is registered twice");
  }
  contract.type = type;
  nodes_.emplace(type, NodeEntry{std::move(contract), std::move(factory)});
  return true;
}

bool Registry::add_resource(const std::string& type, ResourceContract contract, ResourceFactory factory) {
  if (resources_.count(type) || nodes_.count(type)) {
    throw std::logic_error("resource type '" + type + "' is registered twice");
  }
  contract.type = type;
  resources_.emplace(type, ResourceEntry{std::move(contract), std::move(factory)});
  return true;
}

const NodeContract* Registry::node_contract(const std::string& type) const {
  auto it = nodes_.find(type);
  return it == nodes_.end() ? nullptr : &it->second.contract;
}

const ResourceContract* Registry::resource_contract(const std::string& type) const {
  auto it = resources_.find(type);
  return it == resources_.end() ? nullptr : &it->second.contract;
}

std::vector<std::string> Registry::node_types() const {
  std::vector<std::string> names;
  for (const auto& [name, entry] : nodes_) names.push_back(name);
  return names;
}

std::vector<std::string> Registry::resource_types() const {
  std::vector<std::string> names;
  for (const auto& [name, entry] : resources_) names.push_back(name);
  return names;
}

std::unique_ptr<Node> Registry::create_node(const NodeConfig& config, RunContext& ctx) const {
  auto it = nodes_.find(config.type);
  if (it == nodes_.end()) throw std::runtime_error("unknown node type '" + config.type + "'");
  return it->second.factory(config, ctx);
}

std::shared_ptr<Resource> Registry::create_resource(const ResourceConfig& config, RunContext& ctx) const {
  auto it = resources_.find(config.type);
  if (it == resources_.end()) throw std::runtime_error("unknown resource type '" + config.type + "'");
  return it->second.factory(config, ctx);
}

}  // namespace diffuflow
