// draw_line_plot: a small line chart with OpenCV, for benchmark sweeps and any
// other "y against x" picture: one or more series, each point with an
// optional error bar (lo..hi), axes with tick labels, a title and axis names.
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
#pragma once

#include <opencv2/core.hpp>

#include <string>
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

}  // namespace diffuflow
