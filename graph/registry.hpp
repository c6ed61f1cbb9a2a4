// Registry of node and resource types. Built-in types live in an OBJECT
// library so their registration lines are always linked in; user types
// register the same way from their own files.
#pragma once

#include "graph/node.hpp"
#include "graph/resource.hpp"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

using NodeFactory = std::function<std::unique_ptr<Node>(const NodeConfig&, RunContext&)>;
using ResourceFactory = std::function<std::shared_ptr<Resource>(const ResourceConfig&, RunContext&)>;

class Registry {
 public:
  static Registry& instance();

  bool add_node(const std::string& type, NodeContract contract, NodeFactory factory);
  bool add_resource(const std::string& type, ResourceContract contract, ResourceFactory factory);

  const NodeContract* node_contract(const std::string& type) const;
  const ResourceContract* resource_contract(const std::string& type) const;
  std::vector<std::string> node_types() const;  // sorted
  std::vector<std::string> resource_types() const;

  std::unique_ptr<Node> create_node(const NodeConfig& config, RunContext& ctx) const;
  std::shared_ptr<Resource> create_resource(const ResourceConfig& config, RunContext& ctx) const;

 private:
  struct NodeEntry {
    NodeContract contract;
    NodeFactory factory;
  };
  struct ResourceEntry {
    ResourceContract contract;
    ResourceFactory factory;
  };
  std::map<std::string, NodeEntry> nodes_;
  std::map<std::string, ResourceEntry> resources_;
};

}  // namespace diffuflow

#define DIFFUFLOW_CONCAT_INNER(a, b) a##b
#define DIFFUFLOW_CONCAT(a, b) DIFFUFLOW_CONCAT_INNER(a, b)

#define DIFFUFLOW_REGISTER_NODE(type_name, Class)                                                 \
  static const bool DIFFUFLOW_CONCAT(diffuflow_node_registered_, type_name) =                     \
      ::diffuflow::Registry::instance().add_node(                                                 \
          #type_name, Class::contract(),                                                          \
          [](const ::diffuflow::NodeConfig& config, ::diffuflow::RunContext& ctx) {               \
            return std::unique_ptr<::diffuflow::Node>(std::make_unique<Class>(config, ctx));      \
          })

#define DIFFUFLOW_REGISTER_RESOURCE(type_name, Class)                                             \
  static const bool DIFFUFLOW_CONCAT(diffuflow_resource_registered_, type_name) =                 \
      ::diffuflow::Registry::instance().add_resource(                                             \
          #type_name, Class::contract(),                                                          \
          [](const ::diffuflow::ResourceConfig& config, ::diffuflow::RunContext& ctx) {           \
            return std::shared_ptr<::diffuflow::Resource>(std::make_shared<Class>(config, ctx));  \
          })
