#include "nodes/diffusion/trained_settings.hpp"

#include "graph/errors.hpp"

#include <sstream>

namespace diffuflow {

namespace {

std::string number_text(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

bool uses_beta_range(const SchedulerConfig& c) {
  return c.trained_betas.empty() && c.beta_schedule != BetaSchedule::squaredcos_cap_v2;
}

}  // namespace

void record_trained_settings(RunContext& ctx, const SchedulerConfig& schedule, PredictionType prediction) {
  SchedulerConfig trained = schedule;
  trained.prediction_type = prediction;
  ctx.add_run_metadata(kSchedulerConfigMetadata, trained.to_json());
  ctx.add_run_metadata(kPredictionTypeMetadata, enum_name(prediction));
}

std::optional<SchedulerConfig> trained_settings_from(const std::map<std::string, std::string>& metadata,
                                                     const std::string& source) {
  auto it = metadata.find(kSchedulerConfigMetadata);
  if (it == metadata.end()) return std::nullopt;
  SchedulerConfig config;
  try {
    config = SchedulerConfig::from_text(it->second, source + " metadata scheduler_config");
  } catch (const ConfigError& e) {
    throw DataError(source, std::string("its scheduler_config metadata is not a valid scheduler config: ") + e.what());
  }
  auto pred = metadata.find(kPredictionTypeMetadata);
  if (pred != metadata.end()) {
    try {
      config.prediction_type = parse_enum<PredictionType>(pred->second, "prediction_type");
    } catch (const ConfigError& e) {
      throw DataError(source, std::string("its prediction_type metadata: ") + e.what());
    }
  }
  return config;
}

std::string trained_settings_difference(const SchedulerConfig& trained, const SchedulerConfig& used) {
  auto differ = [](const std::string& key, const std::string& a, const std::string& b) {
    return key + " is " + a + " in the checkpoint, " + b + " here";
  };
  if (trained.num_train_timesteps != used.num_train_timesteps) {
    return differ("num_train_timesteps", std::to_string(trained.num_train_timesteps),
                  std::to_string(used.num_train_timesteps));
  }
  if (trained.trained_betas.empty() != used.trained_betas.empty() || trained.trained_betas != used.trained_betas) {
    return differ("trained_betas", trained.trained_betas.empty() ? "null" : "a list",
                  used.trained_betas.empty() ? "null" : "another list");
  }
  if (trained.trained_betas.empty() && trained.beta_schedule != used.beta_schedule) {
    return differ("beta_schedule", enum_name(trained.beta_schedule), enum_name(used.beta_schedule));
  }
  if (uses_beta_range(trained)) {
    if (trained.beta_start != used.beta_start) {
      return differ("beta_start", number_text(trained.beta_start), number_text(used.beta_start));
    }
    if (trained.beta_end != used.beta_end) {
      return differ("beta_end", number_text(trained.beta_end), number_text(used.beta_end));
    }
  }
  if (trained.rescale_betas_zero_snr != used.rescale_betas_zero_snr) {
    return differ("rescale_betas_zero_snr", trained.rescale_betas_zero_snr ? "true" : "false",
                  used.rescale_betas_zero_snr ? "true" : "false");
  }
  if (trained.prediction_type != used.prediction_type) {
    return differ("prediction_type", enum_name(trained.prediction_type), enum_name(used.prediction_type));
  }
  return "";
}

void check_trained_settings(const RunContext& ctx, const SchedulerConfig& used, const std::string& what) {
  const auto schedule = ctx.input_metadata(kSchedulerConfigMetadata);
  if (!schedule) return;
  std::map<std::string, std::string> metadata{{kSchedulerConfigMetadata, schedule->value}};
  if (const auto prediction = ctx.input_metadata(kPredictionTypeMetadata)) {
    metadata.emplace(kPredictionTypeMetadata, prediction->value);
  }
  const SchedulerConfig trained = *trained_settings_from(metadata, schedule->source);
  const std::string difference = trained_settings_difference(trained, used);
  if (!difference.empty()) {
    throw ConfigError(SourceLocation{"", 0, 0, "schedule"},
                      what + ": the model was trained with another noise schedule than this pipeline's: " +
                          difference + " (" + schedule->source +
                          "); use the checkpoint's settings (diffuflow sample reads them) or a matching schedule");
  }
}

}  // namespace diffuflow
