// `diffuflow validate`, `diffuflow nodes` and `diffuflow graph`: look at
// pipelines and node types without running anything.
#include "graph/registry.hpp"
#include "runners/catalogue.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <iostream>

namespace diffuflow {

namespace {

OptionTable validate_options() { return {shared::pipeline_file(), shared::set_overrides()}; }

int run_validate(const ParsedOptions& options) {
  const PipelineSpec spec = load_from_command_line(options);
  std::cout << spec.file << ": ok (pipeline '" << spec.name << "', " << spec.nodes.size() << " nodes, "
            << spec.edges.size() << " edges, " << spec.resources.size() << " resources)\n";
  return kExitOk;
}

OptionTable nodes_options() {
  return {OptionSpec::positional("type", "TYPE", "only this node or resource type").optional(),
          OptionSpec::flag("markdown", "print Markdown: without TYPE the whole catalogue, as in docs/nodes.md")};
}

int run_nodes_command(const ParsedOptions& options) {
  const auto& registry = Registry::instance();
  const bool markdown = options.flag("markdown");
  const std::string only = options.has("type") ? options.text("type") : "";
  if (only.empty() && markdown) {
    std::cout << catalogue_markdown();
    return kExitOk;
  }
  if (!only.empty() && !registry.node_contract(only) && !registry.resource_contract(only)) {
    auto names = registry.node_types();
    for (const auto& r : registry.resource_types()) names.push_back(r);
    const std::string near = closest_match(only, names);
    throw ConfigError(SourceLocation{"command line", 0, 0, ""},
                      "unknown node or resource type '" + only + "'" +
                          (near.empty() ? "" : " (did you mean '" + near + "'?)"));
  }
  for (const auto& type : registry.node_types()) {
    if (!only.empty() && type != only) continue;
    const NodeContract& c = *registry.node_contract(type);
    std::cout << (markdown ? node_markdown(c) : node_text(c) + "\n");
  }
  for (const auto& type : registry.resource_types()) {
    if (!only.empty() && type != only) continue;
    const ResourceContract& c = *registry.resource_contract(type);
    std::cout << (markdown ? resource_markdown(c) : resource_text(c) + "\n");
  }
  return kExitOk;
}

std::string dot_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

OptionTable graph_options() { return {shared::pipeline_file(), shared::set_overrides()}; }

int run_graph(const ParsedOptions& options) {
  const PipelineSpec spec = load_from_command_line(options);
  const auto& registry = Registry::instance();
  std::cout << "digraph \"" << dot_escape(spec.name) << "\" {\n  rankdir=LR;\n  node [shape=box, style=rounded, "
            << "fontname=\"Helvetica\"];\n";
  for (const auto& n : spec.nodes) {
    const NodeContract& c = *registry.node_contract(n.type);
    std::string shape = c.type == "limiter" ? ", shape=diamond" : c.is_source() ? ", shape=folder" : "";
    std::string color = c.host_only ? "" : ", color=\"#1f77b4\", penwidth=2";
    std::cout << "  \"" << dot_escape(n.name) << "\" [label=\"" << dot_escape(n.name) << "\\n" << dot_escape(n.type)
              << (n.concurrency != 1 ? "\\nx" + std::to_string(n.concurrency) : "") << "\"" << shape << color
              << "];\n";
  }
  for (const auto& e : spec.edges) {
    const NodeContract& src = *registry.node_contract(spec.nodes[spec.node_index(e.from_node)].type);
    const NodeContract& dst = *registry.node_contract(spec.nodes[spec.node_index(e.to_node)].type);
    const std::string from_port = e.from_port.empty() ? src.outputs.at(0).name : e.from_port;
    const std::string to_port = e.to_port.empty() ? dst.inputs.at(0).name : e.to_port;
    std::cout << "  \"" << dot_escape(e.from_node) << "\" -> \"" << dot_escape(e.to_node) << "\" [label=\""
              << dot_escape(from_port + " -> " + to_port) << "\"" << (to_port == "decrement" ? ", style=dashed" : "")
              << "];\n";
  }
  std::cout << "}\n";
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(validate,
                           "check a pipeline (syntax, types, params, edges, fields, cycles) without running it",
                           validate_options(), run_validate);
DIFFUFLOW_REGISTER_COMMAND(nodes, "list every registered node and resource type with its ports, fields, params and docs",
                           nodes_options(), run_nodes_command);
DIFFUFLOW_REGISTER_COMMAND(graph, "print the pipeline as Graphviz dot (diffuflow graph P.yaml > P.dot)", graph_options(),
                           run_graph);

}  // namespace diffuflow
