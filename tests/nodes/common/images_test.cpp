#include "nodes/common/images.hpp"

#include "graph/errors.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <opencv2/imgcodecs.hpp>

#include <fstream>

using namespace diffuflow;
using diffuflow::test::TempDir;

namespace {

cv::Mat small_picture() {
  cv::Mat image(6, 10, CV_8UC1, cv::Scalar(0));
  image.at<uint8_t>(2, 3) = 255;
  return image;
}

}  // namespace

TEST_CASE("a PNG written with text chunks keeps its pixels and gives the text back in order") {
  TempDir dir;
  const auto file = dir / "picture.png";
  const PngText text = {{"parameters", "sampler: ddim, steps: 50, seed: 0"}, {"Software", "diffuflow"}};
  write_png_atomic(small_picture(), file, text);
  const cv::Mat read = cv::imread(file.string(), cv::IMREAD_UNCHANGED);
  REQUIRE(read.rows == 6);
  CHECK(cv::countNonZero(read != small_picture()) == 0);
  CHECK(read_png_text(file) == text);
  // Without text: no chunks.
  write_png_atomic(small_picture(), dir / "plain.png");
  CHECK(read_png_text(dir / "plain.png").empty());
}

TEST_CASE("PNG text refuses keywords a reader could not parse, and a damaged file is a DataError") {
  TempDir dir;
  CHECK_THROWS_AS(write_png_atomic(small_picture(), dir / "a.png", {{"", "x"}}), std::invalid_argument);
  CHECK_THROWS_AS(write_png_atomic(small_picture(), dir / "b.png", {{std::string(80, 'k'), "x"}}),
                  std::invalid_argument);
  CHECK_THROWS_AS(write_png_atomic(small_picture(), dir / "c.png", {{"key", std::string("a\0b", 3)}}),
                  std::invalid_argument);

  const auto file = dir / "picture.png";
  write_png_atomic(small_picture(), file, {{"parameters", "seed: 1"}});
  std::string bytes = diffuflow::test::read_file(file);
  const size_t value = bytes.find("seed: 1");
  REQUIRE(value != std::string::npos);
  bytes[value] = 'S';  // the chunk's CRC no longer matches
  diffuflow::test::write_file(dir / "damaged.png", bytes);
  CHECK_THROWS_WITH_AS(read_png_text(dir / "damaged.png"), doctest::Contains("fails its CRC"), DataError);
  diffuflow::test::write_file(dir / "text.png", "not a picture");
  CHECK_THROWS_WITH_AS(read_png_text(dir / "text.png"), doctest::Contains("not a PNG"), DataError);
  diffuflow::test::write_file(dir / "short.png", bytes.substr(0, 40));
  CHECK_THROWS_WITH_AS(read_png_text(dir / "short.png"), doctest::Contains("cut short"), DataError);
}
