#include "nodes/data/synthetic_source.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace diffuflow {

namespace {

constexpr int kShift = 4;  // sub-pixel bits for OpenCV drawing
constexpr double kSubpixel = 1 << kShift;
constexpr double kPi = 3.14159265358979323846;

using Stroke = std::vector<cv::Point2d>;  // a polyline in the unit box, y pointing down

double uniform(std::mt19937_64& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

// Points on an elliptical arc; angles in degrees, 0 = right, 90 = down.
Stroke arc(double cx, double cy, double rx, double ry, double from, double to, int steps = 16) {
  Stroke points;
  for (int i = 0; i <= steps; ++i) {
    const double a = (from + (to - from) * i / steps) * kPi / 180.0;
    points.emplace_back(cx + rx * std::cos(a), cy + ry * std::sin(a));
  }
  return points;
}

Stroke join(Stroke a, const Stroke& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Hand-drawn glyphs for 0..9 in the unit box.
std::vector<Stroke> digit_glyph(int digit) {
  switch (digit) {
    case 0: return {arc(0.5, 0.5, 0.42, 0.5, 0, 360, 28)};
    case 1: return {{{0.28, 0.22}, {0.55, 0.0}, {0.55, 1.0}}};
    case 2: return {join(arc(0.5, 0.3, 0.4, 0.3, 190, 400), {{0.1, 1.0}, {0.92, 1.0}})};
    case 3: return {arc(0.5, 0.27, 0.38, 0.27, 200, 450), arc(0.5, 0.75, 0.42, 0.25, 270, 520)};
    case 4: return {{{0.7, 1.0}, {0.7, 0.0}, {0.08, 0.68}, {0.95, 0.68}}};
    case 5: return {join({{0.85, 0.0}, {0.2, 0.0}, {0.16, 0.46}}, arc(0.5, 0.68, 0.38, 0.32, 225, 500))};
    case 6: return {join({{0.78, 0.02}, {0.45, 0.2}, {0.18, 0.6}}, arc(0.5, 0.72, 0.33, 0.28, 180, 540, 24))};
    case 7: return {{{0.1, 0.0}, {0.9, 0.0}, {0.4, 1.0}}};
    case 8: return {arc(0.5, 0.25, 0.3, 0.25, 0, 360, 24), arc(0.5, 0.73, 0.38, 0.27, 0, 360, 24)};
    case 9: return {arc(0.5, 0.3, 0.36, 0.3, 0, 360, 24), {{0.86, 0.3}, {0.72, 1.0}}};
    default: throw std::invalid_argument("digit_glyph: not a digit: " + std::to_string(digit));
  }
}

cv::Point to_fixed(const cv::Point2d& p) {
  return cv::Point(static_cast<int>(std::lround(p.x * kSubpixel)), static_cast<int>(std::lround(p.y * kSubpixel)));
}

struct Colours {
  cv::Scalar background;
  cv::Scalar foreground;
};

// Grey: bright strokes on black, as in MNIST. Colour: a bright random colour on a dark random one.
Colours pick_colours(int channels, std::mt19937_64& rng) {
  if (channels == 1) return {cv::Scalar(0), cv::Scalar(uniform(rng, 180, 255))};
  cv::Scalar fg(uniform(rng, 40, 255), uniform(rng, 40, 255), uniform(rng, 40, 255));
  fg[std::uniform_int_distribution<int>(0, 2)(rng)] = 255;
  const cv::Scalar bg(uniform(rng, 0, 50), uniform(rng, 0, 50), uniform(rng, 0, 50));
  return {bg, fg};
}

void draw_shape(cv::Mat& image, int shape, std::mt19937_64& rng, const cv::Scalar& colour) {
  const double size = image.cols;
  const double radius = uniform(rng, 0.18, 0.38) * size;
  const double margin = radius + 1.0;
  const cv::Point2d centre(uniform(rng, margin, size - margin), uniform(rng, margin, size - margin));
  const double angle = uniform(rng, 0.0, 2.0 * kPi);
  auto polygon = [&](int corners) {
    std::vector<cv::Point> points;
    for (int k = 0; k < corners; ++k) {
      const double a = angle + 2.0 * kPi * k / corners;
      points.push_back(to_fixed(centre + cv::Point2d(radius * std::cos(a), radius * std::sin(a))));
    }
    cv::fillConvexPoly(image, points, colour, cv::LINE_AA, kShift);
  };
  switch (shape) {
    case 0:  // disc
      cv::circle(image, to_fixed(centre), static_cast<int>(std::lround(radius * kSubpixel)), colour, cv::FILLED,
                 cv::LINE_AA, kShift);
      break;
    case 1:  // square (corners on the circle of `radius`)
      polygon(4);
      break;
    case 2:  // triangle
      polygon(3);
      break;
    case 3: {  // ring
      const double thickness = std::max(1.5, uniform(rng, 0.22, 0.35) * radius);
      const double mid = radius - thickness / 2.0;
      cv::circle(image, to_fixed(centre), static_cast<int>(std::lround(mid * kSubpixel)), colour,
                 static_cast<int>(std::lround(thickness)), cv::LINE_AA, kShift);
      break;
    }
    default: throw std::invalid_argument("draw_shape: unknown shape class");
  }
}

void draw_digit(cv::Mat& image, int digit, std::mt19937_64& rng, const cv::Scalar& colour) {
  const double size = image.cols;
  const double height = uniform(rng, 0.55, 0.72) * size;
  const double width = height * uniform(rng, 0.5, 0.7);
  const double slant = uniform(rng, -0.3, 0.3);
  const double rotation = uniform(rng, -0.17, 0.17);  // about +-10 degrees
  const double thickness = std::max(1.0, uniform(rng, 0.06, 0.09) * size);
  const double room_x = std::max(0.0, (size - width) / 2.0 - thickness - 1.0);
  const double room_y = std::max(0.0, (size - height) / 2.0 - thickness - 1.0);
  const cv::Point2d centre(size / 2.0 + uniform(rng, -0.6, 0.6) * room_x,
                           size / 2.0 + uniform(rng, -0.6, 0.6) * room_y);
  const double c = std::cos(rotation);
  const double s = std::sin(rotation);
  std::vector<std::vector<cv::Point>> strokes;
  for (const Stroke& stroke : digit_glyph(digit)) {
    std::vector<cv::Point> points;
    for (const cv::Point2d& unit : stroke) {
      double x = (unit.x - 0.5) * width;
      const double y = (unit.y - 0.5) * height;
      x -= slant * y;  // italic: the top leans right for slant > 0
      points.push_back(to_fixed(centre + cv::Point2d(c * x - s * y, s * x + c * y)));
    }
    strokes.push_back(std::move(points));
  }
  cv::polylines(image, strokes, false, colour, static_cast<int>(std::lround(thickness)), cv::LINE_AA, kShift);
}

}  // namespace

int synthetic_classes(SyntheticKind kind) { return kind == SyntheticKind::shapes ? 4 : 10; }

cv::Mat draw_synthetic_image(SyntheticKind kind, int label, int size, int channels, std::mt19937_64& rng) {
  if (channels != 1 && channels != 3) throw std::invalid_argument("synthetic images have 1 or 3 channels");
  const Colours colours = pick_colours(channels, rng);
  cv::Mat image(size, size, channels == 1 ? CV_8UC1 : CV_8UC3, colours.background);
  if (kind == SyntheticKind::shapes)
    draw_shape(image, label, rng, colours.foreground);
  else
    draw_digit(image, label, rng, colours.foreground);
  return image;
}

NodeContract SyntheticSource::contract() {
  NodeContract c;
  c.doc = "Built-in procedurally drawn images (shapes or digit-like strokes) with class labels; no download.";
  c.example = "{name: data, type: synthetic_source, params: {kind: digits, size: 28, batch_size: 64}}";
  c.outputs = {{"out", {fields::kX0, fields::kLabels}, "x0 [N,C,size,size] f32 in [-1,1]; labels [N] s32 (host)"}};
  c.max_concurrency = 1;
  return c;
}

SyntheticSource::SyntheticSource(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  if (params_.channels == 2) {
    throw ConfigError(SourceLocation{}, "node '" + name() + "': channels must be 1 (grey) or 3 (colour), not 2");
  }
  batcher_ = std::make_unique<EpochBatcher>(params_.count, params_.batch,
                                            [this](int64_t epoch) { return this->ctx().rng(name(), epoch); },
                                            shard_of(ctx));
  if (batcher_->batches_per_epoch() == 0) {
    throw ConfigError(SourceLocation{}, "node '" + name() + "': count " + std::to_string(params_.count) +
                                            " makes no full batch of batch_size " +
                                            std::to_string(params_.batch.batch_size) +
                                            " with drop_last: true; raise count or set drop_last: false");
  }
}

cv::Mat SyntheticSource::image(int64_t index, int32_t& label) {
  const int classes = synthetic_classes(params_.kind);
  label = static_cast<int32_t>(index % classes);
  // Keyed by what the image looks like, not by the node's name, so two sources
  // with the same settings and seed agree.
  const std::string key = std::string("synthetic_source/") +
                          (params_.kind == SyntheticKind::shapes ? "shapes/" : "digits/") +
                          std::to_string(params_.size) + "/" + std::to_string(params_.channels);
  auto rng = ctx().rng(key, index);
  return draw_synthetic_image(params_.kind, label, params_.size, params_.channels, rng);
}

bool SyntheticSource::produce(Emitter& out) {
  if (!source_may_emit(ctx(), emitted_)) return false;
  std::vector<int64_t> indices;
  if (!batcher_->next(indices)) return false;

  const int64_t n = static_cast<int64_t>(indices.size());
  const int64_t image_values = static_cast<int64_t>(params_.channels) * params_.size * params_.size;
  const auto& engine = Device::host()->engine();
  Tensor x0({n, params_.channels, params_.size, params_.size}, DType::f32, engine);
  Tensor labels({n}, DType::s32, engine);
  {
    auto pixels = x0.map<float>();
    auto label_values = labels.map<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      int32_t label = 0;
      cv::Mat drawn = image(indices[i], label);
      if (params_.channels == 3) cv::cvtColor(drawn, drawn, cv::COLOR_BGR2RGB);
      image_to_planar(drawn, pixels.data() + i * image_values);
      label_values[i] = label;
    }
  }
  out.emit(Packet(emitted_).at_item(batcher_->first_item()).with(fields::kX0, x0).with(fields::kLabels, labels));
  ++emitted_;
  return true;
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(synthetic_source, diffuflow::SyntheticSource);
