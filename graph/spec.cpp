#include "graph/spec.hpp"

#include "graph/registry.hpp"

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

namespace diffuflow {

int PipelineSpec::node_index(const std::string& node_name) const {
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].name == node_name) return static_cast<int>(i);
  return -1;
}

const ResourceSpec* PipelineSpec::resource(const std::string& resource_name) const {
  for (const auto& r : resources)
    if (r.name == resource_name) return &r;
  return nullptr;
}

namespace {

const std::vector<std::string> kTopLevelKeys = {"name",  "description",   "device",    "seed",  "threads",
                                                "teams", "deterministic", "resources", "nodes", "edges"};
// The top-level keys that --set pipeline.KEY=VALUE (or KEY=VALUE) may override.
const std::vector<std::string> kSettings = {"seed", "device", "threads", "teams", "deterministic"};

SourceLocation locate(const std::string& file, const YAML::Node& node, const std::string& key_path) {
  SourceLocation where{file, 0, 0, key_path};
  if (node.IsDefined()) {
    const YAML::Mark mark = node.Mark();
    if (mark.line >= 0) {
      where.line = mark.line + 1;
      where.column = mark.column + 1;
    }
  }
  return where;
}

// Location of `key` inside mapping `map` (the key itself), or of the map.
SourceLocation locate_key(const std::string& file, const YAML::Node& map, const std::string& key,
                          const std::string& key_path) {
  if (map.IsMap()) {
    for (const auto& kv : map) {
      if (kv.first.Scalar() == key) return locate(file, kv.first, key_path);
    }
  }
  return locate(file, map, key_path);
}

std::string suggestion(const std::string& name, const std::vector<std::string>& valid) {
  const std::string near = closest_match(name, valid);
  if (!near.empty()) return " (did you mean '" + near + "'?)";
  std::string list;
  for (size_t i = 0; i < valid.size() && i < 40; ++i) list += (i ? ", " : "") + valid[i];
  return valid.empty() ? "" : "; valid names: " + list;
}

bool is_identifier(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
  return !std::isdigit(static_cast<unsigned char>(s[0]));
}

// Parses "a.port -> b.port" (ports optional) or [a.port, b.port].
bool parse_edge_text(const std::string& text, EdgeSpec& edge) {
  const auto arrow = text.find("->");
  if (arrow == std::string::npos) return false;
  auto trim = [](std::string s) {
    const auto b = s.find_first_not_of(" \t");
    const auto e = s.find_last_not_of(" \t");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  auto split = [](const std::string& endpoint, std::string& node, std::string& port) {
    const auto dot = endpoint.find('.');
    node = endpoint.substr(0, dot);
    port = dot == std::string::npos ? "" : endpoint.substr(dot + 1);
    return !node.empty() && (dot == std::string::npos || !port.empty());
  };
  return split(trim(text.substr(0, arrow)), edge.from_node, edge.from_port) &&
         split(trim(text.substr(arrow + 2)), edge.to_node, edge.to_port);
}

class Parser {
 public:
  Parser(std::string file, std::vector<ConfigError>& errors) : file_(std::move(file)), errors_(errors) {}

  PipelineSpec parse(const YAML::Node& root, const std::vector<Override>& overrides) {
    PipelineSpec spec;
    spec.file = file_;
    if (!root.IsMap()) {
      error(locate(file_, root, ""), "a pipeline file must be a mapping with keys name, nodes and edges");
      return spec;
    }
    for (const auto& kv : root) {
      const std::string key = kv.first.Scalar();
      if (std::find(kTopLevelKeys.begin(), kTopLevelKeys.end(), key) == kTopLevelKeys.end()) {
        error(locate(file_, kv.first, key), "unknown top-level key '" + key + "'" + suggestion(key, kTopLevelKeys));
      }
    }
    const YAML::Node name = root["name"];
    if (!name.IsDefined() || !name.IsScalar() || name.Scalar().empty()) {
      error(locate(file_, name.IsDefined() ? name : root, "name"), "missing pipeline 'name' (a non-empty string)");
    } else {
      spec.name = name.Scalar();
    }
    scalar_into(root, "device", spec.device);
    if (const YAML::Node seed = root["seed"]; seed.IsDefined()) {
      std::vector<ConfigError> local;
      auto v = parse_param(ParamSpec::integer("seed", 0, "").at_least(0), seed, locate(file_, seed, "seed"), local);
      if (v) spec.seed = static_cast<uint64_t>(std::get<int64_t>(*v));
      for (auto& e : local) errors_.push_back(e);
    }
    if (const YAML::Node threads = root["threads"]; threads.IsDefined()) {
      std::vector<ConfigError> local;
      auto v = parse_param(ParamSpec::integer("threads", 0, "").range(0, 1024), threads,
                           locate(file_, threads, "threads"), local);
      if (v) spec.threads = static_cast<int>(std::get<int64_t>(*v));
      for (auto& e : local) errors_.push_back(e);
    }
    if (const YAML::Node teams = root["teams"]; teams.IsDefined()) {
      std::vector<ConfigError> local;
      auto v = parse_param(ParamSpec::integer("teams", 1, "").range(1, 1024), teams, locate(file_, teams, "teams"),
                           local);
      if (v) spec.teams = static_cast<int>(std::get<int64_t>(*v));
      for (auto& e : local) errors_.push_back(e);
    }
    if (const YAML::Node det = root["deterministic"]; det.IsDefined()) {
      std::vector<ConfigError> local;
      auto v = parse_param(ParamSpec::boolean("deterministic", false, ""), det, locate(file_, det, "deterministic"),
                           local);
      if (v) spec.deterministic = std::get<bool>(*v);
      for (auto& e : local) errors_.push_back(e);
    }
    apply_pipeline_overrides(spec, overrides);
    try {
      DeviceSpec::parse(spec.device);
    } catch (const std::invalid_argument& e) {
      error(locate(file_, root["device"], "device"), e.what());
    }

    parse_resources(root["resources"], spec);
    parse_nodes(root["nodes"], spec);
    apply_overrides(spec, overrides);
    parse_edges(root["edges"], spec);
    return spec;
  }

 private:
  void error(SourceLocation where, const std::string& message) { errors_.emplace_back(std::move(where), message); }

  void scalar_into(const YAML::Node& root, const char* key, std::string& out) {
    const YAML::Node v = root[key];
    if (!v.IsDefined()) return;
    if (!v.IsScalar()) {
      error(locate(file_, v, key), std::string("'") + key + "' must be a string");
      return;
    }
    out = v.Scalar();
  }

  void apply_pipeline_overrides(PipelineSpec& spec, const std::vector<Override>& overrides) {
    for (const auto& o : overrides) {
      if (o.target != "pipeline") continue;
      SourceLocation where{"--set", 0, 0, "pipeline." + o.param};
      std::vector<ConfigError> local;
      const YAML::Node value = YAML::Load(o.value);
      if (o.param == "seed") {
        if (auto v = parse_param(ParamSpec::integer("seed", 0, "").at_least(0), value, where, local))
          spec.seed = static_cast<uint64_t>(std::get<int64_t>(*v));
      } else if (o.param == "device") {
        spec.device = o.value;
      } else if (o.param == "threads") {
        if (auto v = parse_param(ParamSpec::integer("threads", 0, "").range(0, 1024), value, where, local))
          spec.threads = static_cast<int>(std::get<int64_t>(*v));
      } else if (o.param == "teams") {
        if (auto v = parse_param(ParamSpec::integer("teams", 1, "").range(1, 1024), value, where, local))
          spec.teams = static_cast<int>(std::get<int64_t>(*v));
      } else if (o.param == "deterministic") {
        if (auto v = parse_param(ParamSpec::boolean("deterministic", false, ""), value, where, local))
          spec.deterministic = std::get<bool>(*v);
      } else {
        local.emplace_back(where, "unknown pipeline setting '" + o.param + "'" +
                                      suggestion(o.param, kSettings));
      }
      for (auto& e : local) errors_.push_back(e);
    }
  }

  void parse_resources(const YAML::Node& list, PipelineSpec& spec) {
    if (!list.IsDefined() || list.IsNull()) return;
    if (!list.IsSequence()) {
      error(locate(file_, list, "resources"), "'resources' must be a list of {name, type, params}");
      return;
    }
    std::set<std::string> seen;
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node item = list[i];
      const std::string path = "resources[" + std::to_string(i) + "]";
      if (!item.IsMap()) {
        error(locate(file_, item, path), "a resource must be a mapping with name, type and params");
        continue;
      }
      check_keys(item, path, {"name", "type", "params", "doc"});
      ResourceSpec r;
      r.where = locate(file_, item, path);
      if (!read_name(item, path, r.name, seen)) continue;
      const YAML::Node type = item["type"];
      if (!type.IsDefined() || !type.IsScalar()) {
        error(locate(file_, type.IsDefined() ? type : item, path + ".type"), "resource '" + r.name + "' needs a 'type'");
        continue;
      }
      r.type = type.Scalar();
      const ResourceContract* contract = Registry::instance().resource_contract(r.type);
      if (!contract) {
        error(locate(file_, type, path + ".type"),
              "unknown resource type '" + r.type + "'" + suggestion(r.type, Registry::instance().resource_types()));
        continue;
      }
      if (item["params"]) r.raw_params.reset(item["params"]);
      r.params = resolve_params(contract->params, r.raw_params,
                                locate_key(file_, item, "params", path + ".params"), errors_);
      spec.resources.push_back(std::move(r));
    }
  }

  void parse_nodes(const YAML::Node& list, PipelineSpec& spec) {
    if (!list.IsDefined() || list.IsNull()) {
      error(SourceLocation{file_, 1, 1, "nodes"}, "missing 'nodes': a pipeline needs at least one node");
      return;
    }
    if (!list.IsSequence()) {
      error(locate(file_, list, "nodes"), "'nodes' must be a list of {name, type, params}");
      return;
    }
    std::set<std::string> seen;
    for (const auto& r : spec.resources) seen.insert(r.name);
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node item = list[i];
      const std::string path = "nodes[" + std::to_string(i) + "]";
      if (!item.IsMap()) {
        error(locate(file_, item, path), "a node must be a mapping with name, type and params");
        continue;
      }
      check_keys(item, path, {"name", "type", "params", "concurrency", "doc"});
      NodeSpec n;
      n.where = locate(file_, item, path);
      if (!read_name(item, path, n.name, seen)) continue;
      const YAML::Node type = item["type"];
      if (!type.IsDefined() || !type.IsScalar()) {
        error(locate(file_, type.IsDefined() ? type : item, path + ".type"), "node '" + n.name + "' needs a 'type'");
        continue;
      }
      n.type = type.Scalar();
      const NodeContract* contract = Registry::instance().node_contract(n.type);
      if (!contract) {
        error(locate(file_, type, path + ".type"),
              "unknown node type '" + n.type + "'" + suggestion(n.type, Registry::instance().node_types()));
        continue;
      }
      if (const YAML::Node c = item["concurrency"]; c.IsDefined()) {
        std::vector<ConfigError> local;
        auto v = parse_param(ParamSpec::integer("concurrency", 1, "").range(0, 256), c,
                             locate(file_, c, path + ".concurrency"), local);
        for (auto& e : local) errors_.push_back(e);
        if (v) {
          n.concurrency = static_cast<int>(std::get<int64_t>(*v));
          if (contract->max_concurrency == 1 && n.concurrency != 1) {
            error(locate(file_, c, path + ".concurrency"),
                  "node type '" + n.type + "' is serial by nature: concurrency must be 1");
          } else if (contract->is_source() && n.concurrency != 1) {
            error(locate(file_, c, path + ".concurrency"), "a source node runs serially: concurrency must be 1");
          }
        }
      }
      if (item["params"]) n.raw_params.reset(item["params"]);
      n.params = resolve_params(contract->params, n.raw_params,
                                locate_key(file_, item, "params", path + ".params"), errors_);
      // Resource references must name a declared resource of the right type.
      for (const auto& p : contract->params) {
        if (p.type != ParamType::resource || !n.params.has(p.name)) continue;
        const std::string& ref = n.params.text(p.name);
        const ResourceSpec* r = spec.resource(ref);
        const YAML::Node at = n.raw_params.IsMap() ? n.raw_params[p.name] : YAML::Node();
        const SourceLocation where = locate(file_, at.IsDefined() ? at : item, path + ".params." + p.name);
        auto provides = [&](const ResourceSpec& d) {
          const ResourceContract* rc = Registry::instance().resource_contract(d.type);
          return d.type == p.resource_type || (rc && rc->kind == p.resource_type);
        };
        std::vector<std::string> declared;
        for (const auto& d : spec.resources)
          if (provides(d)) declared.push_back(d.name);
        if (!r) {
          error(where, "'" + ref + "' is not a declared resource; '" + p.name + "' needs a " + p.resource_type +
                           " resource" + suggestion(ref, declared));
        } else if (!provides(*r)) {
          error(where, "resource '" + ref + "' is a " + r->type + ", but '" + p.name + "' needs a " +
                           p.resource_type);
        }
      }
      spec.nodes.push_back(std::move(n));
    }
  }

  void apply_overrides(PipelineSpec& spec, const std::vector<Override>& overrides) {
    for (const auto& o : overrides) {
      if (o.target == "pipeline") continue;
      const SourceLocation where{"--set", 0, 0, o.target + "." + o.param};
      const std::vector<ParamSpec>* table = nullptr;
      ParamValues* params = nullptr;
      const int ni = spec.node_index(o.target);
      if (ni >= 0) {
        table = &Registry::instance().node_contract(spec.nodes[ni].type)->params;
        params = &spec.nodes[ni].params;
      } else {
        for (auto& r : spec.resources) {
          if (r.name == o.target) {
            table = &Registry::instance().resource_contract(r.type)->params;
            params = &r.params;
          }
        }
      }
      if (!table) {
        std::vector<std::string> names;
        for (const auto& n : spec.nodes) names.push_back(n.name);
        for (const auto& r : spec.resources) names.push_back(r.name);
        error(where, "no node or resource named '" + o.target + "'" + suggestion(o.target, names));
        continue;
      }
      const ParamSpec* ps = nullptr;
      std::vector<std::string> names;
      for (const auto& p : *table) {
        names.push_back(p.name);
        if (p.name == o.param) ps = &p;
      }
      if (!ps) {
        error(where, "'" + o.target + "' has no parameter '" + o.param + "'" + suggestion(o.param, names));
        continue;
      }
      YAML::Node value;
      try {
        value = YAML::Load(o.value);
      } catch (const YAML::Exception& e) {
        error(where, "cannot parse value '" + o.value + "': " + e.msg);
        continue;
      }
      const size_t before = errors_.size();
      if (auto v = parse_param(*ps, value, where, errors_)) params->set(o.param, *v);
      // The value's own YAML position (1:1 of the --set text) means nothing to the user.
      for (size_t i = before; i < errors_.size(); ++i) {
        SourceLocation plain = where;
        plain.key_path = errors_[i].where().key_path;
        errors_[i] = ConfigError(plain, errors_[i].message());
      }
    }
  }

  void parse_edges(const YAML::Node& list, PipelineSpec& spec) {
    if (!list.IsDefined() || list.IsNull()) return;
    if (!list.IsSequence()) {
      error(locate(file_, list, "edges"), "'edges' must be a list of 'from.port -> to.port' strings");
      return;
    }
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node item = list[i];
      const std::string path = "edges[" + std::to_string(i) + "]";
      EdgeSpec edge;
      edge.where = locate(file_, item, path);
      bool ok = false;
      if (item.IsScalar()) {
        ok = parse_edge_text(item.Scalar(), edge);
      } else if (item.IsSequence() && item.size() == 2 && item[0].IsScalar() && item[1].IsScalar()) {
        ok = parse_edge_text(item[0].Scalar() + " -> " + item[1].Scalar(), edge);
      }
      if (!ok) {
        error(edge.where, "an edge is written 'from_node.port -> to_node.port' (ports optional), got " +
                              (item.IsScalar() ? "'" + item.Scalar() + "'" : std::string("something else")));
        continue;
      }
      spec.edges.push_back(std::move(edge));
    }
  }

  void check_keys(const YAML::Node& item, const std::string& path, const std::vector<std::string>& valid) {
    for (const auto& kv : item) {
      const std::string key = kv.first.Scalar();
      if (std::find(valid.begin(), valid.end(), key) == valid.end()) {
        error(locate(file_, kv.first, path + "." + key), "unknown key '" + key + "'" + suggestion(key, valid));
      }
    }
  }

  bool read_name(const YAML::Node& item, const std::string& path, std::string& out, std::set<std::string>& seen) {
    const YAML::Node name = item["name"];
    if (!name.IsDefined() || !name.IsScalar() || !is_identifier(name.Scalar())) {
      error(locate(file_, name.IsDefined() ? name : item, path + ".name"),
            "needs a 'name' made of letters, digits, '_' and '-'");
      return false;
    }
    out = name.Scalar();
    if (!seen.insert(out).second) {
      error(locate(file_, name, path + ".name"), "the name '" + out + "' is used twice");
      return false;
    }
    return true;
  }

  std::string file_;
  std::vector<ConfigError>& errors_;
};

}  // namespace

Override parse_override(const std::string& text) {
  const auto eq = text.find('=');
  const std::string key = text.substr(0, eq);
  const auto dot = key.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot == 0 || dot + 1 >= key.size()) {
    if (eq != std::string::npos && dot == std::string::npos &&
        std::find(kSettings.begin(), kSettings.end(), key) != kSettings.end()) {
      return Override{"pipeline", key, text.substr(eq + 1)};
    }
    throw ConfigError(SourceLocation{"--set", 0, 0, text}, "expected node.param=value, got '" + text + "'");
  }
  return Override{key.substr(0, dot), key.substr(dot + 1), text.substr(eq + 1)};
}

PipelineSpec parse_pipeline(const std::string& yaml_text, const std::string& file,
                            const std::vector<Override>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    SourceLocation where{file, e.mark.line >= 0 ? e.mark.line + 1 : 0, e.mark.column >= 0 ? e.mark.column + 1 : 0, ""};
    throw ConfigErrors({ConfigError(where, "YAML syntax error: " + e.msg)});
  }
  return parse_pipeline_tree(root, file, overrides);
}

PipelineSpec parse_pipeline_tree(const YAML::Node& root, const std::string& file,
                                 const std::vector<Override>& overrides) {
  std::vector<ConfigError> errors;
  Parser parser(file, errors);
  PipelineSpec spec = parser.parse(root, overrides);
  // Run resource checks (for example a model config that cannot be built).
  for (const auto& r : spec.resources) {
    const ResourceContract* contract = Registry::instance().resource_contract(r.type);
    if (!contract || !contract->check) continue;
    try {
      contract->check(r.params, PipelineFacts{spec.deterministic});
    } catch (const ConfigError& e) {
      SourceLocation where = e.where().file.empty() ? r.where : e.where();
      errors.emplace_back(where, "resource '" + r.name + "': " + e.message());
    } catch (const std::exception& e) {
      errors.emplace_back(r.where, "resource '" + r.name + "': " + e.what());
    }
  }
  if (errors.empty()) validate_graph(spec, errors);
  if (!errors.empty()) throw ConfigErrors(std::move(errors));
  return spec;
}

PipelineSpec load_pipeline(const std::string& path, const std::vector<Override>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigErrors({ConfigError(SourceLocation{path, 0, 0, ""}, "cannot open the pipeline file")});
  std::stringstream text;
  text << in.rdbuf();
  return parse_pipeline(text.str(), path, overrides);
}

std::string PipelineSpec::resolved_yaml() const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << name;
  out << YAML::Key << "device" << YAML::Value << device;
  out << YAML::Key << "seed" << YAML::Value << seed;
  out << YAML::Key << "threads" << YAML::Value << threads;
  out << YAML::Key << "teams" << YAML::Value << teams;
  out << YAML::Key << "deterministic" << YAML::Value << deterministic;
  auto emit_params = [&](const ParamValues& params) {
    out << YAML::Key << "params" << YAML::Value << YAML::BeginMap;
    for (const auto& [key, value] : params.values()) {
      YAML::Node v;
      emit_param_yaml(value, v);
      out << YAML::Key << key << YAML::Value << v;
    }
    out << YAML::EndMap;
  };
  if (!resources.empty()) {
    out << YAML::Key << "resources" << YAML::Value << YAML::BeginSeq;
    for (const auto& r : resources) {
      out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << r.name << YAML::Key << "type" << YAML::Value
          << r.type;
      emit_params(r.params);
      out << YAML::EndMap;
    }
    out << YAML::EndSeq;
  }
  out << YAML::Key << "nodes" << YAML::Value << YAML::BeginSeq;
  for (const auto& n : nodes) {
    out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << n.name << YAML::Key << "type" << YAML::Value
        << n.type << YAML::Key << "concurrency" << YAML::Value << n.concurrency;
    emit_params(n.params);
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::Key << "edges" << YAML::Value << YAML::BeginSeq;
  for (const auto& e : edges) out << e.str();
  out << YAML::EndSeq;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace diffuflow
