#include "nodes/output/image_writer.hpp"
#include "nodes/common/images.hpp"

#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <opencv2/imgcodecs.hpp>

#include <cmath>

using namespace diffuflow;
using namespace diffuflow::test;

namespace {

// n images of shape [C,H,W], image i filled with the value whose byte is round(i * 255 / (n - 1)).
Tensor constant_images(Shape shape) {
  const int64_t n = shape[0];
  const int64_t per_image = shape_numel(shape) / n;
  std::vector<float> values;
  for (int64_t i = 0; i < n; ++i) values.insert(values.end(), per_image, -1.0f + 2.0f * i / (n - 1));
  return Tensor::from_vector(shape, values);
}

int expected_byte(int64_t i, int64_t n) { return static_cast<int>(std::lround(255.0 * i / (n - 1))); }

void write_packet(Node& writer, const Packet& packet) {
  CollectingEmitter out;
  writer.process(single_input(Packet(packet).share()), out);
  CHECK(out.size() == 0);  // a sink
}

}  // namespace

TEST_CASE("image_writer grid: nrow columns, scaled tiles 2 pixels apart, values mapped back to bytes") {
  TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto writer = make_node("image_writer", "{layout: grid, nrow: 4, scale: 2}", ctx);
  write_packet(*writer, Packet(12).with("x0", constant_images({10, 1, 4, 5})));
  const auto file = dir / "samples" / "grid_000012.png";
  REQUIRE(std::filesystem::exists(file));
  const cv::Mat image = cv::imread(file.string(), cv::IMREAD_UNCHANGED);
  REQUIRE(image.type() == CV_8UC1);
  CHECK(image.cols == 4 * 10 + 3 * kImageGap);  // 4 columns of 5*2 pixels
  CHECK(image.rows == 3 * 8 + 2 * kImageGap);   // 3 rows of 4*2 pixels
  for (int i = 0; i < 10; ++i) {
    const int top = (i / 4) * (8 + kImageGap);
    const int left = (i % 4) * (10 + kImageGap);
    CHECK(image.at<uint8_t>(top, left) == expected_byte(i, 10));
    CHECK(image.at<uint8_t>(top + 7, left + 9) == expected_byte(i, 10));
  }
  CHECK(image.at<uint8_t>(0, 10) == kImageGapValue);                           // the gap after the first tile
  CHECK(image.at<uint8_t>(image.rows - 1, image.cols - 1) == kImageGapValue);  // an empty cell
  CHECK_FALSE(std::filesystem::exists(dir / "samples" / "grid_000012.png.tmp"));
}

TEST_CASE("image_writer writes every N-th step only and honours prefix and subdir") {
  TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto writer = make_node("image_writer", "{every: 2, prefix: step, subdir: pics/grids}", ctx);
  for (int64_t seq = 0; seq < 5; ++seq) write_packet(*writer, Packet(seq).with("x0", constant_images({2, 1, 3, 3})));
  CHECK(std::filesystem::exists(dir / "pics" / "grids" / "step_000000.png"));
  CHECK_FALSE(std::filesystem::exists(dir / "pics" / "grids" / "step_000001.png"));
  CHECK(std::filesystem::exists(dir / "pics" / "grids" / "step_000004.png"));
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir / "pics" / "grids")) files += entry.is_regular_file();
  CHECK(files == 3);
}

TEST_CASE("image_writer strip puts an RGB batch in one row with colours in the right order") {
  TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto writer = make_node("image_writer", "{layout: strip, scale: 1}", ctx);
  // Image 0 red, image 1 green, image 2 blue (RGB planes), 2x2 each.
  std::vector<float> v;
  for (int i = 0; i < 3; ++i) {
    for (int c = 0; c < 3; ++c) v.insert(v.end(), 4, c == i ? 1.0f : -1.0f);
  }
  write_packet(*writer, Packet(0).with("x0", Tensor::from_vector({3, 3, 2, 2}, v)));
  const cv::Mat image = cv::imread((dir / "samples" / "strip_000000.png").string(), cv::IMREAD_UNCHANGED);
  REQUIRE(image.type() == CV_8UC3);
  CHECK(image.cols == 3 * 2 + 2 * kImageGap);
  CHECK(image.rows == 2);
  CHECK(image.at<cv::Vec3b>(0, 0) == cv::Vec3b(0, 0, 255));  // red, stored BGR
  CHECK(image.at<cv::Vec3b>(1, 4) == cv::Vec3b(0, 255, 0));  // green
  CHECK(image.at<cv::Vec3b>(1, 9) == cv::Vec3b(255, 0, 0));  // blue
}

TEST_CASE("image_writer per_image writes one file per image up to max_images") {
  TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto writer = make_node("image_writer", "{layout: per_image, max_images: 3, scale: 3, prefix: digit}", ctx);
  write_packet(*writer, Packet(7).with("x0", constant_images({5, 1, 4, 4})));
  for (int i = 0; i < 3; ++i) {
    const auto file = dir / "samples" / ("digit_000007_" + std::to_string(i) + ".png");
    REQUIRE(std::filesystem::exists(file));
    const cv::Mat image = cv::imread(file.string(), cv::IMREAD_UNCHANGED);
    CHECK(image.cols == 12);
    CHECK(image.rows == 12);
    CHECK(image.at<uint8_t>(5, 5) == expected_byte(i, 5));
  }
  CHECK_FALSE(std::filesystem::exists(dir / "samples" / "digit_000007_3.png"));
}

TEST_CASE("image_writer chain: a row per image and a column per chain step") {
  TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto writer = make_node("image_writer", "{layout: chain, field: chain, scale: 2}", ctx);
  // [N=2, K=5, C=1, 3, 3]: element (n, k) gets value index n*5+k of 10.
  const Tensor flat = constant_images({10, 1, 3, 3});  // reshaped() is a view: keep the owner alive
  const Tensor chain = flat.reshaped({2, 5, 1, 3, 3});
  write_packet(*writer, Packet(3).with("chain", chain));
  const cv::Mat image = cv::imread((dir / "samples" / "chain_000003.png").string(), cv::IMREAD_UNCHANGED);
  REQUIRE(!image.empty());
  CHECK(image.cols == 5 * 6 + 4 * kImageGap);
  CHECK(image.rows == 2 * 6 + 1 * kImageGap);
  for (int n = 0; n < 2; ++n) {
    for (int k = 0; k < 5; ++k) {
      CHECK(image.at<uint8_t>(n * (6 + kImageGap) + 1, k * (6 + kImageGap) + 1) == expected_byte(n * 5 + k, 10));
    }
  }
}

TEST_CASE("image_writer writes nothing without an output folder") {
  TempDir dir;
  RunContext ctx;  // out_dir empty
  auto writer = make_node("image_writer", "{}", ctx);
  write_packet(*writer, Packet(0).with("x0", constant_images({2, 1, 3, 3})));
  CHECK(static_cast<ImageWriter&>(*writer).file_for(0).empty());
  CHECK(std::filesystem::is_empty(dir.path()));
}

TEST_CASE("image_writer rejects a field of the wrong rank, naming field and shape") {
  TempDir dir;
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto writer = make_node("image_writer", "{layout: chain}", ctx);
  CollectingEmitter out;
  CHECK_THROWS_WITH(writer->process(single_input(Packet(0).with("x0", constant_images({2, 1, 3, 3})).share()), out),
                    doctest::Contains("'x0' must be an f32 [N,K,C,H,W]"));
}

TEST_CASE("write_png_grid clamps values outside [-1,1] and writes the file atomically") {
  TempDir dir;
  const Tensor images = Tensor::from_vector({2, 1, 1, 2}, {-5.0f, 3.0f, 0.0f, -1.0f});
  write_png_grid(images, 1, 1, dir / "deep" / "grid.png");
  const cv::Mat image = cv::imread((dir / "deep" / "grid.png").string(), cv::IMREAD_UNCHANGED);
  REQUIRE(image.rows == 1 + kImageGap + 1);
  REQUIRE(image.cols == 2);
  CHECK(image.at<uint8_t>(0, 0) == 0);
  CHECK(image.at<uint8_t>(0, 1) == 255);
  CHECK(image.at<uint8_t>(3, 0) == 128);  // 0 -> round(0.5 * 255)
  CHECK(image.at<uint8_t>(3, 1) == 0);
  CHECK_FALSE(std::filesystem::exists(dir / "deep" / "grid.png.tmp"));
  CHECK_THROWS_AS(tensor_to_image_grid(Tensor::from_vector({1, 2, 1, 1}, {0.0f, 0.0f}), 1), std::invalid_argument);
}

TEST_CASE("image_writer declares its field as an f32 tensor and spells its layouts as in YAML") {
  const NodeContract* contract = Registry::instance().node_contract("image_writer");
  REQUIRE(contract != nullptr);
  REQUIRE(contract->inputs.at(0).field_params.size() == 1);
  const FieldParam& field = contract->inputs[0].field_params[0];
  CHECK(field.param == "field");
  CHECK(field.expects.kind == FieldKind::tensor);
  CHECK(field.expects.dtype == DType::f32);
  CHECK(field.expects.rank == -1);  // 4 or 5 by layout: checked when writing
  CHECK(enum_choices<ImageWriter::Layout>() == std::vector<std::string>{"grid", "strip", "per_image", "chain"});

  RunContext ctx;
  CHECK_THROWS_WITH_AS(make_node("image_writer", "{layout: chian}", ctx), doctest::Contains("did you mean 'chain'"),
                       ConfigErrors);
  TempDir dir;
  ctx.set_out_dir(dir.path());
  auto writer = make_node("image_writer", "{layout: per_image}", ctx);  // prefix: the layout's name
  write_packet(*writer, Packet(1).with("x0", constant_images({2, 1, 3, 3})));
  CHECK(std::filesystem::exists(dir / "samples" / "per_image_000001_1.png"));
}
