// Pieces shared by the CLI subcommands.
#pragma once

#include "graph/spec.hpp"
#include "runners/options.hpp"

#include <string>
#include <vector>

namespace diffuflow {

// `--set` texts as overrides; ConfigErrors listing every malformed one.
std::vector<Override> parse_overrides(const std::vector<std::string>& texts);

// Loads and validates the pipeline named by the `pipeline` argument, applying --set.
PipelineSpec load_from_command_line(const ParsedOptions& options);

}  // namespace diffuflow
