// Pieces shared by the CLI subcommands.
#pragma once

#include "graph/spec.hpp"
#include "nodes/diffusion/guidance.hpp"
#include "runners/options.hpp"

#include <string>
#include <vector>

namespace diffuflow {

// `--set` texts as overrides; ConfigErrors listing every malformed one.
std::vector<Override> parse_overrides(const std::vector<std::string>& texts);

// Loads and validates the pipeline named by the `pipeline` argument, applying --set.
PipelineSpec load_from_command_line(const ParsedOptions& options);

// The OpenMP threads of each of the pipeline's `teams` teams sharing
// `threads`. More than one team is a ConfigError naming `teams` (in the
// pipeline's file) when they do not divide the threads, when OpenMP binding
// would put every team on the same cores, and where nothing would split: a
// device other than the CPU, or no unet_model resource.
int team_threads(const PipelineSpec& spec, int threads);

// What --class and --guidance ask of a model with `num_class_embeds` rows
// (0: unconditional), checked before anything runs: a class-conditional model
// draws --class (all classes by default) in cycle order; an unconditional one
// takes neither option. ConfigErrors name the option; `model` names the model.
struct ClassChoice {
  GuidanceOptions options;      // classes ("" when unconditional), guidance_scale, class_order cycle
  std::vector<int32_t> classes;  // the classes named, in order; empty when unconditional
  ClassGuidance guidance;        // the options checked against the model
};
ClassChoice class_choice_from(const ParsedOptions& options, int64_t num_class_embeds, const std::string& model);

}  // namespace diffuflow
