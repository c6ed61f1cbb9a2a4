// loss_curve: plots the `loss` of every packet it receives as loss_curve.png
// in the output folder: the raw values in light grey, an exponential moving
// average on top, axes with tick labels, optionally a log-scale y axis.
//
// Example config:
//   - name: curve
//     type: loss_curve
//     params: {every: 200, smoothing: 0.98, log_y: true}
//
// in: loss (number), one per packet; the packet's seq is the x axis (step)
//
// The picture is rewritten every `every` packets (0: only at the end) and at
// finish(), under a temporary name then renamed, so a reader never sees half a
// PNG. With an empty out_dir (validation, tests) nothing is written. Host-only.
#pragma once

#include "graph/node.hpp"
#include "nodes/common/plots.hpp"

#include <filesystem>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace diffuflow {

class LossCurve : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, every, 100, "rewrite the plot every N packets (0: only at the end)", .range(0, 1e9));
    DIFFUFLOW_PARAM(std::string, file, "loss_curve.png", "file name inside the output folder");
    DIFFUFLOW_PARAM_GROUP(LossCurveStyle, style, LossCurveStyle{});  // smoothing, log_y, width, height
  };

  static NodeContract contract();
  LossCurve(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;
  void finish() override;

  // Where the plot goes (empty without an out_dir).
  std::filesystem::path file();

 private:
  void write();

  Params params_;
  std::mutex mutex_;
  std::vector<std::pair<int64_t, double>> points_;
};

}  // namespace diffuflow
