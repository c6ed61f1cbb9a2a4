// Graph-level validation: edges, ports, unconnected inputs, fields read but
// never written upstream, fields read as another type than they are written
// (kind, dtype, rank, host or device), and cycles that no limiter bounds.
#include "graph/limiter.hpp"
#include "graph/registry.hpp"
#include "graph/spec.hpp"

#include <algorithm>
#include <functional>
#include <map>
#include <set>

namespace diffuflow {

namespace {

std::string ports_list(const std::vector<PortSpec>& ports) {
  std::string s;
  for (const auto& p : ports) s += (s.empty() ? "" : ", ") + p.name;
  return s.empty() ? "none" : s;
}

// A field that reaches a port, and the node that wrote it.
struct Written {
  FieldSpec spec;
  int node = -1;
};
using Available = std::map<std::string, Written>;

std::string fields_list(const Available& fields) {
  std::string s;
  for (const auto& [name, written] : fields) s += (s.empty() ? "" : ", ") + name;
  return s.empty() ? "nothing" : s;
}

// Adds what `from` holds to `into` (the first writer of a name stays); true when `into` grew.
bool merge(Available& into, const Available& from) {
  bool grew = false;
  for (const auto& [name, written] : from) grew |= into.emplace(name, written).second;
  return grew;
}

// Strongly connected components (Tarjan). Returns the component id of each vertex.
std::vector<int> components(const std::vector<std::vector<int>>& adjacency, int& count) {
  const int n = static_cast<int>(adjacency.size());
  std::vector<int> index(n, -1), low(n, 0), comp(n, -1), stack;
  std::vector<bool> on_stack(n, false);
  int next = 0;
  count = 0;
  std::function<void(int)> visit = [&](int v) {
    index[v] = low[v] = next++;
    stack.push_back(v);
    on_stack[v] = true;
    for (int w : adjacency[v]) {
      if (index[w] < 0) {
        visit(w);
        low[v] = std::min(low[v], low[w]);
      } else if (on_stack[w]) {
        low[v] = std::min(low[v], index[w]);
      }
    }
    if (low[v] == index[v]) {
      int w;
      do {
        w = stack.back();
        stack.pop_back();
        on_stack[w] = false;
        comp[w] = count;
      } while (w != v);
      ++count;
    }
  };
  for (int v = 0; v < n; ++v)
    if (index[v] < 0) visit(v);
  return comp;
}

// The fields a port reads or writes: the declared ones and those named by its field parameters.
std::vector<FieldSpec> port_fields(const PortSpec& port, const ParamValues& params) {
  std::vector<FieldSpec> fields = port.fields;
  for (const auto& p : port.field_params) {
    if (!params.has(p.param)) continue;
    auto add = [&](const std::string& name) {
      if (name.empty()) return;
      FieldSpec field = p.expects;
      field.name = name;
      fields.push_back(std::move(field));
    };
    const ParamValue& value = params.values().at(p.param);
    if (const auto* one = std::get_if<std::string>(&value)) {
      add(*one);
    } else if (const auto* many = std::get_if<std::vector<std::string>>(&value)) {
      for (const auto& f : *many) add(f);
    }
  }
  return fields;
}

}  // namespace

void validate_graph(const PipelineSpec& spec, std::vector<ConfigError>& errors) {
  const auto& registry = Registry::instance();
  const size_t n = spec.nodes.size();
  std::vector<const NodeContract*> contracts(n);
  std::vector<std::string> node_names;
  for (size_t i = 0; i < n; ++i) {
    contracts[i] = registry.node_contract(spec.nodes[i].type);
    node_names.push_back(spec.nodes[i].name);
  }

  // Edges: nodes and ports exist.
  std::vector<EdgeSpec> edges;
  for (EdgeSpec e : spec.edges) {
    const int from = spec.node_index(e.from_node);
    const int to = spec.node_index(e.to_node);
    bool ok = true;
    for (auto [endpoint, index] : {std::pair{e.from_node, from}, std::pair{e.to_node, to}}) {
      if (index < 0) {
        const std::string near = closest_match(endpoint, node_names);
        errors.emplace_back(e.where, "edge names node '" + endpoint + "', which is not in 'nodes'" +
                                         (near.empty() ? "" : " (did you mean '" + near + "'?)"));
        ok = false;
      }
    }
    if (!ok) continue;
    const NodeContract& src = *contracts[from];
    const NodeContract& dst = *contracts[to];
    if (src.outputs.empty()) {
      errors.emplace_back(e.where, "node '" + e.from_node + "' (" + src.type + ") has no output ports");
      continue;
    }
    if (dst.inputs.empty()) {
      errors.emplace_back(e.where, "node '" + e.to_node + "' (" + dst.type + ") is a source and has no input ports");
      continue;
    }
    if (e.from_port.empty()) e.from_port = src.outputs[0].name;
    if (e.to_port.empty()) e.to_port = dst.inputs[0].name;
    e.from_index = src.output_index(e.from_port);
    e.to_index = dst.input_index(e.to_port);
    if (e.from_index < 0) {
      errors.emplace_back(e.where, "node '" + e.from_node + "' (" + src.type + ") has no output port '" +
                                       e.from_port + "'; its outputs: " + ports_list(src.outputs));
      ok = false;
    }
    if (e.to_index < 0) {
      errors.emplace_back(e.where, "node '" + e.to_node + "' (" + dst.type + ") has no input port '" + e.to_port +
                                       "'; its inputs: " + ports_list(dst.inputs));
      ok = false;
    }
    if (ok) edges.push_back(e);
  }
  if (!errors.empty()) return;

  // Every input port is fed.
  for (size_t i = 0; i < n; ++i) {
    for (size_t p = 0; p < contracts[i]->inputs.size(); ++p) {
      const bool fed = std::any_of(edges.begin(), edges.end(), [&](const EdgeSpec& e) {
        return e.to_node == spec.nodes[i].name && e.to_index == static_cast<int>(p);
      });
      if (!fed) {
        errors.emplace_back(spec.nodes[i].where, "input port '" + contracts[i]->inputs[p].name + "' of node '" +
                                                     spec.nodes[i].name + "' has no incoming edge");
      }
    }
  }

  // Fields: what each input port can see is what upstream nodes write
  // (passthrough nodes forward what they received). Iterate to a fixpoint.
  std::vector<std::vector<Available>> avail_in(n), avail_out(n);
  for (size_t i = 0; i < n; ++i) {
    avail_in[i].resize(contracts[i]->inputs.size());
    avail_out[i].resize(contracts[i]->outputs.size());
  }
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t i = 0; i < n; ++i) {
      const NodeContract& c = *contracts[i];
      Available through;
      if (c.passthrough) {
        const size_t forwarded = c.type == kLimiterType ? 1 : c.inputs.size();
        for (size_t p = 0; p < forwarded; ++p) merge(through, avail_in[i][p]);
      }
      for (size_t p = 0; p < c.outputs.size(); ++p) {
        Available out;
        // A node's own writes replace what passes through under the same name.
        for (auto& f : port_fields(c.outputs[p], spec.nodes[i].params)) {
          const std::string field_name = f.name;
          out[field_name] = Written{std::move(f), static_cast<int>(i)};
        }
        merge(out, through);
        changed |= merge(avail_out[i][p], out);
      }
    }
    for (const auto& e : edges) {
      const int from = spec.node_index(e.from_node);
      const int to = spec.node_index(e.to_node);
      changed |= merge(avail_in[to][e.to_index], avail_out[from][e.from_index]);
    }
  }
  const bool device_is_host = spec.device == "cpu";
  for (size_t i = 0; i < n; ++i) {
    const NodeContract& c = *contracts[i];
    for (size_t p = 0; p < c.inputs.size(); ++p) {
      for (const auto& field : port_fields(c.inputs[p], spec.nodes[i].params)) {
        const std::string reader = "node '" + spec.nodes[i].name + "' (" + c.type + ") reads field '" + field.name +
                                   "' on input '" + c.inputs[p].name + "'";
        auto found = avail_in[i][p].find(field.name);
        if (found == avail_in[i][p].end()) {
          errors.emplace_back(spec.nodes[i].where, reader + ", but no upstream node writes it (upstream writes: " +
                                                       fields_list(avail_in[i][p]) + ")");
          continue;
        }
        const Written& written = found->second;
        const std::string why = field.mismatch(written.spec, device_is_host);
        if (why.empty()) continue;
        errors.emplace_back(spec.nodes[i].where, reader + " as " + field.describe() + ", but node '" +
                                                     spec.nodes[written.node].name + "' (" +
                                                     contracts[written.node]->type + ") writes it as " +
                                                     written.spec.describe());
      }
    }
  }

  // Cycles: each cycle must contain a limiter or be entered only downstream of one.
  std::vector<std::vector<int>> adjacency(n);
  for (const auto& e : edges) adjacency[spec.node_index(e.from_node)].push_back(spec.node_index(e.to_node));
  int count = 0;
  const std::vector<int> comp = components(adjacency, count);
  std::vector<bool> below_limiter(n, false);
  std::vector<int> frontier;
  for (size_t i = 0; i < n; ++i)
    if (contracts[i]->type == kLimiterType) frontier.push_back(static_cast<int>(i));
  while (!frontier.empty()) {
    const int v = frontier.back();
    frontier.pop_back();
    for (int w : adjacency[v]) {
      if (!below_limiter[w]) {
        below_limiter[w] = true;
        frontier.push_back(w);
      }
    }
  }
  for (int c = 0; c < count; ++c) {
    std::vector<int> members;
    for (size_t i = 0; i < n; ++i)
      if (comp[i] == c) members.push_back(static_cast<int>(i));
    const bool self_loop = members.size() == 1 && std::count(adjacency[members[0]].begin(),
                                                             adjacency[members[0]].end(), members[0]) > 0;
    if (members.size() < 2 && !self_loop) continue;
    const bool bounded = std::any_of(members.begin(), members.end(), [&](int v) {
      return contracts[v]->type == kLimiterType || below_limiter[v];
    });
    if (bounded) continue;
    std::string names;
    for (int v : members) names += (names.empty() ? "" : " -> ") + spec.nodes[v].name;
    errors.emplace_back(spec.nodes[members[0]].where,
                        "cycle without a limiter: " + names +
                            " (put a 'limiter' node on the cycle, or in front of it, to bound the packets in flight)");
  }
}

}  // namespace diffuflow
