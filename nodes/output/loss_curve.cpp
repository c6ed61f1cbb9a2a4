#include "nodes/output/loss_curve.hpp"

#include "graph/registry.hpp"
#include "nodes/output/image_writer.hpp"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace diffuflow {

namespace {

constexpr int kMarginLeft = 80, kMarginRight = 20, kMarginTop = 36, kMarginBottom = 48;
constexpr int kTicks = 5;

std::string tick_label(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.3g", value);
  return text;
}

}  // namespace

cv::Mat draw_loss_curve(std::vector<std::pair<int64_t, double>> points, const LossCurveStyle& style) {
  cv::Mat image(style.height, style.width, CV_8UC3, cv::Scalar(255, 255, 255));
  std::sort(points.begin(), points.end());
  points.erase(std::remove_if(points.begin(), points.end(),
                              [&](const auto& p) { return !std::isfinite(p.second) || (style.log_y && p.second <= 0); }),
               points.end());
  const cv::Point origin(kMarginLeft, style.height - kMarginBottom);
  const int plot_w = std::max(1, style.width - kMarginLeft - kMarginRight);
  const int plot_h = std::max(1, style.height - kMarginTop - kMarginBottom);
  const cv::Scalar black(0, 0, 0), grey(200, 200, 200), blue(180, 90, 20);
  cv::putText(image, style.title + (style.log_y ? " (log scale)" : ""), cv::Point(kMarginLeft, 24),
              cv::FONT_HERSHEY_SIMPLEX, 0.6, black, 1, cv::LINE_AA);
  cv::putText(image, "step", cv::Point(kMarginLeft + plot_w / 2 - 16, style.height - 8), cv::FONT_HERSHEY_SIMPLEX,
              0.5, black, 1, cv::LINE_AA);

  double x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  auto y_of = [&](double v) { return style.log_y ? std::log10(v) : v; };
  if (!points.empty()) {
    x_lo = double(points.front().first);
    x_hi = double(points.back().first);
    y_lo = y_hi = y_of(points.front().second);
    for (const auto& p : points) {
      y_lo = std::min(y_lo, y_of(p.second));
      y_hi = std::max(y_hi, y_of(p.second));
    }
  }
  if (x_hi <= x_lo) x_hi = x_lo + 1;
  if (y_hi - y_lo < 1e-12) {
    y_lo -= 0.5;
    y_hi += 0.5;
  }
  auto to_pixel = [&](double x, double y) {
    return cv::Point(origin.x + int(std::lround((x - x_lo) / (x_hi - x_lo) * plot_w)),
                     origin.y - int(std::lround((y - y_lo) / (y_hi - y_lo) * plot_h)));
  };

  // Grid, ticks and their labels.
  for (int i = 0; i <= kTicks; ++i) {
    const double fy = y_lo + (y_hi - y_lo) * i / kTicks, fx = x_lo + (x_hi - x_lo) * i / kTicks;
    const cv::Point py = to_pixel(x_lo, fy), px = to_pixel(fx, y_lo);
    cv::line(image, py, cv::Point(origin.x + plot_w, py.y), cv::Scalar(235, 235, 235), 1);
    cv::putText(image, tick_label(style.log_y ? std::pow(10.0, fy) : fy), cv::Point(6, py.y + 4),
                cv::FONT_HERSHEY_SIMPLEX, 0.4, black, 1, cv::LINE_AA);
    cv::line(image, px, cv::Point(px.x, px.y + 4), black, 1);
    const std::string step_label = std::to_string(std::llround(fx));
    const int label_w = cv::getTextSize(step_label, cv::FONT_HERSHEY_SIMPLEX, 0.4, 1, nullptr).width;
    const int label_x = std::min(px.x - label_w / 2, style.width - label_w - 2);  // the last one stays inside
    cv::putText(image, step_label, cv::Point(label_x, px.y + 18), cv::FONT_HERSHEY_SIMPLEX, 0.4, black, 1,
                cv::LINE_AA);
  }
  cv::line(image, origin, cv::Point(origin.x + plot_w, origin.y), black, 1);
  cv::line(image, origin, cv::Point(origin.x, origin.y - plot_h), black, 1);

  // Raw values, then the EMA (bias-corrected, so the first points are not pulled to 0).
  std::vector<cv::Point> raw, smooth;
  double ema = 0, weight = 0;
  for (const auto& p : points) {
    raw.push_back(to_pixel(double(p.first), y_of(p.second)));
    ema = style.smoothing * ema + (1 - style.smoothing) * p.second;
    weight = style.smoothing * weight + (1 - style.smoothing);
    const double value = weight > 0 ? ema / weight : p.second;
    smooth.push_back(to_pixel(double(p.first), y_of(value)));
  }
  if (raw.size() == 1) cv::circle(image, raw[0], 2, blue, cv::FILLED);
  if (raw.size() > 1) {
    cv::polylines(image, raw, false, grey, 1, cv::LINE_AA);
    cv::polylines(image, smooth, false, blue, 2, cv::LINE_AA);
  }
  return image;
}

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
