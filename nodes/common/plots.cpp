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

namespace {

constexpr int kTitleHeight = 22;
constexpr int kLossMarginLeft = 80, kLossMarginRight = 20, kLossMarginTop = 36, kLossMarginBottom = 48;
constexpr int kLossTicks = 5;

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
  const cv::Point origin(kLossMarginLeft, style.height - kLossMarginBottom);
  const int plot_w = std::max(1, style.width - kLossMarginLeft - kLossMarginRight);
  const int plot_h = std::max(1, style.height - kLossMarginTop - kLossMarginBottom);
  const cv::Scalar black(0, 0, 0), grey(200, 200, 200), blue(180, 90, 20);
  cv::putText(image, style.title + (style.log_y ? " (log scale)" : ""), cv::Point(kLossMarginLeft, 24),
              cv::FONT_HERSHEY_SIMPLEX, 0.6, black, 1, cv::LINE_AA);
  cv::putText(image, "step", cv::Point(kLossMarginLeft + plot_w / 2 - 16, style.height - 8), cv::FONT_HERSHEY_SIMPLEX,
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
  for (int i = 0; i <= kLossTicks; ++i) {
    const double fy = y_lo + (y_hi - y_lo) * i / kLossTicks, fx = x_lo + (x_hi - x_lo) * i / kLossTicks;
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

cv::Mat draw_scatter(const std::vector<float>& xy, float limit, int size, const std::string& title) {
  cv::Mat panel(size + kTitleHeight, size, CV_8UC3, cv::Scalar(255, 255, 255));
  const cv::Scalar axis(190, 190, 190), frame(0, 0, 0), dot(170, 80, 20);
  auto to_pixel = [&](float x, float y) {
    const float fx = std::clamp((x + limit) / (2 * limit), 0.0f, 1.0f);
    const float fy = std::clamp((y + limit) / (2 * limit), 0.0f, 1.0f);
    return cv::Point(int(std::lround(fx * (size - 1))), kTitleHeight + int(std::lround((1 - fy) * (size - 1))));
  };
  cv::line(panel, to_pixel(-limit, 0), to_pixel(limit, 0), axis, 1);
  cv::line(panel, to_pixel(0, -limit), to_pixel(0, limit), axis, 1);
  cv::rectangle(panel, cv::Rect(0, kTitleHeight, size, size), frame, 1);
  char label[64];
  std::snprintf(label, sizeof(label), "%s [-%.3g, %.3g]", title.c_str(), limit, limit);
  cv::putText(panel, label, cv::Point(4, 16), cv::FONT_HERSHEY_SIMPLEX, 0.45, frame, 1, cv::LINE_AA);
  for (size_t i = 0; i + 1 < xy.size(); i += 2) {
    if (!std::isfinite(xy[i]) || !std::isfinite(xy[i + 1])) continue;
    cv::circle(panel, to_pixel(xy[i], xy[i + 1]), 2, dot, cv::FILLED, cv::LINE_AA);
  }
  return panel;
}

cv::Mat draw_scatter_chain(const std::vector<float>& values, int64_t n, int64_t k, float limit, int size) {
  if (static_cast<int64_t>(values.size()) != n * k * 2) {
    throw std::invalid_argument("scatter chain: expected " + std::to_string(n * k * 2) + " values, got " +
                                std::to_string(values.size()));
  }
  std::vector<cv::Mat> panels;
  for (int64_t j = 0; j < k; ++j) {
    std::vector<float> xy;
    xy.reserve(static_cast<size_t>(2 * n));
    for (int64_t i = 0; i < n; ++i) {
      xy.push_back(values[static_cast<size_t>((i * k + j) * 2)]);
      xy.push_back(values[static_cast<size_t>((i * k + j) * 2 + 1)]);
    }
    panels.push_back(draw_scatter(xy, limit, size, "step " + std::to_string(j)));
  }
  cv::Mat row;
  cv::hconcat(panels, row);
  return row;
}

}  // namespace diffuflow
