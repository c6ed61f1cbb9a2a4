// The node catalogue: `diffuflow nodes` shows each field's type, and the
// committed docs/nodes.md is exactly what `diffuflow nodes --markdown` prints.
#include "graph/registry.hpp"
#include "runners/catalogue.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <sstream>

using namespace diffuflow;
using namespace diffuflow::test;

namespace {


std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

TEST_CASE("docs/nodes.md is what `diffuflow nodes --markdown` prints") {
  const auto printed = run_cli("nodes --markdown");
  REQUIRE(printed.exit_code == 0);
  const std::string committed = read_file(source_dir() / "docs" / "nodes.md");
  if (committed == printed.output) return;
  // Say where they part, and how to fix it.
  const auto want = lines_of(printed.output), have = lines_of(committed);
  size_t line = 0;
  while (line < want.size() && line < have.size() && want[line] == have[line]) ++line;
  const std::string registry_line = line < want.size() ? want[line] : "(end of file)";
  const std::string file_line = line < have.size() ? have[line] : "(end of file)";
  FAIL_CHECK("docs/nodes.md is out of date at line " << line + 1 << ":\n  docs/nodes.md: " << file_line
                                                     << "\n  the registry:  " << registry_line
                                                     << "\nregenerate it from the repository root with\n  "
                                                     << std::string(kCatalogueCommand));
}

TEST_CASE("the Markdown catalogue documents every node and resource type in full") {
  const std::string md = catalogue_markdown();
  CHECK(md.rfind("# Node catalogue\n", 0) == 0);
  CHECK(contains(md, "`diffuflow nodes --markdown`"));
  CHECK(contains(md, kCatalogueCommand));
  const auto& registry = Registry::instance();
  for (const auto& type : registry.node_types()) {
    CAPTURE(type);
    const NodeContract& c = *registry.node_contract(type);
    CHECK(contains(md, "### `" + type + "`\n"));
    CHECK(contains(md, c.doc));
    for (const auto& port : c.inputs) CHECK(contains(md, "**Input `" + port.name + "`**"));
    for (const auto& port : c.outputs) CHECK(contains(md, "**Output `" + port.name + "`**"));
    for (const auto& p : c.params) CHECK(contains(md, "| `" + p.name + "` |"));
    if (!c.example.empty()) CHECK(contains(md, "  - " + c.example + "\n```"));
  }
  for (const auto& type : registry.resource_types()) {
    CAPTURE(type);
    CHECK(contains(md, "### `" + type + "`\n"));
    CHECK(contains(md, "[`" + type + "`](#" + type + ")"));
  }
  // Field types come from the field declarations.
  CHECK(contains(md, "| `x0` | f32 tensor of rank 4 on the host |"));
  CHECK(contains(md, "Tags: **device**"));
  CHECK(contains(md, "Tags: **source**"));
}

TEST_CASE("diffuflow nodes shows the type of every field a port reads or writes") {
  const auto nodes = run_cli("nodes synthetic_source");
  CAPTURE(nodes.output);
  REQUIRE(nodes.exit_code == 0);
  CHECK(contains(nodes.output, "synthetic_source  [source]"));
  CHECK(contains(nodes.output, "        x0: f32 tensor of rank 4 on the host\n"));
  CHECK(contains(nodes.output, "batch_size (int in [1, 65536]), default 64"));
  const NodeContract& c = *Registry::instance().node_contract("synthetic_source");
  for (const auto& port : c.outputs)
    for (const auto& f : port.fields) CHECK(contains(nodes.output, f.name + ": " + f.describe() + "\n"));

  const auto one = run_cli("nodes --markdown augment");
  CHECK(one.exit_code == 0);
  CHECK(one.output.rfind("### `augment`\n", 0) == 0);  // one section, no title
}
