#include "nodes/output/loss_curve.hpp"

#include "graph/registry.hpp"
#include "nodes/common/images.hpp"
#include "nodes/common/plots.hpp"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace diffuflow {

NodeContract LossCurve::contract() {
  NodeContract c;
  c.doc = "Plots the loss per step (raw and EMA-smoothed, optional log y axis) as a PNG in the output folder.";
  c.example = "{name: curve, type: loss_curve, params: {every: 200, smoothing: 0.98, log_y: true}}";
  c.params = {ParamSpec::integer("every", 100, "rewrite the plot every N packets (0: only at the end)").range(0, 1e9),
              ParamSpec::text("file", "loss_curve.png", "file name inside the output folder"),
              ParamSpec::number("smoothing", 0.98, "EMA factor of the smoothed curve").range(0.0, 0.9999),
              ParamSpec::boolean("log_y", true, "logarithmic loss axis"),
              ParamSpec::integer("width", 800, "picture width in pixels").range(200, 8192),
              ParamSpec::integer("height", 480, "picture height in pixels").range(150, 8192)};
  c.inputs = {{"in", {"loss"}, "loss (number) of the step seq"}};
  c.max_concurrency = 1;
  return c;
}

LossCurve::LossCurve(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {
  params_.every = config.params.integer("every");
  params_.file = config.params.text("file");
  params_.style.smoothing = config.params.number("smoothing");
  params_.style.log_y = config.params.boolean("log_y");
  params_.style.width = static_cast<int>(config.params.integer("width"));
  params_.style.height = static_cast<int>(config.params.integer("height"));
}

std::filesystem::path LossCurve::file() {
  if (ctx().out_dir().empty()) return {};
  return ctx().out_dir() / params_.file;
}

void LossCurve::process(const NodeInput& in, Emitter& out) {
  std::lock_guard<std::mutex> lock(mutex_);
  points_.emplace_back(in.seq(), in.packet().number("loss"));
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
