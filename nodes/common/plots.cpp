#include "nodes/common/plots.hpp"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>

namespace diffuflow {

namespace {

// --- ticks and labels ----------------------------------------------------------

// m x 10^e, computed so that a decimal like 0.3 comes out as the double nearest to it.
double times_pow10(double m, int e) { return e >= 0 ? m * std::pow(10.0, e) : m / std::pow(10.0, -e); }

// A tick step f x 10^e with f in {1, 2, 5}.
struct Step {
  double f = 1;
  int e = 0;
  double value() const { return times_pow10(f, e); }
};

// The step of 1, 2 or 5 x 10^k whose interval count over `span` is closest to `target`.
Step nice_step(double span, int target) {
  if (!(span > 0) || !std::isfinite(span)) return {};
  const double raw = span / std::max(1, target);
  const int e = static_cast<int>(std::floor(std::log10(raw)));
  Step best;
  double best_miss = std::numeric_limits<double>::infinity();
  for (int de : {0, 1}) {
    for (double f : {1.0, 2.0, 5.0}) {
      const Step s{f, e + de};
      const double miss = std::abs(span / s.value() - target);
      if (miss < best_miss) best = s, best_miss = miss;
    }
  }
  return best;
}

// The multiples of `step` inside [lo, hi] (ends included up to rounding).
std::vector<double> multiples(double lo, double hi, Step step) {
  const double v = step.value();
  const double first = std::ceil(lo / v - 1e-9), last = std::floor(hi / v + 1e-9);
  std::vector<double> ticks;
  for (double k = first; k <= last && ticks.size() < 1000; ++k) ticks.push_back(times_pow10(k * step.f, step.e));
  return ticks;
}

// The 1, 2, 5 x 10^k values inside [lo, hi] (0 < lo).
std::vector<double> one_two_five(double lo, double hi) {
  std::vector<double> ticks;
  for (int e = static_cast<int>(std::floor(std::log10(lo))); e <= static_cast<int>(std::ceil(std::log10(hi))); ++e)
    for (double f : {1.0, 2.0, 5.0}) {
      const double v = times_pow10(f, e);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) ticks.push_back(v);
    }
  return ticks;
}

// The fewest decimals (at most 6) that write `v` to about five significant
// digits, so that noise such as 0.0200001 or 0.30000000000000004 goes.
int decimals_of(double v) {
  for (int d = 0; d < 6; ++d) {
    const double scaled = times_pow10(v, d);
    if (std::abs(scaled - std::round(scaled)) <= 1e-4 * std::max(1.0, std::abs(scaled))) return d;
  }
  return 6;
}

std::string fixed(double v, int decimals) {
  char text[48];
  std::snprintf(text, sizeof(text), "%.*f", decimals, v);
  return text;
}

// "2e-4", "1.5e6": the shortest mantissa, the exponent without "+" or leading zeros.
std::string scientific(double v) {
  int e = static_cast<int>(std::floor(std::log10(std::abs(v))));
  double m = std::round(times_pow10(v, -e) * 1e5) / 1e5;  // six significant digits
  if (std::abs(m) >= 10) m /= 10, ++e;                     // 9.999999 rounded up to 10
  return fixed(m, decimals_of(m)) + "e" + std::to_string(e);
}

// --- axes ------------------------------------------------------------------------

// One axis: its span, its labelled ticks (grid lines on y, tick marks on x) and
// unlabelled minor ticks (lighter grid lines on log axes).
struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  std::vector<double> ticks;
  std::vector<std::string> labels;
  std::vector<double> minor;

  // Where `v` lies along the axis: 0 at lo, 1 at hi.
  double fraction(double v) const {
    if (log) return (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    return (v - lo) / (hi - lo);
  }
};

// Widens a zero-width span around its value.
void open_up(double& lo, double& hi) {
  if (hi - lo > 1e-12 * std::max(1.0, std::abs(lo))) return;
  const double half = lo == 0 ? 0.5 : std::abs(lo) * 0.1;
  lo -= half;
  hi += half;
}

// A linear axis over [lo, hi]; with `round_ends` the ends move out to the
// nearest ticks. An `integer` axis (step counts) has steps of 1 or more.
Axis linear_axis(double lo, double hi, bool round_ends, bool integer = false) {
  open_up(lo, hi);
  Step step = nice_step(hi - lo, 5);
  if (integer && step.value() < 1) step = Step{};
  Axis axis;
  axis.lo = round_ends ? times_pow10(std::floor(lo / step.value() + 1e-9) * step.f, step.e) : lo;
  axis.hi = round_ends ? times_pow10(std::ceil(hi / step.value() - 1e-9) * step.f, step.e) : hi;
  axis.ticks = multiples(axis.lo, axis.hi, step);
  axis.labels = tick_labels(axis.ticks, true);
  return axis;
}

// A log axis over [lo, hi] (0 < lo), the ends moved out to 1, 2 or 5 x 10^k.
Axis log_axis(double lo, double hi) {
  if (hi <= lo * (1 + 1e-12)) lo /= 2, hi *= 2;
  Axis axis;
  axis.log = true;
  const int e_lo = static_cast<int>(std::floor(std::log10(lo) + 1e-9));
  const int e_hi = static_cast<int>(std::floor(std::log10(hi) - 1e-9));
  axis.lo = times_pow10(1, e_lo);
  for (double f : {2.0, 5.0})
    if (times_pow10(f, e_lo) <= lo * (1 + 1e-9)) axis.lo = times_pow10(f, e_lo);
  axis.hi = times_pow10(10, e_hi);
  for (double f : {5.0, 2.0, 1.0})
    if (times_pow10(f, e_hi) >= hi * (1 - 1e-9)) axis.hi = times_pow10(f, e_hi);
  axis.ticks = log_ticks(axis.lo, axis.hi);
  axis.labels = tick_labels(axis.ticks, false);
  // Decade labels over a few decades: lighter lines at 2 and 5 x 10^k in between.
  const bool decades = axis.ticks.size() >= 2 && std::abs(axis.ticks[1] / axis.ticks[0] - 10) < 1e-6;
  if (decades && std::log10(axis.hi / axis.lo) <= 6) {
    for (double v : one_two_five(axis.lo, axis.hi))
      if (std::find(axis.ticks.begin(), axis.ticks.end(), v) == axis.ticks.end()) axis.minor.push_back(v);
  }
  return axis;
}

// Positions 0..n-1 labelled with the values, padded so the end points stay clear of the frame.
Axis category_axis(const std::vector<double>& categories) {
  Axis axis;
  axis.lo = 0;
  axis.hi = std::max<double>(0, static_cast<double>(categories.size()) - 1);
  open_up(axis.lo, axis.hi);
  const double pad = (axis.hi - axis.lo) * 0.05;
  axis.lo -= pad;
  axis.hi += pad;
  for (size_t i = 0; i < categories.size(); ++i) axis.ticks.push_back(static_cast<double>(i));
  axis.labels = tick_labels(categories, false);
  return axis;
}

// --- the chart: frame, axes, legend -----------------------------------------------

constexpr auto kFont = cv::FONT_HERSHEY_SIMPLEX;
constexpr double kTickFont = 0.4, kLegendFont = 0.45;
constexpr int kMarginRight = 24, kMarginBottom = 52, kTitleBand = 36, kAxisNameBand = 20;
constexpr int kLegendRow = 18, kLegendPad = 6, kLegendSwatch = 24, kLegendInset = 8;
const cv::Scalar kBlack(0, 0, 0), kGrid(230, 230, 230), kMinorGrid(244, 244, 244), kFrame(200, 200, 200);

// Ten distinguishable colours (BGR), so a chart of up to ten series never repeats one.
cv::Scalar series_color(size_t k) {
  static const cv::Scalar palette[] = {{180, 119, 31},  {14, 127, 255},  {44, 160, 44},  {40, 39, 214},
                                       {189, 103, 148}, {75, 86, 140},   {194, 119, 227}, {127, 127, 127},
                                       {34, 189, 188},  {207, 190, 23}};
  return palette[k % (sizeof(palette) / sizeof(palette[0]))];
}

int text_width(const std::string& text, double scale) { return cv::getTextSize(text, kFont, scale, 1, nullptr).width; }

void put(cv::Mat& image, const std::string& text, cv::Point at, double scale) {
  cv::putText(image, text, at, kFont, scale, kBlack, 1, cv::LINE_AA);
}

struct LegendEntry {
  std::string label;
  cv::Scalar color;
};

// A picture with a plot area, two axes, a title, axis names and an optional
// legend. Data goes through to_pixel; ink() says where it lies, so the legend
// can keep clear of it.
class Chart {
 public:
  Chart(cv::Size size, Axis x, Axis y, std::string title, std::string x_label, std::string y_label)
      : size_(size), x_(std::move(x)), y_(std::move(y)), title_(std::move(title)), x_label_(std::move(x_label)),
        y_label_(std::move(y_label)) {
    int widest = 0;
    for (const auto& label : y_.labels) widest = std::max(widest, text_width(label, kTickFont));
    const int top = kTitleBand + (y_label_.empty() ? 0 : kAxisNameBand);
    const int left = std::max(56, widest + 16);
    plot_ = cv::Rect(left, top, std::max(1, size.width - left - kMarginRight),
                     std::max(1, size.height - top - kMarginBottom));
  }

  // Axis fractions of a data point (x right, y up), for ink().
  cv::Point2d fraction(double x, double y) const { return {x_.fraction(x), y_.fraction(y)}; }
  cv::Point to_pixel(double x, double y) const {
    const cv::Point2d f = fraction(x, y);
    return {plot_.x + static_cast<int>(std::lround(f.x * plot_.width)),
            plot_.y + plot_.height - static_cast<int>(std::lround(f.y * plot_.height))};
  }
  // Records the data drawn from a to b (data coordinates), sampled finely enough
  // that no legend can sit between two samples.
  void ink(double x0, double y0, double x1, double y1) {
    const cv::Point2d a = fraction(x0, y0), b = fraction(x1, y1);
    const int n = 1 + static_cast<int>(std::ceil(std::hypot(b.x - a.x, b.y - a.y) / 0.004));
    for (int i = 0; i <= n; ++i) ink_.push_back(a + (b - a) * (static_cast<double>(i) / n));
  }

  // Places the legend: in a free corner of the plot area, else right of it (the plot area narrows).
  void set_legend(std::vector<LegendEntry> entries) {
    legend_ = std::move(entries);
    if (legend_.empty()) return;
    int widest = 0;
    for (const auto& e : legend_) widest = std::max(widest, text_width(e.label, kLegendFont));
    legend_size_ = cv::Size(3 * kLegendPad + kLegendSwatch + widest,
                            2 * kLegendPad + kLegendRow * static_cast<int>(legend_.size()));
    // The box plus the inset and a marker's radius must stay clear of the data.
    const cv::Size2d clear((legend_size_.width + kLegendInset + 6.0) / plot_.width,
                           (legend_size_.height + kLegendInset + 6.0) / plot_.height);
    corner_ = legend_corner(ink_, clear);
    if (corner_ == LegendCorner::outside) {
      plot_.width = std::max(1, plot_.width - legend_size_.width - kLegendInset);
    }
  }

  // A white picture with the title, axis names, grid lines, ticks and labels, and the axes.
  cv::Mat draw_frame() const {
    cv::Mat image(size_, CV_8UC3, cv::Scalar(255, 255, 255));
    put(image, title_, cv::Point(8, 24), 0.6);
    if (!y_label_.empty()) put(image, y_label_, cv::Point(8, plot_.y - 14), kLegendFont);
    put(image, x_label_, cv::Point(plot_.x + plot_.width / 2 - text_width(x_label_, 0.5) / 2, size_.height - 10),
        0.5);
    const int right = plot_.x + plot_.width, bottom = plot_.y + plot_.height;
    for (double v : y_.minor) {
      const int py = to_pixel(x_.lo, v).y;
      cv::line(image, cv::Point(plot_.x, py), cv::Point(right, py), kMinorGrid, 1);
    }
    for (size_t i = 0; i < y_.ticks.size(); ++i) {
      const int py = to_pixel(x_.lo, y_.ticks[i]).y;
      cv::line(image, cv::Point(plot_.x, py), cv::Point(right, py), kGrid, 1);
      cv::line(image, cv::Point(plot_.x - 4, py), cv::Point(plot_.x, py), kBlack, 1);
      put(image, y_.labels[i], cv::Point(plot_.x - 8 - text_width(y_.labels[i], kTickFont), py + 4), kTickFont);
    }
    // x labels: every one that fits after the previous one drawn.
    int free_from = std::numeric_limits<int>::min();
    for (size_t i = 0; i < x_.ticks.size(); ++i) {
      const int px = to_pixel(x_.ticks[i], y_.lo).x;
      cv::line(image, cv::Point(px, bottom), cv::Point(px, bottom + 4), kBlack, 1);
      const int w = text_width(x_.labels[i], kTickFont);
      const int lx = std::clamp(px - w / 2, 2, size_.width - w - 2);
      if (lx < free_from) continue;
      put(image, x_.labels[i], cv::Point(lx, bottom + 18), kTickFont);
      free_from = lx + w + 8;
    }
    cv::line(image, cv::Point(plot_.x, bottom), cv::Point(right, bottom), kBlack, 1);
    cv::line(image, cv::Point(plot_.x, bottom), cv::Point(plot_.x, plot_.y), kBlack, 1);
    return image;
  }

  void draw_legend(cv::Mat& image) const {
    if (legend_.empty()) return;
    const int right = plot_.x + plot_.width, bottom = plot_.y + plot_.height;
    const bool left_side = corner_ == LegendCorner::top_left || corner_ == LegendCorner::bottom_left;
    const bool low = corner_ == LegendCorner::bottom_left || corner_ == LegendCorner::bottom_right;
    cv::Point at(left_side ? plot_.x + kLegendInset : right - kLegendInset - legend_size_.width,
                 low ? bottom - kLegendInset - legend_size_.height : plot_.y + kLegendInset);
    if (corner_ == LegendCorner::outside) at = cv::Point(right + kLegendInset, plot_.y);
    const cv::Rect box(at, legend_size_);
    cv::rectangle(image, box, cv::Scalar(255, 255, 255), cv::FILLED);
    cv::rectangle(image, box, kFrame, 1);
    for (size_t i = 0; i < legend_.size(); ++i) {
      const int y = box.y + kLegendPad + kLegendRow * static_cast<int>(i) + kLegendRow / 2;
      const int x = box.x + kLegendPad;
      cv::line(image, cv::Point(x, y), cv::Point(x + kLegendSwatch, y), legend_[i].color, 2, cv::LINE_AA);
      put(image, legend_[i].label, cv::Point(x + kLegendSwatch + kLegendPad, y + 5), kLegendFont);
    }
  }

 private:
  cv::Size size_;
  Axis x_, y_;
  std::string title_, x_label_, y_label_;
  cv::Rect plot_;
  std::vector<cv::Point2d> ink_;
  std::vector<LegendEntry> legend_;
  cv::Size legend_size_;
  LegendCorner corner_ = LegendCorner::top_right;
};

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi) || hi < lo) return {};
  if (hi == lo) return {lo};
  return multiples(lo, hi, nice_step(hi - lo, target));
}

std::vector<double> log_ticks(double lo, double hi) {
  if (!std::isfinite(lo) || !std::isfinite(hi) || lo <= 0 || hi <= lo) return {};
  const int first = static_cast<int>(std::ceil(std::log10(lo) - 1e-9));
  const int last = static_cast<int>(std::floor(std::log10(hi) + 1e-9));
  if (last - first + 1 >= 3) {
    const int every = (last - first) / 8 + 1;  // at most nine labels
    std::vector<double> decades;
    for (int e = first; e <= last; ++e)
      if ((e - first) % every == 0) decades.push_back(times_pow10(1, e));
    return decades;
  }
  std::vector<double> ticks = one_two_five(lo, hi);
  return ticks.size() >= 3 ? ticks : nice_ticks(lo, hi);
}

std::vector<std::string> tick_labels(const std::vector<double>& ticks, bool same_decimals) {
  bool sci = false;
  int decimals = 0;
  for (double v : ticks) {
    if (v != 0 && (std::abs(v) < 1e-3 || std::abs(v) >= 1e6)) sci = true;
    decimals = std::max(decimals, decimals_of(v));
  }
  std::vector<std::string> labels;
  for (double v : ticks) {
    if (v == 0 || !std::isfinite(v)) labels.push_back(v == 0 ? "0" : fixed(v, 0));
    else if (sci) labels.push_back(scientific(v));
    else labels.push_back(fixed(v, same_decimals ? decimals : decimals_of(v)));
  }
  return labels;
}

LegendCorner legend_corner(const std::vector<cv::Point2d>& ink, cv::Size2d size) {
  const LegendCorner order[] = {LegendCorner::top_right, LegendCorner::top_left, LegendCorner::bottom_right,
                                LegendCorner::bottom_left};
  for (LegendCorner corner : order) {
    const bool right = corner == LegendCorner::top_right || corner == LegendCorner::bottom_right;
    const bool top = corner == LegendCorner::top_right || corner == LegendCorner::top_left;
    const double x0 = right ? 1 - size.width : 0, y0 = top ? 1 - size.height : 0;
    const bool free = std::none_of(ink.begin(), ink.end(), [&](const cv::Point2d& p) {
      return p.x >= x0 && p.x <= x0 + size.width && p.y >= y0 && p.y <= y0 + size.height;
    });
    if (free) return corner;
  }
  return LegendCorner::outside;
}

cv::Mat draw_line_plot(const std::vector<LineSeries>& series, const LinePlotStyle& style) {
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
  auto finite_point = [](const LineSeries& s, size_t i) { return std::isfinite(s.x[i]) && std::isfinite(s.y[i]); };
  auto bar_lo = [](const LineSeries& s, size_t i) {
    return i < s.y_lo.size() && std::isfinite(s.y_lo[i]) ? s.y_lo[i] : s.y[i];
  };
  auto bar_hi = [](const LineSeries& s, size_t i) {
    return i < s.y_hi.size() && std::isfinite(s.y_hi[i]) ? s.y_hi[i] : s.y[i];
  };

  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const auto& s : series) {
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!finite_point(s, i)) continue;
      x_lo = std::min(x_lo, s.x[i]);
      x_hi = std::max(x_hi, s.x[i]);
      y_lo = std::min({y_lo, s.y[i], bar_lo(s, i)});
      y_hi = std::max({y_hi, s.y[i], bar_hi(s, i)});
    }
  }
  if (!std::isfinite(x_lo)) x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  if (style.y_from_zero) y_lo = std::min(0.0, y_lo);
  open_up(y_lo, y_hi);
  y_hi += (y_hi - y_lo) * 0.05;  // headroom for the top error bar
  Axis y_axis = linear_axis(y_lo, y_hi, true);
  Axis x_axis;
  if (style.categorical_x) {
    x_axis = category_axis(categories);
  } else {
    // A little room either side so the end points and their bars stay clear of the axes.
    open_up(x_lo, x_hi);
    const double pad = (x_hi - x_lo) * 0.05;
    x_axis = linear_axis(x_lo - pad, x_hi + pad, false);
  }

  // Where the data lies, then the legend (when there is more than one series or a title).
  Chart chart(cv::Size(style.width, style.height), std::move(x_axis), std::move(y_axis), style.title, style.x_label,
              style.y_label);
  std::vector<std::vector<std::pair<double, double>>> lines(series.size());
  std::vector<LegendEntry> legend;
  for (size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!finite_point(s, i)) continue;
      lines[k].emplace_back(x_pos(s.x[i]), s.y[i]);
      chart.ink(x_pos(s.x[i]), bar_lo(s, i), x_pos(s.x[i]), bar_hi(s, i));
    }
    std::sort(lines[k].begin(), lines[k].end());
    for (size_t i = 1; i < lines[k].size(); ++i)
      chart.ink(lines[k][i - 1].first, lines[k][i - 1].second, lines[k][i].first, lines[k][i].second);
    if (!s.label.empty() && (series.size() > 1 || !style.title.empty())) legend.push_back({s.label, series_color(k)});
  }
  chart.set_legend(std::move(legend));

  // Series: error bars, the line, the points; then the legend.
  cv::Mat image = chart.draw_frame();
  for (size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    const cv::Scalar color = series_color(k);
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!finite_point(s, i) || (bar_lo(s, i) == s.y[i] && bar_hi(s, i) == s.y[i])) continue;
      const cv::Point top = chart.to_pixel(x_pos(s.x[i]), bar_hi(s, i));
      const cv::Point bottom = chart.to_pixel(x_pos(s.x[i]), bar_lo(s, i));
      cv::line(image, top, bottom, color, 1, cv::LINE_AA);
      cv::line(image, top - cv::Point(5, 0), top + cv::Point(5, 0), color, 1, cv::LINE_AA);
      cv::line(image, bottom - cv::Point(5, 0), bottom + cv::Point(5, 0), color, 1, cv::LINE_AA);
    }
    std::vector<cv::Point> line;
    for (const auto& [x, y] : lines[k]) line.push_back(chart.to_pixel(x, y));
    if (line.size() > 1) cv::polylines(image, line, false, color, 2, cv::LINE_AA);
    for (const auto& p : line) cv::circle(image, p, 4, color, cv::FILLED, cv::LINE_AA);
  }
  chart.draw_legend(image);
  return image;
}

double roofline_bound(double intensity, double bandwidth, double peak) {
  const double memory = bandwidth > 0 ? bandwidth * intensity : std::numeric_limits<double>::infinity();
  const double compute = peak > 0 ? peak : std::numeric_limits<double>::infinity();
  const double bound = std::min(memory, compute);
  return std::isfinite(bound) ? bound : 0.0;
}

namespace {

// A filled marker of series k: circle, square, triangle, diamond, in turn.
void draw_marker(cv::Mat& image, cv::Point p, size_t k, const cv::Scalar& color) {
  const int r = 5;
  switch (k % 4) {
    case 0:
      cv::circle(image, p, r, color, cv::FILLED, cv::LINE_AA);
      return;
    case 1:
      cv::rectangle(image, cv::Rect(p.x - r, p.y - r, 2 * r, 2 * r), color, cv::FILLED, cv::LINE_AA);
      return;
    default: {
      const std::vector<cv::Point> shape =
          k % 4 == 2 ? std::vector<cv::Point>{{p.x, p.y - r - 1}, {p.x - r - 1, p.y + r}, {p.x + r + 1, p.y + r}}
                     : std::vector<cv::Point>{{p.x, p.y - r - 1}, {p.x - r - 1, p.y}, {p.x, p.y + r + 1}, {p.x + r + 1, p.y}};
      cv::fillConvexPoly(image, shape, color, cv::LINE_AA);
    }
  }
}

std::string roof_number(double v) { return fixed(v, v >= 100 ? 0 : 1); }

}  // namespace

cv::Mat draw_roofline(const std::vector<RooflineSeries>& series, const RooflineStyle& style) {
  auto drawable = [](const RooflinePoint& p) {
    return std::isfinite(p.intensity) && std::isfinite(p.rate) && p.intensity > 0 && p.rate > 0;
  };
  // The axes hold every point, the ridge (where the roofs meet) with a decade either side, and the peak.
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = 0, y_lo = x_lo, y_hi = 0;
  for (const auto& s : series)
    for (const auto& p : s.points)
      if (drawable(p)) {
        x_lo = std::min(x_lo, p.intensity), x_hi = std::max(x_hi, p.intensity);
        y_lo = std::min(y_lo, p.rate), y_hi = std::max(y_hi, p.rate);
      }
  const bool memory_roof = style.bandwidth > 0 && std::isfinite(style.bandwidth);
  const bool compute_roof = style.peak > 0 && std::isfinite(style.peak);
  if (memory_roof && compute_roof) {
    const double ridge = style.peak / style.bandwidth;
    x_lo = std::min(x_lo, ridge / 10), x_hi = std::max(x_hi, ridge * 10);
  }
  if (compute_roof) y_lo = std::min(y_lo, style.peak), y_hi = std::max(y_hi, style.peak);
  if (!std::isfinite(x_lo)) x_lo = 0.1, x_hi = 10;
  if (!std::isfinite(y_lo)) y_lo = 1, y_hi = 10;
  // Room for the labels right of the points and for the markers at the ends.
  Axis x_axis = log_axis(x_lo / 1.5, x_hi * 4), y_axis = log_axis(y_lo / 1.5, y_hi * 1.5);
  const double x_min = x_axis.lo, x_max = x_axis.hi, y_min = y_axis.lo;
  Chart chart(cv::Size(style.width, style.height), std::move(x_axis), std::move(y_axis), style.title, style.x_label,
              style.y_label);

  // The roofs as one polyline: the memory slope from where it enters the plot to the ridge, then the flat peak.
  std::vector<std::pair<double, double>> roof;
  if (memory_roof) {
    const double start = std::max(x_min, y_min / style.bandwidth);
    const double end = compute_roof ? std::min(x_max, style.peak / style.bandwidth) : x_max;
    if (start < end) roof = {{start, style.bandwidth * start}, {end, style.bandwidth * end}};
  }
  if (compute_roof) {
    const double start = memory_roof ? std::max(x_min, std::min(x_max, style.peak / style.bandwidth)) : x_min;
    if (roof.empty()) roof.push_back({start, style.peak});
    roof.push_back({x_max, style.peak});
  }
  for (size_t i = 1; i < roof.size(); ++i) chart.ink(roof[i - 1].first, roof[i - 1].second, roof[i].first, roof[i].second);
  for (const auto& s : series)
    for (const auto& p : s.points)
      if (drawable(p)) chart.ink(p.intensity, p.rate, p.intensity * 3, p.rate);  // the point and its label

  const cv::Scalar roof_color(60, 60, 60);
  std::vector<LegendEntry> legend;
  for (size_t k = 0; k < series.size(); ++k)
    if (!series[k].label.empty()) legend.push_back({series[k].label, series_color(k)});
  if (memory_roof) {
    legend.push_back({style.bandwidth_label.empty() ? "memory roof " + roof_number(style.bandwidth) + " GB/s"
                                                    : style.bandwidth_label,
                      roof_color});
  }
  if (compute_roof) {
    legend.push_back({style.peak_label.empty() ? "compute roof " + roof_number(style.peak) + " GFLOP/s" : style.peak_label,
                      roof_color});
  }
  chart.set_legend(std::move(legend));

  cv::Mat image = chart.draw_frame();
  std::vector<cv::Point> roof_pixels;
  for (const auto& [x, y] : roof) roof_pixels.push_back(chart.to_pixel(x, y));
  if (roof_pixels.size() > 1) cv::polylines(image, roof_pixels, false, roof_color, 2, cv::LINE_AA);
  // Markers first, then each name beside its marker: above right, below right, above left, below left,
  // above or below, the first place that overlaps no roof, marker or name placed before (else the least).
  std::vector<cv::Rect> taken;
  for (size_t i = 1; i < roof_pixels.size(); ++i) {  // the roofs, as small boxes every few pixels
    const cv::Point a = roof_pixels[i - 1], b = roof_pixels[i];
    const int n = 1 + static_cast<int>(cv::norm(b - a) / 4);
    for (int j = 0; j <= n; ++j) {
      const cv::Point q = a + (b - a) * (static_cast<double>(j) / n);
      taken.emplace_back(q.x - 2, q.y - 2, 5, 5);
    }
  }
  for (size_t k = 0; k < series.size(); ++k)
    for (const auto& p : series[k].points) {
      if (!drawable(p)) continue;
      const cv::Point at = chart.to_pixel(p.intensity, p.rate);
      draw_marker(image, at, k, series_color(k));
      taken.emplace_back(at.x - 6, at.y - 6, 13, 13);
    }
  for (size_t k = 0; k < series.size(); ++k) {
    for (const auto& p : series[k].points) {
      if (!drawable(p)) continue;
      const cv::Point at = chart.to_pixel(p.intensity, p.rate);
      const int w = text_width(p.label, kTickFont), h = 10;
      const cv::Point corners[] = {{at.x + 8, at.y - 6},      {at.x + 8, at.y + 14},      {at.x - 8 - w, at.y - 6},
                                   {at.x - 8 - w, at.y + 14}, {at.x - w / 2, at.y - 10}, {at.x - w / 2, at.y + 20}};
      cv::Point text_at = corners[0];
      int least = std::numeric_limits<int>::max();
      for (const cv::Point& c : corners) {
        const cv::Rect box(c.x - 1, c.y - h - 1, w + 2, h + 4);
        int overlap = 0;
        for (const cv::Rect& r : taken) overlap += (r & box).area();
        if (overlap < least) least = overlap, text_at = c;
        if (overlap == 0) break;
      }
      taken.emplace_back(text_at.x - 1, text_at.y - h - 1, w + 2, h + 4);
      cv::putText(image, p.label, text_at, kFont, kTickFont, series_color(k), 1, cv::LINE_AA);
    }
  }
  chart.draw_legend(image);
  return image;
}

cv::Mat draw_loss_curve(std::vector<std::pair<int64_t, double>> points, const LossCurveStyle& style) {
  std::sort(points.begin(), points.end());
  points.erase(std::remove_if(points.begin(), points.end(),
                              [&](const auto& p) { return !std::isfinite(p.second) || (style.log_y && p.second <= 0); }),
               points.end());
  double x_lo = 0, x_hi = 1, y_lo = style.log_y ? 0.1 : 0, y_hi = 1;
  if (!points.empty()) {
    x_lo = double(points.front().first);
    x_hi = std::max(x_lo + 1, double(points.back().first));
    y_lo = y_hi = points.front().second;
    for (const auto& p : points) {
      y_lo = std::min(y_lo, p.second);
      y_hi = std::max(y_hi, p.second);
    }
  }
  Chart chart(cv::Size(style.width, style.height), linear_axis(x_lo, x_hi, false, true),
              style.log_y ? log_axis(y_lo, y_hi) : linear_axis(y_lo, y_hi, true),
              style.title + (style.log_y ? " (log scale)" : ""), "step", "");
  cv::Mat image = chart.draw_frame();

  // Raw values, then the EMA (bias-corrected, so the first points are not pulled to 0).
  const cv::Scalar grey(200, 200, 200), blue(180, 90, 20);
  std::vector<cv::Point> raw, smooth;
  double ema = 0, weight = 0;
  for (const auto& p : points) {
    raw.push_back(chart.to_pixel(double(p.first), p.second));
    ema = style.smoothing * ema + (1 - style.smoothing) * p.second;
    weight = style.smoothing * weight + (1 - style.smoothing);
    smooth.push_back(chart.to_pixel(double(p.first), weight > 0 ? ema / weight : p.second));
  }
  if (raw.size() == 1) cv::circle(image, raw[0], 2, blue, cv::FILLED);
  if (raw.size() > 1) {
    cv::polylines(image, raw, false, grey, 1, cv::LINE_AA);
    cv::polylines(image, smooth, false, blue, 2, cv::LINE_AA);
  }
  return image;
}

namespace {

constexpr int kTitleHeight = 22;

}  // namespace

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
  const auto bounds = tick_labels({-limit, limit}, false);
  cv::putText(panel, title + " [" + bounds[0] + ", " + bounds[1] + "]", cv::Point(4, 16), kFont, 0.45, frame, 1,
              cv::LINE_AA);
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
