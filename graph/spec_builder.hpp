// PipelineSpecBuilder: a PipelineSpec from C++ instead of YAML, with typed
// values; validation is the same as for a file.
//
//   SyntheticSource::Params data;                  // a node's own parameter struct
//   data.kind = SyntheticKind::digits;
//   data.batch.batch_size = 8;
//   PipelineSpec spec = PipelineSpecBuilder("demo")
//       .setting("seed", 7)
//       .resource("schedule", "noise_schedule", {{"kind", "cosine"}})
//       .node<SyntheticSource>("src", data)
//       .node("noise", "noise_source", {{"batch_size", 8}, {"shape", {1, 28, 28}}})
//       .node("noiser", "noiser", {{"schedule", "schedule"}})
//       .edge("src -> noiser")
//       .build();
//
// Values are C++ values, checked against the parameter's type: a string
// given for an integer parameter is an error, not YAML to be parsed. Errors
// name the call that caused them:
//
//   PipelineSpecBuilder.node("src", synthetic_source): parameter 'batch_size': value 0 is out of range: ...
//
// A parameter struct may be passed with the type named (`.node("src",
// "synthetic_source", params)`: the struct must be that type's) or through
// its class (`.node<SyntheticSource>("src", params)`: the type is the
// registered one whose parameters the struct declares). The builder includes
// no node header: the class is only a template argument.
#pragma once

#include "graph/param_table.hpp"
#include "graph/spec.hpp"

#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace diffuflow {

// One parameter or setting value given from C++: bool, an integer, a
// floating-point number, text (also an enum declared with DIFFUFLOW_ENUM, as
// its name), or a list of integers, numbers or texts.
class SpecValue {
 public:
  template <typename T, typename = std::enable_if_t<!std::is_same_v<std::decay_t<T>, SpecValue>>>
  SpecValue(const T& value) : value_(convert(value)) {}
  SpecValue(std::initializer_list<int> items) : value_(std::vector<int64_t>(items.begin(), items.end())) {}
  SpecValue(std::initializer_list<double> items) : value_(std::vector<double>(items)) {}
  SpecValue(std::initializer_list<const char*> items) : value_(std::vector<std::string>(items.begin(), items.end())) {}

  const ParamValue& value() const { return value_; }
  // "the integer 8", "the text \"8\"", "a list of numbers"
  std::string describe() const;

 private:
  template <typename T>
  static ParamValue convert(const T& v) {
    if constexpr (std::is_same_v<T, ParamValue>) return v;
    else if constexpr (std::is_same_v<T, bool>) return v;
    else if constexpr (std::is_enum_v<T>) return enum_name(v);
    else if constexpr (std::is_integral_v<T>) return static_cast<int64_t>(v);
    else if constexpr (std::is_floating_point_v<T>) return static_cast<double>(v);
    else if constexpr (std::is_convertible_v<T, std::string>) return std::string(v);
    else if constexpr (std::is_same_v<T, std::vector<std::string>>) return v;
    else if constexpr (std::is_same_v<T, std::vector<double>> || std::is_same_v<T, std::vector<float>>)
      return std::vector<double>(v.begin(), v.end());
    else if constexpr (std::is_same_v<T, std::vector<typename T::value_type>> &&
                       std::is_integral_v<typename T::value_type> && !std::is_same_v<typename T::value_type, bool>)
      return std::vector<int64_t>(v.begin(), v.end());
    else static_assert(sizeof(T) == 0, "a parameter value is a bool, number, string, enum or list of those");
  }

  ParamValue value_;
};

class PipelineSpecBuilder {
 public:
  using Values = std::vector<std::pair<std::string, SpecValue>>;

  explicit PipelineSpecBuilder(std::string name);

  // A pipeline setting: seed, device, threads, teams, deterministic or description.
  PipelineSpecBuilder& setting(const std::string& key, const SpecValue& value);

  PipelineSpecBuilder& resource(const std::string& name, const std::string& type, const Values& params = {});
  template <typename P, typename = std::enable_if_t<is_param_struct_v<P>>>
  PipelineSpecBuilder& resource(const std::string& name, const std::string& type, const P& params) {
    return add(resources_, name, type, struct_values(params), &param_specs<P>(), 1);
  }
  template <typename Class>
  PipelineSpecBuilder& resource(const std::string& name, const typename Class::Params& params) {
    using P = typename Class::Params;
    return add(resources_, name, "", struct_values(params), &param_specs<P>(), 1);
  }

  PipelineSpecBuilder& node(const std::string& name, const std::string& type, const Values& params = {},
                            int concurrency = 1);
  template <typename P, typename = std::enable_if_t<is_param_struct_v<P>>>
  PipelineSpecBuilder& node(const std::string& name, const std::string& type, const P& params, int concurrency = 1) {
    return add(nodes_, name, type, struct_values(params), &param_specs<P>(), concurrency);
  }
  template <typename Class>
  PipelineSpecBuilder& node(const std::string& name, const typename Class::Params& params, int concurrency = 1) {
    using P = typename Class::Params;
    return add(nodes_, name, "", struct_values(params), &param_specs<P>(), concurrency);
  }

  // "from_node.port -> to_node.port" (ports optional).
  PipelineSpecBuilder& edge(const std::string& text);

  // A `--set target.param=value` override (target "pipeline" for a setting),
  // applied by build() as `diffuflow run --set` applies it (errors name --set)
  // and written into yaml()'s parameters.
  PipelineSpecBuilder& set(const Override& override_value);

  // Resolves and validates; throws ConfigErrors listing every problem, each naming its builder call.
  PipelineSpec build() const;
  // The pipeline as YAML text, as a file would hold it (for saving or showing).
  std::string yaml() const;

 private:
  struct Item {
    std::string name;
    std::string type;  // empty: found from `rows` at build()
    Values params;
    const std::vector<ParamSpec>* rows = nullptr;  // the parameter struct's rows, when one was passed
    int concurrency = 1;
  };

  // Every row of a parameter struct, except required ones left at their default (not given).
  template <typename P>
  static Values struct_values(const P& params) {
    Values values;
    const ParamValues given = ParamTable<P>::get().values(params);
    for (const auto& spec : param_specs<P>()) {
      const ParamValue& v = given.values().at(spec.name);
      if (spec.is_required && v == spec.default_value) continue;
      values.emplace_back(spec.name, SpecValue(v));
    }
    return values;
  }

  PipelineSpecBuilder& add(std::vector<Item>& list, const std::string& name, const std::string& type, Values params,
                           const std::vector<ParamSpec>* rows, int concurrency);

  // The YAML tree of the pipeline, and what the builder itself finds wrong.
  struct Assembly;
  Assembly assemble(bool checked) const;

  std::string name_;
  Values settings_;
  std::vector<Item> resources_, nodes_;
  std::vector<std::string> edges_;
  std::vector<Override> overrides_;
};

}  // namespace diffuflow
