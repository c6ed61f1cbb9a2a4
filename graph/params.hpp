// Parameters: one table per node (or resource) type declares every parameter
// with its type, default, documentation and allowed range. The same table
// feeds YAML parsing, `--set` overrides, `diffuflow nodes` and the node
// catalogue. Node and resource types declare it as a parameter struct
// (graph/param_table.hpp), which produces these rows; ParamSpec is the
// type-erased row, and ParamValues the resolved values of one node.
#pragma once

#include "graph/errors.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace YAML {
class Node;
}

namespace diffuflow {

enum class ParamType { boolean, integer, number, text, path, choice, int_list, number_list, text_list, resource };
std::string param_type_name(ParamType type);

using ParamValue =
    std::variant<bool, int64_t, double, std::string, std::vector<int64_t>, std::vector<double>, std::vector<std::string>>;
std::string param_value_str(const ParamValue& value);

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::text;
  ParamValue default_value;
  std::string doc;
  bool is_required = false;
  std::optional<double> min;  // inclusive bounds, for numbers, integers and list elements
  std::optional<double> max;
  std::vector<std::string> choices;  // for choice
  std::string resource_type;         // for resource: the resource type it must name

  static ParamSpec boolean(std::string name, bool fallback, std::string doc);
  static ParamSpec integer(std::string name, int64_t fallback, std::string doc);
  static ParamSpec number(std::string name, double fallback, std::string doc);
  static ParamSpec text(std::string name, std::string fallback, std::string doc);
  static ParamSpec path(std::string name, std::string fallback, std::string doc);
  static ParamSpec choice(std::string name, std::string fallback, std::vector<std::string> choices, std::string doc);
  static ParamSpec int_list(std::string name, std::vector<int64_t> fallback, std::string doc);
  static ParamSpec number_list(std::string name, std::vector<double> fallback, std::string doc);
  static ParamSpec text_list(std::string name, std::vector<std::string> fallback, std::string doc);
  static ParamSpec resource(std::string name, std::string resource_type, std::string doc);

  ParamSpec& required() {
    is_required = true;
    return *this;
  }
  ParamSpec& range(double lo, double hi) {
    min = lo;
    max = hi;
    return *this;
  }
  ParamSpec& at_least(double lo) {
    min = lo;
    return *this;
  }

  // "integer in [1, 65536]", "one of linear|cosine", ...
  std::string type_description() const;
};

// Resolved parameter values of one node or resource: every declared parameter
// has a value (given or default) once validation has passed.
class ParamValues {
 public:
  void set(const std::string& name, ParamValue value) { values_[name] = std::move(value); }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  const std::map<std::string, ParamValue>& values() const { return values_; }

  bool boolean(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  double number(const std::string& name) const;
  const std::string& text(const std::string& name) const;  // text, path, choice and resource
  const std::vector<int64_t>& ints(const std::string& name) const;
  const std::vector<double>& numbers(const std::string& name) const;
  const std::vector<std::string>& texts(const std::string& name) const;

 private:
  const ParamValue& get(const std::string& name) const;
  std::map<std::string, ParamValue> values_;
};

// Converts a YAML value to the parameter's type and checks its range. Appends
// errors (with `where`) instead of throwing; returns nullopt on error.
std::optional<ParamValue> parse_param(const ParamSpec& spec, const YAML::Node& value, const SourceLocation& where,
                                      std::vector<ConfigError>& errors);

// Resolves a whole `params:` mapping against a table: unknown names (with the
// closest match), type and range errors, missing required ones.
ParamValues resolve_params(const std::vector<ParamSpec>& table, const YAML::Node& params, const SourceLocation& where,
                      std::vector<ConfigError>& errors);

// Emits a resolved value back as YAML (for the resolved pipeline file).
void emit_param_yaml(const ParamValue& value, YAML::Node& out);

}  // namespace diffuflow
