// Plots drawn with OpenCV as BGR images: line charts (benchmark sweeps and any
// other "y against x" picture), loss curves, and scatter plots of 2-D points.
//
// draw_line_plot: one or more series, each point with an optional error bar
// (lo..hi), axes with tick labels, a title and axis names.
//
//   LineSeries s{"train", {1, 2}, {40.5, 77.9}, {39.8, 76.0}, {41.0, 78.3}};
//   LinePlotStyle style;
//   style.title = "bench train: unet-s, batch 64";
//   style.x_label = "threads";
//   style.y_label = "images/s";
//   write_png_atomic(draw_line_plot({s}, style), "threads.png");
//
// x values are placed on a linear axis, or evenly spaced in the order given
// when `categorical_x` is set (a sweep over 16, 32, 64, 128 reads better so);
// the y axis starts at 0 unless `y_from_zero` is false. Non-finite points are skipped.
//
// Both charts share one set of axes: ticks at round values (1, 2 or 5 x 10^k
// apart on linear axes, decades on log axes), labels in one notation per axis,
// and a legend in the corner of the plot area that covers no data (right of
// the plot area when every corner holds some).
#pragma once

#include "graph/param_table.hpp"

#include <opencv2/core.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace diffuflow {

struct LineSeries {
  std::string label;
  std::vector<double> x;
  std::vector<double> y;
  std::vector<double> y_lo;  // empty, or one per point: the bottom of the error bar
  std::vector<double> y_hi;  // empty, or one per point: the top of the error bar
};

struct LinePlotStyle {
  int width = 800;
  int height = 480;
  std::string title;
  std::string x_label = "x";
  std::string y_label = "y";
  bool y_from_zero = true;
  bool categorical_x = false;
};

// A BGR image of style.width x style.height.
cv::Mat draw_line_plot(const std::vector<LineSeries>& series, const LinePlotStyle& style);

// Roofline charts: achieved rate (GFLOP/s) against arithmetic intensity
// (FLOP per byte moved) on log-log axes, under the two roofs that bound it:
// memory (bandwidth x intensity) and compute (the peak rate). Each series is
// a set of named points (say, one per layer kind) with its own colour and
// marker; every point is labelled with its name. Points with a non-positive
// or non-finite coordinate cannot sit on log axes and are skipped.
//
//   RooflineSeries fwd{"forward", {{"convolution", 34.0, 170.0}, {"group_norm", 0.12, 1.1}}};
//   RooflineStyle style;
//   style.bandwidth = 28.8;   // GB/s: the memory roof
//   style.peak = 352.0;       // GFLOP/s: the compute roof
//   write_png_atomic(draw_roofline({fwd}, style), "roofline.png");
struct RooflinePoint {
  std::string label;
  double intensity = 0;  // FLOP/byte
  double rate = 0;       // GFLOP/s
};

struct RooflineSeries {
  std::string label;
  std::vector<RooflinePoint> points;
};

struct RooflineStyle {
  int width = 900;
  int height = 600;
  std::string title;
  std::string x_label = "arithmetic intensity (FLOP/byte)";
  std::string y_label = "GFLOP/s";
  double bandwidth = 0;         // the memory roof's slope (GB/s); <= 0: none drawn
  double peak = 0;              // the compute roof (GFLOP/s); <= 0: none drawn
  std::string bandwidth_label;  // their legend entries; empty: "memory roof 28.8 GB/s", "compute roof 352 GFLOP/s"
  std::string peak_label;
};

// The roof over `intensity`: min(peak, bandwidth x intensity), either bound
// left out when it is <= 0 (0 when both are).
double roofline_bound(double intensity, double bandwidth, double peak);

// A BGR image of style.width x style.height.
cv::Mat draw_roofline(const std::vector<RooflineSeries>& series, const RooflineStyle& style);

// Loss curves: the raw values in light grey, an exponential moving average on
// top. Also the loss_curve node's parameters (a parameter group).
struct LossCurveStyle {
  DIFFUFLOW_PARAMS(LossCurveStyle);
  // EMA factor: ema = s * ema + (1 - s) * loss
  DIFFUFLOW_PARAM(double, smoothing, 0.98, "EMA factor of the smoothed curve", .range(0.0, 0.9999));
  DIFFUFLOW_PARAM(bool, log_y, true, "logarithmic loss axis");
  DIFFUFLOW_PARAM(int, width, 800, "picture width in pixels", .range(200, 8192));
  DIFFUFLOW_PARAM(int, height, 480, "picture height in pixels", .range(150, 8192));
  std::string title = "loss";
};

// Draws (step, loss) points, sorted by step, as a BGR image of style.width x style.height.
// Non-finite values (and values <= 0 on a log axis) are skipped.
cv::Mat draw_loss_curve(std::vector<std::pair<int64_t, double>> points, const LossCurveStyle& style);

// One square panel of `size` pixels showing interleaved x,y pairs on the axes
// [-limit, limit]^2 (points outside are clamped to the border), BGR.
cv::Mat draw_scatter(const std::vector<float>& xy, float limit, int size, const std::string& title = "");

// A row of K panels for a chain field [N,K,2,...]: panel k shows point k of every row.
cv::Mat draw_scatter_chain(const std::vector<float>& values, int64_t n, int64_t k, float limit, int size);

// --- axes (the pieces the charts above are made of) ------------------------

// Round tick values inside [lo, hi]: the multiples of a step of 1, 2 or 5 x 10^k
// that gives the number of intervals closest to `target`.
//   nice_ticks(0, 2) -> 0, 0.5, 1, 1.5, 2
std::vector<double> nice_ticks(double lo, double hi, int target = 5);

// Labelled ticks of a log axis inside [lo, hi] (0 < lo < hi): the decades when
// three or more fall inside (every other decade, or fewer, past eight), else
// 1, 2 and 5 x 10^k when three or more fall inside, else nice_ticks.
//   log_ticks(0.003, 2) -> 0.01, 0.1, 1      log_ticks(0.05, 1) -> 0.05, 0.1, 0.2, 0.5, 1
std::vector<double> log_ticks(double lo, double hi);

// The labels of one axis's ticks, in one notation: fixed ("0.02", "150")
// unless some value is below 1e-3 or at least 1e6 in magnitude, then
// scientific for all ("2e-4", "1.5e6"); zero is "0". With `same_decimals`
// (linear axes) every fixed label has as many decimals as the finest one
// needs ("0.5", "1.0", "1.5").
std::vector<std::string> tick_labels(const std::vector<double>& ticks, bool same_decimals);

// Where a legend goes: the corner of the plot area whose box of `size`
// (fractions of the plot area's width and height) holds the fewest ink points
// (fractions too, y up), preferring top right, top left, bottom right, bottom
// left; `outside` when every corner holds some.
enum class LegendCorner { top_right, top_left, bottom_right, bottom_left, outside };
LegendCorner legend_corner(const std::vector<cv::Point2d>& ink, cv::Size2d size);

}  // namespace diffuflow
