// The registry described for people, from the same contracts and parameter
// tables that validate pipelines: `diffuflow nodes` prints the plain text,
// `diffuflow nodes --markdown` the Markdown catalogue committed as
// docs/nodes.md (a test keeps the two equal).
#pragma once

#include "graph/node.hpp"
#include "graph/resource.hpp"

#include <string>

namespace diffuflow {

// Plain text: name and tags, doc, ports with each field's type, parameters, example.
std::string node_text(const NodeContract& contract);
std::string resource_text(const ResourceContract& contract);

// One Markdown section per type.
std::string node_markdown(const NodeContract& contract);
std::string resource_markdown(const ResourceContract& contract);

// The whole catalogue: title, how it is generated, an index, every node type, then every resource type.
std::string catalogue_markdown();

// How to regenerate docs/nodes.md.
inline constexpr const char* kCatalogueCommand = "./build/diffuflow nodes --markdown > docs/nodes.md";

}  // namespace diffuflow
