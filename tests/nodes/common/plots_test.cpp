// The axes every chart shares: round ticks, clean labels, and a legend that
// keeps clear of the data.
#include "nodes/common/plots.hpp"

#include <doctest/doctest.h>

#include <cmath>

using namespace diffuflow;

using Values = std::vector<double>;
using Labels = std::vector<std::string>;

TEST_CASE("nice_ticks steps by 1, 2 or 5 x 10^k and returns the decimal values themselves") {
  CHECK(nice_ticks(0, 2) == Values{0, 0.5, 1.0, 1.5, 2.0});
  CHECK(nice_ticks(0, 0.1) == Values{0, 0.02, 0.04, 0.06, 0.08, 0.1});
  CHECK(nice_ticks(0.13, 0.87) == Values{0.2, 0.4, 0.6, 0.8});
  CHECK(nice_ticks(-3, 7) == Values{-2, 0, 2, 4, 6});
  CHECK(nice_ticks(1200, 98000) == Values{20000, 40000, 60000, 80000});
  CHECK(nice_ticks(0, 1e-4) == Values{0, 2e-5, 4e-5, 6e-5, 8e-5, 1e-4});
  CHECK(nice_ticks(5, 5) == Values{5});
  CHECK(nice_ticks(1, 0).empty());
  CHECK(nice_ticks(0, NAN).empty());
}

TEST_CASE("log_ticks puts labels on decades, or on 1, 2, 5 x 10^k over a short span") {
  CHECK(log_ticks(0.003, 2.0) == Values{0.01, 0.1, 1});
  CHECK(log_ticks(0.05, 1) == Values{0.05, 0.1, 0.2, 0.5, 1});
  CHECK(log_ticks(0.3, 0.45) == Values{0.3, 0.35, 0.4, 0.45});  // no 1-2-5 value inside: linear steps
  CHECK(log_ticks(1e-8, 1e4) == Values{1e-8, 1e-6, 1e-4, 1e-2, 1, 1e2, 1e4});  // thinned past eight decades
  CHECK(log_ticks(0, 1).empty());
  CHECK(log_ticks(2, 1).empty());
}

TEST_CASE("tick labels carry no rounding noise and use one notation per axis") {
  CHECK(tick_labels(nice_ticks(0, 2), true) == Labels{"0", "0.5", "1.0", "1.5", "2.0"});
  CHECK(tick_labels(nice_ticks(0, 0.1), true) == Labels{"0", "0.02", "0.04", "0.06", "0.08", "0.10"});
  CHECK(tick_labels({0.1 + 0.2, 0.0200001}, false) == Labels{"0.3", "0.02"});
  CHECK(tick_labels({0.001, 0.01, 0.1, 1, 10}, false) == Labels{"0.001", "0.01", "0.1", "1", "10"});
  CHECK(tick_labels({1e-4, 1e-3, 1e-2}, false) == Labels{"1e-4", "1e-3", "1e-2"});  // all scientific, not 0.001
  CHECK(tick_labels({0, 2e6, 4e6}, true) == Labels{"0", "2e6", "4e6"});
  CHECK(tick_labels({-2.5e-5, 7.5e-5}, true) == Labels{"-2.5e-5", "7.5e-5"});
  CHECK(tick_labels({20000, 40000}, true) == Labels{"20000", "40000"});
}

TEST_CASE("legend_corner picks the first corner free of data, or outside when none is") {
  const cv::Size2d box(0.25, 0.2);
  CHECK(legend_corner({}, box) == LegendCorner::top_right);
  std::vector<cv::Point2d> rising;
  for (int i = 0; i <= 100; ++i) rising.emplace_back(i / 100.0, i / 100.0);
  CHECK(legend_corner(rising, box) == LegendCorner::top_left);
  std::vector<cv::Point2d> top_band;
  for (int i = 0; i <= 100; ++i) top_band.emplace_back(i / 100.0, 0.95);
  CHECK(legend_corner(top_band, box) == LegendCorner::bottom_right);
  const std::vector<cv::Point2d> corners{{0.05, 0.05}, {0.95, 0.05}, {0.05, 0.95}, {0.95, 0.95}};
  CHECK(legend_corner(corners, box) == LegendCorner::outside);
}

TEST_CASE("a line plot's legend covers none of the plotted points where the top-right corner would") {
  // Two series rising to the top right; with labels they get a legend, without none.
  LineSeries a{"rising fast", {}, {}, {}, {}}, b{"rising slowly", {}, {}, {}, {}};
  for (int i = 1; i <= 10; ++i) {
    a.x.push_back(i);
    a.y.push_back(9.5 * i);
    b.x.push_back(i);
    b.y.push_back(6.0 * i);
  }
  LinePlotStyle style;
  style.title = "legend placement";
  const cv::Mat with_legend = draw_line_plot({a, b}, style);
  a.label.clear();
  b.label.clear();
  const cv::Mat without = draw_line_plot({a, b}, style);
  REQUIRE(with_legend.size() == without.size());

  const cv::Vec3b first(180, 119, 31), second(14, 127, 255);  // the palette's first two colours (BGR)
  int series_pixels = 0, covered = 0, top_right = 0, legend_pixels = 0;
  for (int y = 0; y < without.rows; ++y) {
    for (int x = 0; x < without.cols; ++x) {
      const cv::Vec3b was = without.at<cv::Vec3b>(y, x);
      if (was != first && was != second) {
        legend_pixels += with_legend.at<cv::Vec3b>(y, x) != was;
        continue;
      }
      ++series_pixels;
      covered += with_legend.at<cv::Vec3b>(y, x) != was;
      top_right += x > style.width - 160 && y < 130;
    }
  }
  CHECK(series_pixels > 1000);
  CHECK(top_right > 0);        // the data reaches where a top-right legend would sit
  CHECK(legend_pixels > 200);  // a legend was drawn
  CHECK(covered == 0);         // and it hides none of the data
}

TEST_CASE("the roofline bound is the lower of the memory and compute roofs, either left out when not given") {
  CHECK(roofline_bound(1.0, 30.0, 350.0) == doctest::Approx(30.0));
  CHECK(roofline_bound(100.0, 30.0, 350.0) == doctest::Approx(350.0));
  CHECK(roofline_bound(350.0 / 30.0, 30.0, 350.0) == doctest::Approx(350.0));  // the ridge
  CHECK(roofline_bound(100.0, 30.0, 0.0) == doctest::Approx(3000.0));
  CHECK(roofline_bound(100.0, 0.0, 350.0) == doctest::Approx(350.0));
  CHECK(roofline_bound(100.0, 0.0, 0.0) == 0.0);
}

TEST_CASE("a roofline draws both roofs and every drawable point in its series' colour, and skips the rest") {
  RooflineSeries forward{"forward", {{"convolution", 34.0, 170.0}, {"group_norm", 0.12, 1.1}, {"copy", 0.0, 0.0}}};
  RooflineSeries both{"forward+backward", {{"convolution", 35.0, 160.0}, {"nan", NAN, 3.0}}};
  RooflineStyle style;
  style.title = "roofline";
  style.bandwidth = 30.0;
  style.peak = 350.0;
  const cv::Mat image = draw_roofline({forward, both}, style);
  REQUIRE(image.cols == style.width);
  REQUIRE(image.rows == style.height);
  const cv::Vec3b first(180, 119, 31), second(14, 127, 255), roof(60, 60, 60);
  int first_pixels = 0, second_pixels = 0, roof_pixels = 0;
  for (int y = 0; y < image.rows; ++y) {
    for (int x = 0; x < image.cols; ++x) {
      const cv::Vec3b v = image.at<cv::Vec3b>(y, x);
      first_pixels += v == first;
      second_pixels += v == second;
      roof_pixels += v == roof;
    }
  }
  CHECK(first_pixels > 60);   // two markers, two names, a legend swatch
  CHECK(second_pixels > 30);  // one marker, its name, a legend swatch
  CHECK(roof_pixels > 400);   // the two roofs across the plot

  // Without roofs or drawable points it still draws a frame.
  const cv::Mat empty = draw_roofline({{"none", {{"zero", 0.0, 5.0}}}}, RooflineStyle{});
  CHECK(empty.cols == RooflineStyle{}.width);
}
