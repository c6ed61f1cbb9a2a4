// Resource: an object several nodes share (model weights, optimiser state, a
// noise schedule), declared once under `resources:` and looked up by name:
//
//   resources:
//     - name: schedule
//       type: noise_schedule
//       params: {kind: linear, timesteps: 1000}
//
//   DIFFUFLOW_REGISTER_RESOURCE(noise_schedule, NoiseSchedule)
//
// where NoiseSchedule has `static ResourceContract contract();`, optionally a
// nested parameter struct `Params` (graph/param_table.hpp) and a
// `static void check(const Params&)` (or `check(const Params&, const
// PipelineFacts&)`) run at validation, and a constructor
// `NoiseSchedule(const ResourceConfig&, RunContext&)`.
#pragma once

#include "graph/param_table.hpp"
#include "graph/run_context.hpp"

#include <functional>
#include <string>
#include <vector>

namespace diffuflow {

// What a resource's check may know of the pipeline beyond its own parameters.
struct PipelineFacts {
  bool deterministic = false;  // the pipeline's `deterministic:`
};

struct ResourceContract {
  std::string type;  // filled in by the registration macro
  std::string doc;
  // What the resource provides beyond its own type, so that a parameter can
  // accept any resource of that kind: a ParamSpec::resource("model", "model", ...)
  // accepts a unet_model as well as an mlp_model, both of kind "model".
  std::string kind;
  std::vector<ParamSpec> params;  // filled in by the registration macro from the resource's `Params`
  // Extra checks after the table has resolved (cross-parameter rules, a
  // config file that must exist and parse): the resource's static check(),
  // wrapped by the registration macro. Throws ConfigError; the validator
  // attaches the resource's location.
  std::function<void(const ParamValues& params, const PipelineFacts& pipeline)> check;
};

struct ResourceConfig {
  std::string name;
  std::string type;
  ParamValues params;

  template <typename S>
  S params_as() const {
    return params_from<S>(params);
  }
};

class Resource {
 public:
  virtual ~Resource() = default;
};

}  // namespace diffuflow
