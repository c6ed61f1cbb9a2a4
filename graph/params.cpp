#include "graph/params.hpp"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <sstream>

namespace diffuflow {

std::string param_type_name(ParamType type) {
  switch (type) {
    case ParamType::boolean: return "bool";
    case ParamType::integer: return "int";
    case ParamType::number: return "float";
    case ParamType::text: return "string";
    case ParamType::path: return "path";
    case ParamType::choice: return "choice";
    case ParamType::int_list: return "int list";
    case ParamType::number_list: return "float list";
    case ParamType::text_list: return "string list";
    case ParamType::resource: return "resource";
  }
  return "?";
}

namespace {

std::string number_str(double v) {
  std::ostringstream out;
  if (v == static_cast<double>(static_cast<long long>(v)) && std::fabs(v) < 1e15) {
    out << static_cast<long long>(v);
    return out.str();
  }
  out << v;
  return out.str();
}

template <typename T>
std::string list_str(const std::vector<T>& items) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out << ", ";
    if constexpr (std::is_same_v<T, double>)
      out << number_str(items[i]);
    else
      out << items[i];
  }
  out << ']';
  return out.str();
}

}  // namespace

std::string param_value_str(const ParamValue& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>)
          return v ? "true" : "false";
        else if constexpr (std::is_same_v<T, int64_t>)
          return std::to_string(v);
        else if constexpr (std::is_same_v<T, double>)
          return number_str(v);
        else if constexpr (std::is_same_v<T, std::string>)
          return v;
        else
          return list_str(v);
      },
      value);
}

static ParamSpec make_spec(std::string name, ParamType type, ParamValue fallback, std::string doc) {
  ParamSpec spec;
  spec.name = std::move(name);
  spec.type = type;
  spec.default_value = std::move(fallback);
  spec.doc = std::move(doc);
  return spec;
}

ParamSpec ParamSpec::boolean(std::string name, bool fallback, std::string doc) {
  return make_spec(std::move(name), ParamType::boolean, fallback, std::move(doc));
}
ParamSpec ParamSpec::integer(std::string name, int64_t fallback, std::string doc) {
  return make_spec(std::move(name), ParamType::integer, fallback, std::move(doc));
}
ParamSpec ParamSpec::number(std::string name, double fallback, std::string doc) {
  return make_spec(std::move(name), ParamType::number, fallback, std::move(doc));
}
ParamSpec ParamSpec::text(std::string name, std::string fallback, std::string doc) {
  return make_spec(std::move(name), ParamType::text, std::move(fallback), std::move(doc));
}
ParamSpec ParamSpec::path(std::string name, std::string fallback, std::string doc) {
  return make_spec(std::move(name), ParamType::path, std::move(fallback), std::move(doc));
}
ParamSpec ParamSpec::choice(std::string name, std::string fallback, std::vector<std::string> choices, std::string doc) {
  ParamSpec spec = make_spec(std::move(name), ParamType::choice, std::move(fallback), std::move(doc));
  spec.choices = std::move(choices);
  return spec;
}
ParamSpec ParamSpec::int_list(std::string name, std::vector<int64_t> fallback, std::string doc) {
  return make_spec(std::move(name), ParamType::int_list, std::move(fallback), std::move(doc));
}
ParamSpec ParamSpec::number_list(std::string name, std::vector<double> fallback, std::string doc) {
  return make_spec(std::move(name), ParamType::number_list, std::move(fallback), std::move(doc));
}
ParamSpec ParamSpec::text_list(std::string name, std::vector<std::string> fallback, std::string doc) {
  return make_spec(std::move(name), ParamType::text_list, std::move(fallback), std::move(doc));
}
ParamSpec ParamSpec::resource(std::string name, std::string resource_type, std::string doc) {
  ParamSpec spec = make_spec(std::move(name), ParamType::resource, std::string(), std::move(doc));
  spec.resource_type = std::move(resource_type);
  spec.is_required = true;
  return spec;
}

std::string ParamSpec::type_description() const {
  std::string text = param_type_name(type);
  if (type == ParamType::choice) {
    text = "one of ";
    for (size_t i = 0; i < choices.size(); ++i) text += (i ? "|" : "") + choices[i];
  }
  if (type == ParamType::resource) text = "name of a " + resource_type + " resource";
  if (min && max)
    text += " in [" + number_str(*min) + ", " + number_str(*max) + "]";
  else if (min)
    text += " >= " + number_str(*min);
  else if (max)
    text += " <= " + number_str(*max);
  return text;
}

const ParamValue& ParamValues::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) throw std::runtime_error("parameter '" + name + "' is not declared");
  return it->second;
}

template <typename T>
static const T& typed_param(const ParamValue& v, const std::string& name) {
  if (const T* p = std::get_if<T>(&v)) return *p;
  throw std::runtime_error("parameter '" + name + "' is read with the wrong type");
}

bool ParamValues::boolean(const std::string& name) const { return typed_param<bool>(get(name), name); }
int64_t ParamValues::integer(const std::string& name) const { return typed_param<int64_t>(get(name), name); }
double ParamValues::number(const std::string& name) const {
  const auto& v = get(name);
  if (const auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  return typed_param<double>(v, name);
}
const std::string& ParamValues::text(const std::string& name) const { return typed_param<std::string>(get(name), name); }
const std::vector<int64_t>& ParamValues::ints(const std::string& name) const {
  return typed_param<std::vector<int64_t>>(get(name), name);
}
const std::vector<double>& ParamValues::numbers(const std::string& name) const {
  return typed_param<std::vector<double>>(get(name), name);
}
const std::vector<std::string>& ParamValues::texts(const std::string& name) const {
  return typed_param<std::vector<std::string>>(get(name), name);
}

namespace {

SourceLocation at(const YAML::Node& node, SourceLocation where) {
  const YAML::Mark mark = node.Mark();
  if (mark.line >= 0 && !node.IsNull()) {
    where.line = mark.line + 1;
    where.column = mark.column + 1;
  }
  return where;
}

std::string describe_yaml(const YAML::Node& value) {
  if (!value.IsDefined() || value.IsNull()) return "nothing";
  if (value.IsSequence()) return "a list";
  if (value.IsMap()) return "a mapping";
  return "'" + value.Scalar() + "'";
}

// Strict scalar conversions: YAML's "1e-4" is a float, "3" an integer, "3.0" a
// float; "yes"/"no" are not booleans here (only true/false).
std::optional<int64_t> to_integer(const YAML::Node& v) {
  if (!v.IsScalar()) return std::nullopt;
  const std::string& s = v.Scalar();
  if (s.empty()) return std::nullopt;
  size_t used = 0;
  try {
    long long value = std::stoll(s, &used, 10);
    if (used == s.size()) return value;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

std::optional<double> to_number(const YAML::Node& v) {
  if (!v.IsScalar()) return std::nullopt;
  const std::string& s = v.Scalar();
  if (s.empty()) return std::nullopt;
  size_t used = 0;
  try {
    double value = std::stod(s, &used);
    if (used == s.size() && std::isfinite(value)) return value;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

std::optional<bool> to_boolean(const YAML::Node& v) {
  if (!v.IsScalar()) return std::nullopt;
  if (v.Scalar() == "true") return true;
  if (v.Scalar() == "false") return false;
  return std::nullopt;
}

bool check_range(const ParamSpec& spec, double value, const SourceLocation& where, std::vector<ConfigError>& errors) {
  if ((spec.min && value < *spec.min) || (spec.max && value > *spec.max)) {
    errors.emplace_back(where, "value " + number_str(value) + " is out of range: '" + spec.name + "' must be " +
                                   spec.type_description());
    return false;
  }
  return true;
}

}  // namespace

std::optional<ParamValue> parse_param(const ParamSpec& spec, const YAML::Node& value, const SourceLocation& where_in,
                                      std::vector<ConfigError>& errors) {
  const SourceLocation where = at(value, where_in);
  auto wrong_type = [&]() {
    errors.emplace_back(where, "expected " + spec.type_description() + " for '" + spec.name + "', got " +
                                   describe_yaml(value));
    return std::nullopt;
  };
  switch (spec.type) {
    case ParamType::boolean: {
      auto b = to_boolean(value);
      if (!b) return wrong_type();
      return ParamValue(*b);
    }
    case ParamType::integer: {
      auto i = to_integer(value);
      if (!i) return wrong_type();
      if (!check_range(spec, static_cast<double>(*i), where, errors)) return std::nullopt;
      return ParamValue(*i);
    }
    case ParamType::number: {
      auto d = to_number(value);
      if (!d) return wrong_type();
      if (!check_range(spec, *d, where, errors)) return std::nullopt;
      return ParamValue(*d);
    }
    case ParamType::text:
    case ParamType::path:
    case ParamType::resource: {
      if (!value.IsScalar()) return wrong_type();
      if (spec.type == ParamType::resource && value.Scalar().empty()) return wrong_type();
      return ParamValue(value.Scalar());
    }
    case ParamType::choice: {
      if (!value.IsScalar()) return wrong_type();
      for (const auto& c : spec.choices)
        if (c == value.Scalar()) return ParamValue(c);
      std::string msg = "'" + value.Scalar() + "' is not a valid value for '" + spec.name + "': expected " +
                        spec.type_description();
      const std::string near = closest_match(value.Scalar(), spec.choices);
      if (!near.empty()) msg += " (did you mean '" + near + "'?)";
      errors.emplace_back(where, msg);
      return std::nullopt;
    }
    case ParamType::int_list:
    case ParamType::number_list:
    case ParamType::text_list: {
      if (!value.IsSequence()) return wrong_type();
      std::vector<int64_t> ints;
      std::vector<double> numbers;
      std::vector<std::string> texts;
      bool ok = true;
      for (size_t i = 0; i < value.size(); ++i) {
        const YAML::Node item = value[i];
        SourceLocation item_where = at(item, where_in);
        item_where.key_path += "[" + std::to_string(i) + "]";
        if (spec.type == ParamType::int_list) {
          auto v = to_integer(item);
          if (!v) {
            errors.emplace_back(item_where, "expected an integer in '" + spec.name + "', got " + describe_yaml(item));
            ok = false;
          } else if (check_range(spec, static_cast<double>(*v), item_where, errors)) {
            ints.push_back(*v);
          } else {
            ok = false;
          }
        } else if (spec.type == ParamType::number_list) {
          auto v = to_number(item);
          if (!v) {
            errors.emplace_back(item_where, "expected a number in '" + spec.name + "', got " + describe_yaml(item));
            ok = false;
          } else if (check_range(spec, *v, item_where, errors)) {
            numbers.push_back(*v);
          } else {
            ok = false;
          }
        } else {
          if (!item.IsScalar()) {
            errors.emplace_back(item_where, "expected a string in '" + spec.name + "', got " + describe_yaml(item));
            ok = false;
          } else {
            texts.push_back(item.Scalar());
          }
        }
      }
      if (!ok) return std::nullopt;
      if (spec.type == ParamType::int_list) return ParamValue(ints);
      if (spec.type == ParamType::number_list) return ParamValue(numbers);
      return ParamValue(texts);
    }
  }
  return std::nullopt;
}

ParamValues resolve_params(const std::vector<ParamSpec>& table, const YAML::Node& params, const SourceLocation& where,
                      std::vector<ConfigError>& errors) {
  ParamValues resolved;
  std::vector<std::string> names;
  for (const auto& spec : table) names.push_back(spec.name);

  if (params.IsDefined() && !params.IsNull() && !params.IsMap()) {
    errors.emplace_back(at(params, where), "'params' must be a mapping of name: value");
    return resolved;
  }
  if (params.IsMap()) {
    for (const auto& kv : params) {
      const std::string key = kv.first.Scalar();
      SourceLocation key_where = at(kv.first, where);
      key_where.key_path = where.key_path + "." + key;
      const ParamSpec* spec = nullptr;
      for (const auto& s : table)
        if (s.name == key) spec = &s;
      if (!spec) {
        std::string msg = "unknown parameter '" + key + "'";
        const std::string near = closest_match(key, names);
        if (!near.empty()) msg += " (did you mean '" + near + "'?)";
        if (names.empty())
          msg += "; this type takes no parameters";
        else if (near.empty()) {
          msg += "; valid parameters: ";
          for (size_t i = 0; i < names.size(); ++i) msg += (i ? ", " : "") + names[i];
        }
        errors.emplace_back(key_where, msg);
        continue;
      }
      SourceLocation value_where = key_where;
      if (auto v = parse_param(*spec, kv.second, value_where, errors)) resolved.set(key, *v);
    }
  }
  for (const auto& spec : table) {
    if (resolved.has(spec.name)) continue;
    const bool given = params.IsMap() && params[spec.name].IsDefined();
    if (given) continue;  // given but invalid: already reported
    if (spec.is_required) {
      SourceLocation missing = where;
      missing.key_path += "." + spec.name;
      errors.emplace_back(missing, "missing required parameter '" + spec.name + "' (" + spec.type_description() +
                                       ": " + spec.doc + ")");
      continue;
    }
    resolved.set(spec.name, spec.default_value);
  }
  return resolved;
}

void emit_param_yaml(const ParamValue& value, YAML::Node& out) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>> ||
                      std::is_same_v<T, std::vector<std::string>>) {
          out = YAML::Node(YAML::NodeType::Sequence);
          for (const auto& item : v) out.push_back(item);
          out.SetStyle(YAML::EmitterStyle::Flow);
        } else {
          out = v;
        }
      },
      value);
}

}  // namespace diffuflow
