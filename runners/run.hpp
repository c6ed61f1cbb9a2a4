// Running a pipeline as `diffuflow run` does (output folder, progress line,
// profile, signals, exit code), for the commands that build a pipeline
// themselves (`diffuflow sample`).
#pragma once

#include "graph/spec.hpp"

#include <optional>
#include <string>

namespace diffuflow {

struct RunSettings {
  std::string out;     // the run's folder; empty: runs/<pipeline>-<timestamp>
  std::string device;  // empty: the pipeline's
  std::optional<int> threads;  // overrides the pipeline's
  std::optional<int> teams;    // overrides the pipeline's
  int prefetch = 4;
  double max_time_s = 0;  // 0: none
  long long max_steps = -1;
  std::string trace_file;
  std::string resume;  // a checkpoint to resume from; empty: none
  double progress_s = 10;
  bool quiet = false;
};

// Validated `spec`, run with `settings`; returns the exit code (128 + signal when stopped by one).
int run_spec(PipelineSpec spec, const RunSettings& settings);

}  // namespace diffuflow
