#include "nodes/data/image_folder_loader.hpp"

#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <opencv2/imgcodecs.hpp>

#include <algorithm>

using namespace diffuflow;
using namespace diffuflow::test;

namespace {

std::string folder_params(const TempDir& dir, const std::string& extra) {
  return "{path: '" + dir.path().string() + "'" + (extra.empty() ? "" : ", " + extra) + "}";
}

void write_image(const std::filesystem::path& path, int rows, int cols, const cv::Scalar& bgr) {
  std::filesystem::create_directories(path.parent_path());
  const cv::Mat image(rows, cols, CV_8UC3, bgr);
  REQUIRE(cv::imwrite(path.string(), image));
}

CollectingEmitter drain(Node& source) {
  CollectingEmitter out;
  int guard = 10000;
  while (source.produce(out) && guard-- > 0) {
  }
  return out;
}

}  // namespace

TEST_CASE("image_folder_loader resizes mixed sizes to one size and keeps colours in RGB order") {
  TempDir dir;
  write_image(dir / "wide.png", 20, 60, cv::Scalar(255, 0, 0));   // blue (BGR)
  write_image(dir / "tall.png", 90, 30, cv::Scalar(0, 0, 255));   // red
  write_image(dir / "small.jpg", 8, 8, cv::Scalar(0, 255, 0));    // green, enlarged
  RunContext ctx;
  auto loader = make_node("image_folder_loader",
                          folder_params(dir, "size: 16, channels: 3, batch_size: 3, shuffle: false"), ctx);
  CollectingEmitter out;
  REQUIRE(loader->produce(out));
  const Tensor& x0 = out.packet(0).tensor("x0");
  CHECK(x0.shape() == Shape{3, 3, 16, 16});
  const auto v = x0.to_vector();
  auto at = [&](int n, int c, int y, int x) { return v[((n * 3 + c) * 16 + y) * 16 + x]; };
  // Sorted paths: small.jpg, tall.png, wide.png.
  CHECK(at(0, 1, 8, 8) == doctest::Approx(1.0f).epsilon(0.02));   // green in channel 1
  CHECK(at(0, 0, 8, 8) == doctest::Approx(-1.0f).epsilon(0.02));
  CHECK(at(1, 0, 8, 8) == doctest::Approx(1.0f));                 // red in channel 0
  CHECK(at(1, 2, 8, 8) == doctest::Approx(-1.0f));
  CHECK(at(2, 2, 0, 0) == doctest::Approx(1.0f));                 // blue in channel 2
  CHECK(*std::min_element(v.begin(), v.end()) >= -1.0f);
  CHECK(*std::max_element(v.begin(), v.end()) <= 1.0f);
  auto labels = out.packet(0).tensor("labels").map<int32_t>();
  CHECK(labels[0] == 0);
  CHECK(labels[2] == 0);
}

TEST_CASE("image_folder_loader centre-crops the longer side") {
  TempDir dir;
  // 10 rows x 30 cols: left third black, middle white, right third black.
  cv::Mat image(10, 30, CV_8UC1, cv::Scalar(0));
  image(cv::Rect(10, 0, 10, 10)).setTo(255);
  REQUIRE(cv::imwrite((dir / "a.png").string(), image));
  RunContext ctx;
  auto loader = make_node("image_folder_loader", folder_params(dir, "size: 10, channels: 1, batch_size: 1"), ctx);
  CollectingEmitter out;
  REQUIRE(loader->produce(out));
  const auto v = out.packet(0).tensor("x0").to_vector();
  REQUIRE(v.size() == 100);
  for (float value : v) CHECK(value == doctest::Approx(1.0f));
}

TEST_CASE("image_folder_loader labels images by sorted class subfolder") {
  TempDir dir;
  write_image(dir / "zebra" / "1.png", 8, 8, cv::Scalar(10, 10, 10));
  write_image(dir / "apple" / "deep" / "2.png", 8, 8, cv::Scalar(200, 200, 200));
  write_image(dir / "apple" / "3.png", 8, 8, cv::Scalar(200, 200, 200));
  RunContext ctx;
  auto loader = make_node("image_folder_loader",
                          folder_params(dir, "size: 8, channels: 1, batch_size: 3, shuffle: false"), ctx);
  auto& typed = static_cast<ImageFolderLoader&>(*loader);
  CHECK(typed.class_names() == std::vector<std::string>{"apple", "zebra"});
  CollectingEmitter out;
  REQUIRE(loader->produce(out));
  CHECK(out.packet(0).tensor("x0").shape() == Shape{3, 1, 8, 8});
  auto labels = out.packet(0).tensor("labels").map<int32_t>();
  CHECK(labels[0] == 0);
  CHECK(labels[1] == 0);
  CHECK(labels[2] == 1);
}

TEST_CASE("image_folder_loader reads only the top folder when recursive is off") {
  TempDir dir;
  write_image(dir / "top.png", 8, 8, cv::Scalar(0, 0, 0));
  write_image(dir / "sub" / "below.png", 8, 8, cv::Scalar(0, 0, 0));
  RunContext ctx;
  auto flat = make_node("image_folder_loader", folder_params(dir, "size: 8, recursive: false, batch_size: 1"), ctx);
  CHECK(static_cast<ImageFolderLoader&>(*flat).size() == 1);
  auto deep = make_node("image_folder_loader", folder_params(dir, "size: 8, batch_size: 1"), ctx);
  CHECK(static_cast<ImageFolderLoader&>(*deep).size() == 2);
}

TEST_CASE("image_folder_loader skips a corrupt file under on_error: skip") {
  TempDir dir;
  write_image(dir / "good1.png", 8, 8, cv::Scalar(0, 0, 0));
  write_image(dir / "good2.png", 8, 8, cv::Scalar(0, 0, 0));
  write_file(dir / "broken.png", "\x89PNG\r\n\x1a\n this is not really a png");
  RunContext ctx;
  auto loader = make_node("image_folder_loader", folder_params(dir, "size: 8, batch_size: 2, on_error: skip"), ctx);
  CHECK(static_cast<ImageFolderLoader&>(*loader).size() == 2);
  CHECK(drain(*loader).size() == 1);
}

TEST_CASE("image_folder_loader fails on a corrupt file under on_error: fail, naming it") {
  TempDir dir;
  write_image(dir / "good.png", 8, 8, cv::Scalar(0, 0, 0));
  write_file(dir / "broken.jpg", "not a jpeg at all");
  RunContext ctx;
  try {
    make_node("image_folder_loader", folder_params(dir, "size: 8, batch_size: 1, on_error: fail"), ctx);
    FAIL("expected a DataError");
  } catch (const DataError& e) {
    CHECK(e.path() == (dir / "broken.jpg").string());
    CHECK(std::string(e.what()).find("cannot read the image") != std::string::npos);
  }
}

TEST_CASE("image_folder_loader rejects an empty folder and a missing one") {
  TempDir dir;
  write_file(dir / "notes.txt", "no images here");
  RunContext ctx;
  try {
    make_node("image_folder_loader", folder_params(dir, ""), ctx);
    FAIL("expected a DataError");
  } catch (const DataError& e) {
    CHECK(e.path() == dir.path().string());
    CHECK(std::string(e.what()).find("no images found") != std::string::npos);
  }
  CHECK_THROWS_AS(make_node("image_folder_loader", "{path: '" + (dir / "missing").string() + "'}", ctx), DataError);
}

TEST_CASE("image_folder_loader honours epochs, drop_last and max_steps") {
  TempDir dir;
  for (int i = 0; i < 5; ++i) write_image(dir / ("img" + std::to_string(i) + ".png"), 8, 8, cv::Scalar(i * 40, 0, 0));
  RunContext ctx;
  auto dropped = make_node("image_folder_loader", folder_params(dir, "size: 8, batch_size: 2, epochs: 3"), ctx);
  CHECK(drain(*dropped).size() == 6);
  auto kept = make_node("image_folder_loader",
                        folder_params(dir, "size: 8, batch_size: 2, epochs: 3, drop_last: false"), ctx);
  CHECK(drain(*kept).size() == 9);
  ctx.max_steps = 4;
  auto limited = make_node("image_folder_loader", folder_params(dir, "size: 8, batch_size: 2, epochs: 0"), ctx);
  CHECK(drain(*limited).size() == 4);
}
