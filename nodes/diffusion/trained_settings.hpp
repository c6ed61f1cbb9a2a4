// The settings a model is trained with (its noise schedule as a diffusers
// scheduler config, and what it predicts), carried from training to sampling:
// the training loss contributes them to the run's metadata, training
// checkpoints record them, and a sampler checks its own against those of the
// checkpoint its model's weights come from.
//
//   checkpoint __metadata__:
//     scheduler_config  {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", ...}
//     prediction_type   epsilon | v_prediction | sample
//
// Only the keys that fix what the model learned must agree: num_train_timesteps,
// beta_schedule, beta_start and beta_end (for the schedules that use them),
// trained_betas, rescale_betas_zero_snr and prediction_type. Spacing, clipping,
// thresholding and the step variance are sampling choices. A checkpoint without
// these entries (written by earlier versions) constrains nothing.
#pragma once

#include "graph/run_context.hpp"
#include "nodes/diffusion/scheduler_config.hpp"

#include <map>
#include <optional>
#include <string>

namespace diffuflow {

constexpr const char* kSchedulerConfigMetadata = "scheduler_config";
constexpr const char* kPredictionTypeMetadata = "prediction_type";

// Contributes `schedule` with prediction_type set to `prediction` to the run's metadata.
void record_trained_settings(RunContext& ctx, const SchedulerConfig& schedule, PredictionType prediction);

// The scheduler config (with its prediction_type) recorded in a checkpoint's
// metadata; nullopt when it records none. DataError naming `source` when the
// recorded text does not parse.
std::optional<SchedulerConfig> trained_settings_from(const std::map<std::string, std::string>& metadata,
                                                     const std::string& source);

// The first key in which `used` contradicts `trained` ("beta_schedule is
// squaredcos_cap_v2 in the checkpoint, linear here"); empty when they agree.
std::string trained_settings_difference(const SchedulerConfig& trained, const SchedulerConfig& used);

// ConfigError naming the key when `used` (what a sampler steps with)
// contradicts the settings recorded in the checkpoint the run's model was
// loaded from (the run's input metadata). `what` names the user, e.g. "sampler 'sampler'".
void check_trained_settings(const RunContext& ctx, const SchedulerConfig& used, const std::string& what);

}  // namespace diffuflow
