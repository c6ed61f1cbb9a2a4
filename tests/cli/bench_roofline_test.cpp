// The work per layer kind of `bench unet --breakdown` (FLOPs and bytes of the
// profiled steps) and the roofline figure of `bench unet --roofline`. No
// timing is asserted.
#include "nodes/common/images.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <opencv2/imgcodecs.hpp>

using namespace diffuflow;
using namespace diffuflow::test;
using json = nlohmann::json;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("bench unet --breakdown counts each layer kind's FLOPs and bytes, and the convolutions' FLOPs dominate") {
  TempDir dir;
  const auto result = run_cli("bench unet --config unet-tiny --batch 2 --warmup 0 --steps 1 --repeats 1 --threads 1 "
                              "--mode both --breakdown --json " + (dir / "u.json").string());
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(contains(result.output, "work per layer kind"));
  const json r = json::parse(read_file(dir / "u.json"))["results"][0]["repeats"][0];
  const json& b = r["breakdown"];
  REQUIRE(b["layers"].size() > 0);
  double forward_gflop = 0;
  for (const auto& layer : b["layers"]) {
    CAPTURE(layer.dump());
    for (const char* pass : {"forward", "forward_backward"}) {
      const json& w = layer[pass];
      CHECK(w["mb"].get<double>() > 0);
      CHECK(w["gflop"].get<double>() >= 0);
      if (w["mb"].get<double>() > 0) {
        CHECK(w["flop_per_byte"].get<double>() == doctest::Approx(w["gflop"].get<double>() * 1e3 / w["mb"].get<double>()));
      }
    }
    // Backward adds work: forward+backward moves more than the forward alone.
    CHECK(layer["forward_backward"]["mb"].get<double>() > layer["forward"]["mb"].get<double>());
    forward_gflop += layer["forward"]["gflop"].get<double>();
    if (layer["layer"] == "convolution") CHECK(layer["forward"]["flop_per_byte"].get<double>() > 1);
    if (layer["layer"] == "group_norm") CHECK(layer["forward"]["flop_per_byte"].get<double>() < 1);
  }
  // The counted forward work is the analytic count (2*MACs) plus at most a few per-element operations.
  const double analytic = r["gflops_per_image_forward"].get<double>() * 2;
  CHECK(forward_gflop >= analytic * 0.999);
  CHECK(forward_gflop <= analytic * 1.1);
  CHECK(b["unet"]["forward"]["gflop"].get<double>() == doctest::Approx(forward_gflop));
  // Plausible traffic: at least the input and output images once (2 x 1x28x28 f32 each), at most 10 GB.
  const double mb = b["unet"]["forward"]["mb"].get<double>();
  CHECK(mb > 2 * 2 * 28 * 28 * 4 * 1e-6);
  CHECK(mb < 1e4);
}
