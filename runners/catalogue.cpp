#include "runners/catalogue.hpp"

#include "graph/registry.hpp"

#include <sstream>
#include <vector>

namespace diffuflow {

namespace {

std::vector<std::string> tags_of(const NodeContract& c) {
  std::vector<std::string> tags;
  if (!c.host_only) tags.push_back("device");
  if (c.is_source()) tags.push_back("source");
  if (c.max_concurrency == 1) tags.push_back("serial");
  if (c.input_policy == InputPolicy::any && c.inputs.size() > 1) tags.push_back("any input");
  return tags;
}

std::string default_str(const ParamSpec& p) {
  if (p.is_required) return "required";
  const std::string v = param_value_str(p.default_value);
  return v.empty() ? "\"\"" : v;
}

// What a field-naming parameter's fields must hold.
std::string field_param_type(const FieldParam& fp) {
  return fp.expects.kind == FieldKind::any ? std::string("any value") : fp.expects.describe();
}

// ---- plain text ---------------------------------------------------------------------------------

void print_params(std::ostream& out, const std::vector<ParamSpec>& params) {
  if (!params.empty()) out << "  params:\n";
  for (const auto& p : params) {
    out << "    " << p.name << " (" << p.type_description() << ")";
    if (p.is_required)
      out << ", required";
    else
      out << ", default " << default_str(p);
    out << ": " << p.doc << "\n";
  }
}

void print_port(std::ostream& out, const char* direction, const PortSpec& port, bool input) {
  out << "  " << direction << " " << port.name << " -- " << port.doc << "\n";
  for (const auto& f : port.fields) out << "        " << f.name << ": " << f.describe() << "\n";
  for (const auto& fp : port.field_params)
    out << "        the fields named by '" << fp.param << "': " << field_param_type(fp) << "\n";
  if (port.fields.empty() && port.field_params.empty())
    out << "        " << (input ? "(any fields)" : "(no new fields)") << "\n";
}

// ---- Markdown -----------------------------------------------------------------------------------

// Table cells: a literal '|' would end the cell, a line break the row.
std::string md_cell(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += '\\';
    out += c == '\n' ? ' ' : c;
  }
  return out;
}

std::string md_code(const std::string& text) { return "`" + md_cell(text) + "`"; }

void md_params(std::ostream& out, const std::vector<ParamSpec>& params) {
  if (params.empty()) {
    out << "**Parameters**: none.\n\n";
    return;
  }
  out << "**Parameters**\n\n| param | type | default | doc |\n|---|---|---|---|\n";
  for (const auto& p : params) {
    out << "| " << md_code(p.name) << " | " << md_cell(p.type_description()) << " | "
        << (p.is_required ? std::string("required") : md_code(default_str(p))) << " | " << md_cell(p.doc) << " |\n";
  }
  out << "\n";
}

void md_port(std::ostream& out, const char* direction, const PortSpec& port, bool input) {
  out << "**" << direction << " " << md_code(port.name) << "**: " << port.doc << "\n\n";
  if (port.fields.empty() && port.field_params.empty()) {
    out << (input ? "Reads no particular field.\n\n" : "Writes no new field.\n\n");
    return;
  }
  out << "| field | type | doc |\n|---|---|---|\n";
  for (const auto& f : port.fields)
    out << "| " << md_code(f.name) << " | " << md_cell(f.describe()) << " | " << md_cell(f.doc) << " |\n";
  for (const auto& fp : port.field_params) {
    out << "| the fields named by " << md_code(fp.param) << " | " << md_cell(field_param_type(fp)) << " | "
        << md_cell(fp.expects.doc) << " |\n";
  }
  out << "\n";
}

}  // namespace

std::string node_text(const NodeContract& c) {
  std::ostringstream out;
  out << c.type;
  for (const auto& tag : tags_of(c)) out << "  [" << tag << "]";
  out << "\n  " << c.doc << "\n";
  for (const auto& p : c.inputs) print_port(out, "in ", p, true);
  for (const auto& p : c.outputs) print_port(out, "out", p, false);
  print_params(out, c.params);
  if (!c.example.empty()) out << "  example: " << c.example << "\n";
  return out.str();
}

std::string resource_text(const ResourceContract& c) {
  std::ostringstream out;
  out << c.type << "  [resource]" << (c.kind.empty() ? "" : "  [kind " + c.kind + "]") << "\n  " << c.doc << "\n";
  print_params(out, c.params);
  return out.str();
}

std::string node_markdown(const NodeContract& c) {
  std::ostringstream out;
  out << "### " << md_code(c.type) << "\n\n";
  const auto tags = tags_of(c);
  if (!tags.empty()) {
    out << "Tags:";
    for (size_t i = 0; i < tags.size(); ++i) out << (i ? ", " : " ") << "**" << tags[i] << "**";
    out << "\n\n";
  }
  out << c.doc << "\n\n";
  for (const auto& p : c.inputs) md_port(out, "Input", p, true);
  for (const auto& p : c.outputs) md_port(out, "Output", p, false);
  if (!c.is_source() && !c.outputs.empty() && c.passthrough) out << "Output packets keep the input's fields.\n\n";
  md_params(out, c.params);
  if (!c.example.empty()) out << "**Example**\n\n```yaml\nnodes:\n  - " << c.example << "\n```\n\n";
  return out.str();
}

std::string resource_markdown(const ResourceContract& c) {
  std::ostringstream out;
  out << "### " << md_code(c.type) << "\n\n";
  if (!c.kind.empty()) {
    out << "Kind: " << md_code(c.kind) << " (a parameter that asks for a " << c.kind
        << " resource accepts this type)\n\n";
  }
  out << c.doc << "\n\n";
  md_params(out, c.params);
  return out.str();
}

std::string catalogue_markdown() {
  const auto& registry = Registry::instance();
  const auto nodes = registry.node_types();
  const auto resources = registry.resource_types();
  std::ostringstream out;
  out << "# Node catalogue\n\n"
      << "Generated from the node registry by `diffuflow nodes --markdown`, from the same contracts and parameter "
         "tables that validate pipelines, check `--set` and print `diffuflow nodes`. Do not edit it by hand: after "
         "changing a node or resource, regenerate it with\n\n"
      << "```\n" << kCatalogueCommand << "\n```\n\n"
      << "A test fails while this file differs from what the registry prints.\n\n"
      << "Tags: **device**: the node's work runs as oneDNN primitives on the compute thread (the others run on "
         "oneTBB workers); **source**: the node has no inputs and starts packets; **serial**: its `concurrency` "
         "must be 1; **any input**: each packet is processed as it arrives, on whichever port (otherwise a node "
         "with several inputs waits for one packet per port with the same step).\n\n"
      << "Field types say what a port reads or writes: the element type, rank and place (host or the pipeline's "
         "device) of a tensor, or a number, integer or string. Validation refuses a field read as another type "
         "than it is written.\n\n";
  out << "Nodes:";
  for (size_t i = 0; i < nodes.size(); ++i) out << (i ? "," : "") << " [`" << nodes[i] << "`](#" << nodes[i] << ")";
  out << ".\n\nResources:";
  for (size_t i = 0; i < resources.size(); ++i)
    out << (i ? "," : "") << " [`" << resources[i] << "`](#" << resources[i] << ")";
  out << ".\n\n## Nodes\n\n";
  for (const auto& type : nodes) out << node_markdown(*registry.node_contract(type));
  out << "## Resources\n\n";
  for (const auto& type : resources) out << resource_markdown(*registry.resource_contract(type));
  std::string text = out.str();
  while (text.size() > 1 && text[text.size() - 1] == '\n' && text[text.size() - 2] == '\n') text.pop_back();
  return text;
}

}  // namespace diffuflow
