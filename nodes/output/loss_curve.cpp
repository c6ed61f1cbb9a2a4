#include "nodes/output/loss_curve.hpp"

#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/common/images.hpp"
#include "nodes/common/plots.hpp"

namespace diffuflow {

NodeContract LossCurve::contract() {
  NodeContract c;
  c.doc = "Plots the loss per step (raw and EMA-smoothed, optional log y axis) as a PNG in the output folder.";
  c.example = "{name: curve, type: loss_curve, params: {every: 200, smoothing: 0.98, log_y: true}}";
  c.inputs = {{"in", {fields::kLoss}, "loss (number) of the step seq"}};
  c.max_concurrency = 1;
  return c;
}

LossCurve::LossCurve(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {}

std::filesystem::path LossCurve::file() {
  if (ctx().out_dir().empty()) return {};
  return ctx().out_dir() / params_.file;
}

void LossCurve::process(const NodeInput& in, Emitter& out) {
  std::lock_guard<std::mutex> lock(mutex_);
  points_.emplace_back(in.seq(), in.packet().get(fields::kLoss));
  if (params_.every > 0 && points_.size() % static_cast<size_t>(params_.every) == 0) write();
}

void LossCurve::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  write();
}

void LossCurve::write() {
  const auto path = file();
  if (path.empty()) return;
  write_png_atomic(draw_loss_curve(points_, params_.style), path);
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(loss_curve, diffuflow::LossCurve);
