// Pieces shared by the CLI subcommands.
#pragma once

#include "graph/spec.hpp"

#include <boost/program_options.hpp>

#include <string>
#include <vector>

namespace diffuflow {

// Parses `args` with `options` (and one positional pipeline file when
// `positional` is non-empty). Throws ConfigError with a clear message on a
// malformed command line. Returns false when --help was asked (help printed).
bool parse_command_line(const std::vector<std::string>& args, boost::program_options::options_description& options,
                        boost::program_options::variables_map& vm, const std::string& usage,
                        const std::string& positional = "pipeline");

// Loads and validates the pipeline named by vm["pipeline"], applying --set.
PipelineSpec load_from_command_line(const boost::program_options::variables_map& vm);

}  // namespace diffuflow
