#include "runners/cli_common.hpp"

#include "graph/device.hpp"
#include "graph/errors.hpp"
#include "graph/openmp_policy.hpp"
#include "nodes/common/class_labels.hpp"

namespace diffuflow {

int team_threads(const PipelineSpec& spec, int threads) {
  const int teams = spec.teams;
  const std::string& file = spec.file;
  if (teams == 1) return threads;
  if (DeviceSpec::parse(spec.device).kind != DeviceKind::cpu) {
    throw ConfigError(SourceLocation{file, 0, 0, "teams"},
                      "teams split the U-Net's batch among OpenMP teams on the CPU; on device " + spec.device +
                          " the model runs on the GPU: leave teams at 1");
  }
  bool unet = false;
  for (const auto& r : spec.resources) unet = unet || r.type == "unet_model";
  if (!unet) {
    throw ConfigError(SourceLocation{file, 0, 0, "teams"},
                      "teams split a unet_model's batch, and this pipeline has none: leave teams at 1 (the other "
                      "nodes would only run on fewer threads)");
  }
  const std::string problem = teams_problem(threads, teams);
  if (!problem.empty()) throw ConfigError(SourceLocation{file, 0, 0, "teams"}, problem);
  return threads / teams;
}

ClassChoice class_choice_from(const ParsedOptions& options, int64_t num_class_embeds, const std::string& model) {
  ClassChoice choice;
  const bool given_class = options.has("class");
  const double scale = options.number("guidance");
  if (num_class_embeds <= 0) {
    if (given_class || scale != 1.0) {
      throw ConfigError(SourceLocation{given_class ? "--class" : "--guidance", 0, 0, ""},
                        "'" + model + "' is not class-conditional (no class embedding): --class and --guidance need "
                        "a model trained with labels (docs/conditioning.md)");
    }
    return choice;
  }
  choice.options.classes = given_class ? options.text("class") : "all";
  choice.options.guidance_scale = scale;
  choice.options.class_order = ClassOrder::cycle;
  try {
    choice.classes = parse_class_choice(choice.options.classes, real_class_count(num_class_embeds), "--class");
    choice.guidance = ClassGuidance(choice.options, num_class_embeds, "'" + model + "'");
  } catch (const ConfigError& e) {  // the message names --class already
    throw ConfigError(SourceLocation{}, e.message());
  }
  return choice;
}

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
