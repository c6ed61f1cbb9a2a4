#include "nodes/common/plots.hpp"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace diffuflow {

namespace {

constexpr int kMarginLeft = 80, kMarginRight = 24, kMarginTop = 56, kMarginBottom = 52;
constexpr int kTicks = 5;

std::string number_label(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.4g", value);
  return text;
}

// A "nice" tick step (1, 2 or 5 times a power of ten) giving about kTicks intervals over `range`.
double nice_step(double range) {
  const double raw = range / kTicks;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (double f : {1.0, 2.0, 5.0})
    if (raw <= f * magnitude) return f * magnitude;
  return 10 * magnitude;
}

// Ten distinguishable colours (BGR), so a chart of up to ten series never repeats one.
const cv::Scalar kPalette[] = {{180, 119, 31}, {14, 127, 255}, {44, 160, 44},   {40, 39, 214},  {189, 103, 148},
                               {75, 86, 140},  {194, 119, 227}, {127, 127, 127}, {34, 189, 188}, {207, 190, 23}};

}  // namespace

cv::Mat draw_line_plot(const std::vector<LineSeries>& series, const LinePlotStyle& style) {
  cv::Mat image(style.height, style.width, CV_8UC3, cv::Scalar(255, 255, 255));
  const cv::Point origin(kMarginLeft, style.height - kMarginBottom);
  const int plot_w = std::max(1, style.width - kMarginLeft - kMarginRight);
  const int plot_h = std::max(1, style.height - kMarginTop - kMarginBottom);
  const cv::Scalar black(0, 0, 0);
  const auto font = cv::FONT_HERSHEY_SIMPLEX;
  cv::putText(image, style.title, cv::Point(8, 24), font, 0.6, black, 1, cv::LINE_AA);
  const int xl_w = cv::getTextSize(style.x_label, font, 0.5, 1, nullptr).width;
  cv::putText(image, style.x_label, cv::Point(origin.x + plot_w / 2 - xl_w / 2, style.height - 10), font, 0.5, black,
              1, cv::LINE_AA);
  cv::putText(image, style.y_label, cv::Point(8, kMarginTop - 14), font, 0.45, black, 1, cv::LINE_AA);

  // Categorical x: the distinct x values in the order first seen.
  std::vector<double> categories;
  for (const auto& s : series)
    for (double x : s.x)
      if (std::isfinite(x) && std::find(categories.begin(), categories.end(), x) == categories.end())
        categories.push_back(x);
  auto x_pos = [&](double x) {
    if (!style.categorical_x) return x;
    return double(std::find(categories.begin(), categories.end(), x) - categories.begin());
  };

  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const auto& s : series) {
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      x_lo = std::min(x_lo, x_pos(s.x[i]));
      x_hi = std::max(x_hi, x_pos(s.x[i]));
      double lo = s.y[i], hi = s.y[i];
      if (i < s.y_lo.size() && std::isfinite(s.y_lo[i])) lo = std::min(lo, s.y_lo[i]);
      if (i < s.y_hi.size() && std::isfinite(s.y_hi[i])) hi = std::max(hi, s.y_hi[i]);
      y_lo = std::min(y_lo, lo);
      y_hi = std::max(y_hi, hi);
    }
  }
  if (!std::isfinite(x_lo)) x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  if (style.y_from_zero) y_lo = std::min(0.0, y_lo);
  if (x_hi <= x_lo) x_lo -= 0.5, x_hi += 0.5;
  if (y_hi - y_lo < 1e-12) y_hi = y_lo + (y_lo == 0 ? 1.0 : std::abs(y_lo) * 0.1);
  y_hi += (y_hi - y_lo) * 0.05;  // headroom for the top error bar
  const double y_step = nice_step(y_hi - y_lo);
  y_lo = std::floor(y_lo / y_step) * y_step;
  y_hi = std::ceil(y_hi / y_step) * y_step;
  // A little room either side so the end points and their bars stay clear of the axes.
  const double pad = (x_hi - x_lo) * 0.05;
  x_lo -= pad;
  x_hi += pad;
  auto to_pixel = [&](double x, double y) {
    return cv::Point(origin.x + int(std::lround((x - x_lo) / (x_hi - x_lo) * plot_w)),
                     origin.y - int(std::lround((y - y_lo) / (y_hi - y_lo) * plot_h)));
  };

  // Horizontal grid lines with y labels; x ticks at the data's x values (categorical) or evenly.
  for (double fy = y_lo; fy <= y_hi + y_step * 1e-6; fy += y_step) {
    const cv::Point py = to_pixel(x_lo, fy);
    cv::line(image, py, cv::Point(origin.x + plot_w, py.y), cv::Scalar(235, 235, 235), 1);
    cv::putText(image, number_label(fy), cv::Point(6, py.y + 4), font, 0.4, black, 1, cv::LINE_AA);
  }
  std::vector<std::pair<double, double>> x_ticks;  // (position, label value)
  if (style.categorical_x) {
    for (size_t i = 0; i < categories.size(); ++i) x_ticks.emplace_back(double(i), categories[i]);
  } else if (categories.size() <= 12) {  // few points: a tick at each
    for (double x : categories) x_ticks.emplace_back(x, x);
  } else {
    for (int i = 0; i <= kTicks; ++i) {
      const double fx = x_lo + pad + (x_hi - x_lo - 2 * pad) * i / kTicks;
      x_ticks.emplace_back(fx, fx);
    }
  }
  for (const auto& [pos, value] : x_ticks) {
    const cv::Point px = to_pixel(pos, y_lo);
    cv::line(image, px, cv::Point(px.x, px.y + 4), black, 1);
    const std::string label = number_label(value);
    const int label_w = cv::getTextSize(label, font, 0.4, 1, nullptr).width;
    const int label_x = std::clamp(px.x - label_w / 2, 2, style.width - label_w - 2);
    cv::putText(image, label, cv::Point(label_x, px.y + 18), font, 0.4, black, 1, cv::LINE_AA);
  }
  cv::line(image, origin, cv::Point(origin.x + plot_w, origin.y), black, 1);
  cv::line(image, origin, cv::Point(origin.x, origin.y - plot_h), black, 1);

  // Series: error bars, the line, the points; a legend when there is more than one series or a label.
  int legend_y = kMarginTop + 14;
  for (size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    const cv::Scalar color = kPalette[k % (sizeof(kPalette) / sizeof(kPalette[0]))];
    std::vector<std::pair<double, cv::Point>> points;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      const double x = x_pos(s.x[i]);
      const cv::Point p = to_pixel(x, s.y[i]);
      points.emplace_back(x, p);
      const bool has_lo = i < s.y_lo.size() && std::isfinite(s.y_lo[i]);
      const bool has_hi = i < s.y_hi.size() && std::isfinite(s.y_hi[i]);
      if (has_lo || has_hi) {
        const cv::Point top = to_pixel(x, has_hi ? s.y_hi[i] : s.y[i]);
        const cv::Point bottom = to_pixel(x, has_lo ? s.y_lo[i] : s.y[i]);
        cv::line(image, top, bottom, color, 1, cv::LINE_AA);
        cv::line(image, top - cv::Point(5, 0), top + cv::Point(5, 0), color, 1, cv::LINE_AA);
        cv::line(image, bottom - cv::Point(5, 0), bottom + cv::Point(5, 0), color, 1, cv::LINE_AA);
      }
    }
    std::sort(points.begin(), points.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<cv::Point> line;
    for (const auto& [x, p] : points) line.push_back(p);
    if (line.size() > 1) cv::polylines(image, line, false, color, 2, cv::LINE_AA);
    for (const auto& p : line) cv::circle(image, p, 4, color, cv::FILLED, cv::LINE_AA);
    if (!s.label.empty() && (series.size() > 1 || !style.title.empty())) {
      const int label_w = cv::getTextSize(s.label, font, 0.45, 1, nullptr).width;
      const int lx = origin.x + plot_w - label_w - 8;
      cv::line(image, cv::Point(lx - 26, legend_y - 4), cv::Point(lx - 6, legend_y - 4), color, 2, cv::LINE_AA);
      cv::putText(image, s.label, cv::Point(lx, legend_y), font, 0.45, black, 1, cv::LINE_AA);
      legend_y += 18;
    }
  }
  return image;
}

}  // namespace diffuflow
