// Registry of node and resource types. Built-in types live in OBJECT
// libraries so their registration lines are always linked in; user types
// register the same way from their own files. Registration completes a
// type's contract: its name, and the parameter rows of its `Params` struct.
#pragma once

#include "graph/node.hpp"
#include "graph/resource.hpp"

#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
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

namespace detail {

template <typename Class, typename = void>
struct declares_params : std::false_type {};
template <typename Class>
struct declares_params<Class, std::void_t<typename Class::Params>> : is_param_struct<typename Class::Params> {};

template <typename Class, typename P, typename = void>
struct has_check : std::false_type {};
template <typename Class, typename P>
struct has_check<Class, P, std::void_t<decltype(Class::check(std::declval<const P&>()))>> : std::true_type {};
template <typename Class, typename P, typename = void>
struct has_pipeline_check : std::false_type {};
template <typename Class, typename P>
struct has_pipeline_check<
    Class, P, std::void_t<decltype(Class::check(std::declval<const P&>(), std::declval<const PipelineFacts&>()))>>
    : std::true_type {};

template <typename Contract>
void add_param_rows(Contract& contract, const std::vector<ParamSpec>& rows, const char* class_name) {
  if (!contract.params.empty()) {
    throw std::logic_error(std::string(class_name) +
                           ": parameters are declared in its Params struct; contract() must not list them too");
  }
  contract.params = rows;
}

}  // namespace detail

// Class::contract() with the rows of Class::Params (when it declares one).
template <typename Class>
NodeContract node_contract_of(const char* class_name) {
  NodeContract contract = Class::contract();
  if constexpr (detail::declares_params<Class>::value)
    detail::add_param_rows(contract, param_specs<typename Class::Params>(), class_name);
  return contract;
}

// Class::contract() with the rows of Class::Params and its static check().
template <typename Class>
ResourceContract resource_contract_of(const char* class_name) {
  ResourceContract contract = Class::contract();
  if constexpr (detail::declares_params<Class>::value) {
    using P = typename Class::Params;
    detail::add_param_rows(contract, param_specs<P>(), class_name);
    if constexpr (detail::has_pipeline_check<Class, P>::value) {
      contract.check = [](const ParamValues& values, const PipelineFacts& pipeline) {
        Class::check(params_from<P>(values), pipeline);
      };
    } else if constexpr (detail::has_check<Class, P>::value) {
      contract.check = [](const ParamValues& values, const PipelineFacts&) { Class::check(params_from<P>(values)); };
    }
  }
  return contract;
}

}  // namespace diffuflow

#define DIFFUFLOW_CONCAT_INNER(a, b) a##b
#define DIFFUFLOW_CONCAT(a, b) DIFFUFLOW_CONCAT_INNER(a, b)

#define DIFFUFLOW_REGISTER_NODE(type_name, Class)                                                 \
  static const bool DIFFUFLOW_CONCAT(diffuflow_node_registered_, type_name) =                     \
      ::diffuflow::Registry::instance().add_node(                                                 \
          #type_name, ::diffuflow::node_contract_of<Class>(#Class),                               \
          [](const ::diffuflow::NodeConfig& config, ::diffuflow::RunContext& ctx) {               \
            return std::unique_ptr<::diffuflow::Node>(std::make_unique<Class>(config, ctx));      \
          })

#define DIFFUFLOW_REGISTER_RESOURCE(type_name, Class)                                             \
  static const bool DIFFUFLOW_CONCAT(diffuflow_resource_registered_, type_name) =                 \
      ::diffuflow::Registry::instance().add_resource(                                             \
          #type_name, ::diffuflow::resource_contract_of<Class>(#Class),                           \
          [](const ::diffuflow::ResourceConfig& config, ::diffuflow::RunContext& ctx) {           \
            return std::shared_ptr<::diffuflow::Resource>(std::make_shared<Class>(config, ctx));  \
          })
