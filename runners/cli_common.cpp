#include "runners/cli_common.hpp"

namespace diffuflow {

std::vector<Override> parse_overrides(const std::vector<std::string>& texts) {
  std::vector<Override> overrides;
  std::vector<ConfigError> errors;
  for (const auto& text : texts) {
    try {
      overrides.push_back(parse_override(text));
    } catch (const ConfigError& e) {
      errors.push_back(e);
    }
  }
  if (!errors.empty()) throw ConfigErrors(errors);
  return overrides;
}

PipelineSpec load_from_command_line(const ParsedOptions& options) {
  return load_pipeline(options.text("pipeline"), parse_overrides(options.texts("set")));
}

}  // namespace diffuflow
