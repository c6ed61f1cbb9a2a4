#include "graph/spec_builder.hpp"

#include "graph/registry.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <set>
#include <sstream>

namespace diffuflow {

namespace {

const std::vector<std::string> kSettings = {"seed", "device", "threads", "teams", "deterministic", "description"};

template <typename T>
std::string list_text(const std::vector<T>& items) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < items.size(); ++i) {
    out << (i ? ", " : "");
    if constexpr (std::is_same_v<T, std::string>)
      out << '"' << items[i] << '"';
    else
      out << items[i];
  }
  out << ']';
  return out.str();
}

YAML::Node yaml_of(const ParamValue& value) {
  YAML::Node node;
  emit_param_yaml(value, node);
  return node;
}

// Whether a C++ value has the parameter's type (an integer also fits a number).
bool fits(const ParamSpec& spec, const ParamValue& v) {
  switch (spec.type) {
    case ParamType::boolean: return std::holds_alternative<bool>(v);
    case ParamType::integer: return std::holds_alternative<int64_t>(v);
    case ParamType::number: return std::holds_alternative<double>(v) || std::holds_alternative<int64_t>(v);
    case ParamType::text:
    case ParamType::path:
    case ParamType::choice:
    case ParamType::resource: return std::holds_alternative<std::string>(v);
    case ParamType::int_list: return std::holds_alternative<std::vector<int64_t>>(v);
    case ParamType::number_list:
      return std::holds_alternative<std::vector<double>>(v) || std::holds_alternative<std::vector<int64_t>>(v);
    case ParamType::text_list: return std::holds_alternative<std::vector<std::string>>(v);
  }
  return false;
}

bool same_row(const ParamSpec& a, const ParamSpec& b) {
  return a.name == b.name && a.type == b.type && a.doc == b.doc && a.is_required == b.is_required && a.min == b.min &&
         a.max == b.max && a.choices == b.choices && a.resource_type == b.resource_type &&
         a.default_value == b.default_value;
}

bool same_rows(const std::vector<ParamSpec>& a, const std::vector<ParamSpec>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), same_row);
}

std::string row_names(const std::vector<ParamSpec>& rows) {
  std::string s;
  for (const auto& r : rows) s += (s.empty() ? "" : ", ") + r.name;
  return s.empty() ? "no parameters" : s;
}

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

}  // namespace

std::string SpecValue::describe() const {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) return std::string("the boolean ") + (v ? "true" : "false");
        else if constexpr (std::is_same_v<T, int64_t>) return "the integer " + std::to_string(v);
        else if constexpr (std::is_same_v<T, double>) return "the number " + param_value_str(v);
        else if constexpr (std::is_same_v<T, std::string>) return "the text " + quoted(v);
        else if constexpr (std::is_same_v<T, std::vector<int64_t>>) return "the integer list " + list_text(v);
        else if constexpr (std::is_same_v<T, std::vector<double>>) return "the number list " + list_text(v);
        else return "the text list " + list_text(v);
      },
      value_);
}

PipelineSpecBuilder::PipelineSpecBuilder(std::string name) : name_(std::move(name)) {}

PipelineSpecBuilder& PipelineSpecBuilder::setting(const std::string& key, const SpecValue& value) {
  settings_.emplace_back(key, value);
  return *this;
}

PipelineSpecBuilder& PipelineSpecBuilder::resource(const std::string& name, const std::string& type,
                                                   const Values& params) {
  return add(resources_, name, type, params, nullptr, 1);
}

PipelineSpecBuilder& PipelineSpecBuilder::node(const std::string& name, const std::string& type,
                                               const Values& params, int concurrency) {
  return add(nodes_, name, type, params, nullptr, concurrency);
}

PipelineSpecBuilder& PipelineSpecBuilder::edge(const std::string& text) {
  edges_.push_back(text);
  return *this;
}

PipelineSpecBuilder& PipelineSpecBuilder::add(std::vector<Item>& list, const std::string& name,
                                              const std::string& type, Values params,
                                              const std::vector<ParamSpec>* rows, int concurrency) {
  list.push_back(Item{name, type, std::move(params), rows, concurrency});
  return *this;
}

struct PipelineSpecBuilder::Assembly {
  YAML::Node root;
  std::string file;                           // what errors name when no call fits
  std::vector<std::string> resource_calls;    // "PipelineSpecBuilder.resource(\"schedule\", noise_schedule)"
  std::vector<std::string> node_calls;
  std::vector<ConfigError> errors;            // found here: C++ value types, parameter structs
  std::set<std::string> left_out;             // key paths of values left out of `root` for a type error
  std::set<std::string> unresolved;           // "nodes[3]": a type that could not be found; the parser's errors
                                              // about it would only repeat that
};

PipelineSpecBuilder::Assembly PipelineSpecBuilder::assemble(bool checked) const {
  Assembly a;
  a.file = "PipelineSpecBuilder(" + quoted(name_) + ")";
  a.root["name"] = name_;
  const auto& registry = Registry::instance();

  for (const auto& [key, value] : settings_) {
    const std::string call = "PipelineSpecBuilder.setting(" + quoted(key) + ")";
    if (checked) {
      if (std::find(kSettings.begin(), kSettings.end(), key) == kSettings.end()) {
        const std::string near = closest_match(key, kSettings);
        a.errors.emplace_back(SourceLocation{call, 0, 0, ""},
                              "unknown pipeline setting '" + key + "'" +
                                  (near.empty() ? "" : " (did you mean '" + near + "'?)") +
                                  "; settings: seed, device, threads, teams, deterministic, description");
        continue;
      }
      const ParamValue& v = value.value();
      const bool integral = key == "seed" || key == "threads" || key == "teams";
      const bool ok = integral                          ? std::holds_alternative<int64_t>(v)
                      : key == "deterministic"          ? std::holds_alternative<bool>(v)
                                                        : std::holds_alternative<std::string>(v);
      if (!ok) {
        const std::string want = integral                          ? "an integer"
                                 : key == "deterministic"          ? "a boolean"
                                                                   : "a text";
        a.errors.emplace_back(SourceLocation{call, 0, 0, ""}, "expected " + want + ", got " + value.describe());
        continue;
      }
    }
    a.root[key] = yaml_of(value.value());
  }

  // Resources and nodes alike: the type (found from a parameter struct when not named), the values.
  auto items = [&](const std::vector<Item>& list, const char* section, const char* method, bool is_node,
                   std::vector<std::string>& calls) {
    YAML::Node seq(YAML::NodeType::Sequence);
    for (size_t i = 0; i < list.size(); ++i) {
      const Item& item = list[i];
      const std::string path = std::string(section) + "[" + std::to_string(i) + "]";
      std::string type = item.type;
      const auto contract_rows = [&](const std::string& t) -> const std::vector<ParamSpec>* {
        if (is_node) {
          const NodeContract* c = registry.node_contract(t);
          return c ? &c->params : nullptr;
        }
        const ResourceContract* c = registry.resource_contract(t);
        return c ? &c->params : nullptr;
      };
      std::string call = std::string("PipelineSpecBuilder.") + method + "(" + quoted(item.name) + ", " + type + ")";
      if (type.empty()) {
        // .node<Class>(...): the registered type whose parameter rows are the struct's.
        std::vector<std::string> matches;
        for (const auto& t : is_node ? registry.node_types() : registry.resource_types()) {
          if (const auto* rows = contract_rows(t); rows && same_rows(*rows, *item.rows)) matches.push_back(t);
        }
        if (matches.size() == 1) {
          type = matches[0];
          call = std::string("PipelineSpecBuilder.") + method + "(" + quoted(item.name) + ", " + type + ")";
        } else {
          call = std::string("PipelineSpecBuilder.") + method + "<...>(" + quoted(item.name) + ")";
          std::string why = matches.empty()
                                ? std::string("no registered ") + (is_node ? "node" : "resource") +
                                      " type takes this parameter struct (" + row_names(*item.rows) +
                                      "); is its registration linked in?"
                                : "several types take this parameter struct (" + matches[0] + ", " + matches[1] +
                                      "); name the type: ." + method + "(" + quoted(item.name) + ", \"" +
                                      matches[0] + "\", params)";
          if (checked) a.errors.emplace_back(SourceLocation{call, 0, 0, ""}, why);
          a.unresolved.insert(path);
        }
      } else if (item.rows && checked) {
        const auto* rows = contract_rows(type);
        if (rows && !same_rows(*rows, *item.rows)) {
          a.errors.emplace_back(SourceLocation{call, 0, 0, ""},
                                "the parameter struct given is not " + type + "'s: it declares " +
                                    row_names(*item.rows) + "; " + type + " takes " + row_names(*rows));
          a.unresolved.insert(path);
        }
      }
      calls.push_back(call);

      YAML::Node n;
      n["name"] = item.name;
      if (!type.empty()) n["type"] = type;
      if (is_node && item.concurrency != 1) n["concurrency"] = item.concurrency;
      YAML::Node params(YAML::NodeType::Map);
      const auto* rows = type.empty() ? nullptr : contract_rows(type);
      for (const auto& [key, value] : item.params) {
        if (checked && rows && !a.unresolved.count(path)) {
          const auto spec = std::find_if(rows->begin(), rows->end(), [&](const ParamSpec& p) { return p.name == key; });
          if (spec != rows->end() && !fits(*spec, value.value())) {
            a.errors.emplace_back(SourceLocation{call, 0, 0, "parameter '" + key + "'"},
                                  "expected " + spec->type_description() + ", got " + value.describe());
            a.left_out.insert(path + ".params." + key);
            continue;
          }
        }
        params[key] = yaml_of(value.value());
      }
      n["params"] = params;
      seq.push_back(n);
    }
    return seq;
  };
  if (!resources_.empty()) a.root["resources"] = items(resources_, "resources", "resource", false, a.resource_calls);
  a.root["nodes"] = items(nodes_, "nodes", "node", true, a.node_calls);
  YAML::Node edges(YAML::NodeType::Sequence);
  for (const auto& e : edges_) edges.push_back(e);
  a.root["edges"] = edges;
  return a;
}

namespace {

// "nodes[3].params.batch_size[1]" -> section "nodes", index 3, rest ".params.batch_size[1]".
bool split_item_path(const std::string& path, const std::string& section, size_t& index, std::string& rest) {
  if (path.rfind(section + "[", 0) != 0) return false;
  const size_t close = path.find(']', section.size());
  if (close == std::string::npos) return false;
  try {
    index = std::stoul(path.substr(section.size() + 1, close - section.size() - 1));
  } catch (const std::exception&) {
    return false;
  }
  rest = path.substr(close + 1);
  return true;
}

// ".params.batch_size[1]" -> "parameter 'batch_size'[1]"; ".concurrency" -> "concurrency".
std::string item_key(const std::string& rest) {
  if (rest.rfind(".params.", 0) == 0) {
    const std::string tail = rest.substr(8);
    const size_t end = tail.find_first_of(".[");
    return "parameter '" + tail.substr(0, end) + "'" + (end == std::string::npos ? "" : tail.substr(end));
  }
  if (rest == ".params") return "";
  return rest.empty() ? "" : rest.substr(1);
}

}  // namespace

PipelineSpec PipelineSpecBuilder::build() const {
  Assembly a = assemble(true);
  std::vector<ConfigError> errors = a.errors;
  try {
    PipelineSpec spec = parse_pipeline_tree(a.root, a.file, overrides_);
    if (errors.empty()) return spec;
  } catch (const ConfigErrors& found) {
    // Name the call each problem comes from; the tree has no lines to point at.
    for (const ConfigError& e : found.errors()) {
      if (e.where().file != a.file) {
        errors.push_back(e);  // a file the pipeline names (a model config), with its own location
        continue;
      }
      const std::string& path = e.where().key_path;
      SourceLocation where{a.file, 0, 0, path};
      size_t index = 0;
      std::string rest;
      bool skip = false;
      for (const auto& [section, calls] : {std::pair<std::string, const std::vector<std::string>*>{"nodes", &a.node_calls},
                                           {"resources", &a.resource_calls}}) {
        if (!split_item_path(path, section, index, rest) || index >= calls->size()) continue;
        const std::string item = section + "[" + std::to_string(index) + "]";
        skip = a.unresolved.count(item) ||
               (a.left_out.count(path) && e.message().rfind("missing required parameter", 0) == 0);
        where = SourceLocation{(*calls)[index], 0, 0, item_key(rest)};
      }
      if (split_item_path(path, "edges", index, rest) && index < edges_.size()) {
        where = SourceLocation{"PipelineSpecBuilder.edge(" + quoted(edges_[index]) + ")", 0, 0, ""};
      }
      if (std::find(kSettings.begin(), kSettings.end(), path) != kSettings.end()) {
        where = SourceLocation{"PipelineSpecBuilder.setting(" + quoted(path) + ")", 0, 0, ""};
      }
      if (!skip) errors.emplace_back(where, e.message());
    }
  }
  // In the order of the calls, whichever check found them.
  std::vector<std::string> calls;
  for (const auto& [key, value] : settings_) calls.push_back("PipelineSpecBuilder.setting(" + quoted(key) + ")");
  calls.insert(calls.end(), a.resource_calls.begin(), a.resource_calls.end());
  calls.insert(calls.end(), a.node_calls.begin(), a.node_calls.end());
  for (const auto& e : edges_) calls.push_back("PipelineSpecBuilder.edge(" + quoted(e) + ")");
  const auto rank = [&](const ConfigError& e) {
    return std::find(calls.begin(), calls.end(), e.where().file) - calls.begin();
  };
  std::stable_sort(errors.begin(), errors.end(),
                   [&](const ConfigError& x, const ConfigError& y) { return rank(x) < rank(y); });
  throw ConfigErrors(std::move(errors));
}

PipelineSpecBuilder& PipelineSpecBuilder::set(const Override& override_value) {
  overrides_.push_back(override_value);
  return *this;
}

std::string PipelineSpecBuilder::yaml() const {
  YAML::Node root = assemble(false).root;
  for (const Override& o : overrides_) {
    if (o.target == "pipeline") {
      root[o.param] = YAML::Load(o.value);
      continue;
    }
    for (const char* section : {"resources", "nodes"}) {
      if (!root[section]) continue;
      for (YAML::Node item : root[section]) {
        if (item["name"].as<std::string>() == o.target) item["params"][o.param] = YAML::Load(o.value);
      }
    }
  }
  YAML::Emitter out;
  out << root;
  return std::string(out.c_str()) + "\n";
}

}  // namespace diffuflow
