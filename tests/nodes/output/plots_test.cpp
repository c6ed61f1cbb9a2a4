// loss_curve and scatter_plot: files written where and when expected, at the
// expected size, with the points where they belong.
#include "nodes/common/plots.hpp"
#include "nodes/output/loss_curve.hpp"
#include "nodes/output/scatter_plot.hpp"
#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <opencv2/imgcodecs.hpp>

#include <cmath>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::make_node;
using diffuflow::test::single_input;

namespace {

bool is_white(const cv::Mat& image, int x, int y) { return image.at<cv::Vec3b>(y, x) == cv::Vec3b(255, 255, 255); }

}  // namespace

TEST_CASE("loss_curve writes loss_curve.png of the requested size every N packets and at the end") {
  test::TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto node = make_node("loss_curve", "{every: 10, width: 640, height: 360}", ctx, "curve");
  CollectingEmitter out;
  const auto file = dir / "loss_curve.png";
  for (int i = 0; i < 25; ++i) {
    node->process(single_input(Packet(i).with("loss", 1.0 / (1 + i)).share()), out);
    if (i == 8) CHECK_FALSE(std::filesystem::exists(file));
    if (i == 9) CHECK(std::filesystem::exists(file));
  }
  std::filesystem::remove(file);
  node->finish();
  const cv::Mat image = cv::imread(file.string());
  REQUIRE_FALSE(image.empty());
  CHECK(image.cols == 640);
  CHECK(image.rows == 360);
  CHECK(out.size() == 0);
  CHECK_FALSE(std::filesystem::exists(dir / "loss_curve.png.tmp"));
}

TEST_CASE("a loss curve draws its smoothed line inside the plot area and skips non-positive values on a log axis") {
  LossCurveStyle style;
  style.width = 400;
  style.height = 300;
  std::vector<std::pair<int64_t, double>> points;
  for (int i = 0; i < 50; ++i) points.emplace_back(i, std::exp(-0.05 * i));
  points.emplace_back(50, 0.0);
  points.emplace_back(51, NAN);
  const cv::Mat image = draw_loss_curve(points, style);
  REQUIRE(image.cols == 400);
  REQUIRE(image.rows == 300);
  // The curve starts at the top left corner of the plot area (the largest loss).
  int coloured = 0;
  for (int y = 30; y < 60; ++y)
    for (int x = 78; x < 100; ++x) coloured += is_white(image, x, y) ? 0 : 1;
  CHECK(coloured > 0);
  // A decreasing loss leaves the top-right corner of the plot area (between grid lines) empty.
  for (int y = 42; y < 72; ++y)
    for (int x = 340; x < 375; ++x) CHECK(is_white(image, x, y));
}

TEST_CASE("scatter_plot accumulates points and writes one panel at the end, with points where they belong") {
  test::TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto node = make_node("scatter_plot", "{field: sample, limit: 1.0, size: 200, max_points: 3}", ctx, "plot");
  CollectingEmitter out;
  // (1, 1) is the top-right corner; (-1, -1) the bottom-left one.
  node->process(single_input(Packet(0).with("sample", Tensor::from_vector({2, 2, 1, 1}, {1, 1, -1, -1})).share()), out);
  node->process(single_input(Packet(1).with("sample", Tensor::from_vector({2, 2, 1, 1}, {0, 0, 0.5, 0})).share()), out);
  CHECK_FALSE(std::filesystem::exists(dir / "scatter_000000.png"));  // every: 0
  node->finish();
  const cv::Mat image = cv::imread((dir / "scatter.png").string());
  REQUIRE_FALSE(image.empty());
  CHECK(image.cols == 200);
  CHECK(image.rows == 200 + 22);
  CHECK_FALSE(is_white(image, 198, 22 + 1));    // (1, 1)
  CHECK_FALSE(is_white(image, 1, 22 + 198));    // (-1, -1)
  CHECK(is_white(image, 150, 22 + 100 + 8));    // (0.5, 0) was past max_points: not drawn near it
  CHECK_FALSE(is_white(image, 100, 22 + 90));   // the vertical axis line at x = 0
}

TEST_CASE("scatter_plot writes every N-th packet on its own and checks the field's shape") {
  test::TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto node = make_node("scatter_plot", "{field: x0, every: 2, size: 100}", ctx, "plot");
  CollectingEmitter out;
  for (int i = 0; i < 3; ++i)
    node->process(single_input(Packet(i).with("x0", Tensor::from_vector({1, 2, 1, 1}, {0, 0})).share()), out);
  CHECK(std::filesystem::exists(dir / "scatter_000000.png"));
  CHECK_FALSE(std::filesystem::exists(dir / "scatter_000001.png"));
  CHECK(std::filesystem::exists(dir / "scatter_000002.png"));
  CHECK_THROWS_WITH(
      node->process(single_input(Packet(3).with("x0", Tensor::from_vector({1, 3, 1, 1}, {0, 0, 0})).share()), out),
      doctest::Contains("[N,2,1,1]"));
}

TEST_CASE("scatter_plot with layout chain draws a row of K panels") {
  test::TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto node = make_node("scatter_plot", "{field: chain, layout: chain, size: 120, prefix: reverse}", ctx, "plot");
  CollectingEmitter out;
  std::vector<float> values(4 * 5 * 2, 0.25f);
  node->process(single_input(Packet(0).with("chain", Tensor::from_vector({4, 5, 2, 1, 1}, values)).share()), out);
  const cv::Mat first = cv::imread((dir / "reverse_000000.png").string());
  REQUIRE_FALSE(first.empty());
  CHECK(first.cols == 5 * 120);
  CHECK(first.rows == 120 + 22);
  node->finish();
  CHECK(cv::imread((dir / "reverse.png").string()).cols == 5 * 120);
}

TEST_CASE("loss_curve reads the typed loss field and takes its picture settings as one parameter group") {
  const NodeContract* contract = Registry::instance().node_contract("loss_curve");
  REQUIRE(contract != nullptr);
  REQUIRE(contract->inputs.at(0).fields.size() == 1);
  CHECK(contract->inputs[0].fields[0].name == "loss");
  CHECK(contract->inputs[0].fields[0].kind == FieldKind::number);
  std::vector<std::string> names;
  for (const auto& p : contract->params) names.push_back(p.name);
  CHECK(names == std::vector<std::string>{"every", "file", "smoothing", "log_y", "width", "height"});

  RunContext ctx;
  CHECK_THROWS_AS(make_node("loss_curve", "{smoothing: 1.5}", ctx), ConfigErrors);
  auto node = make_node("loss_curve", "{}", ctx);
  CollectingEmitter out;
  CHECK_THROWS_WITH(node->process(single_input(Packet(0).with("x0", 1.0).share()), out), doctest::Contains("loss"));
}

TEST_CASE("scatter_plot declares its field as f32 points and refuses an unknown layout") {
  const NodeContract* contract = Registry::instance().node_contract("scatter_plot");
  REQUIRE(contract != nullptr);
  REQUIRE(contract->inputs.at(0).field_params.size() == 1);
  CHECK(contract->inputs[0].field_params[0].param == "field");
  CHECK(contract->inputs[0].field_params[0].expects.dtype == DType::f32);
  RunContext ctx;
  CHECK_THROWS_WITH_AS(make_node("scatter_plot", "{layout: chains}", ctx), doctest::Contains("did you mean 'chain'"),
                       ConfigErrors);
}
