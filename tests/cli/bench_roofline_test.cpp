// The work per layer kind of `bench unet --breakdown` (FLOPs and bytes of the
// profiled steps) and the roofline figure of `bench unet --roofline`. No
// timing is asserted.
#include "nodes/common/images.hpp"
#include "test_util.hpp"
#include "tiny_bench_unet.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <opencv2/imgcodecs.hpp>

using namespace diffuflow;
using namespace diffuflow::test;
using json = nlohmann::json;

TEST_CASE("bench unet --breakdown counts each layer kind's FLOPs and bytes, and the convolutions' FLOPs dominate") {
  TempDir dir;
  std::string output;
  const json r = run_tiny_bench_unet("--mode both --breakdown", dir.path(), output)[0]["repeats"][0];
  CHECK(contains(output, "work per layer kind"));
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

TEST_CASE("bench unet --breakdown with teams profiles part 0 and counts the whole batch's work for the pass") {
  TempDir dir;
  // A batch of 3 in 2 parts: part 0 has 2 samples.
  const auto result = run_cli("bench unet --config unet-tiny --batch 3 --warmup 0 --steps 1 --repeats 1 --threads 2 "
                              "--teams 2 --mode both --breakdown --json " + (dir / "u.json").string());
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(contains(result.output, "split into 2 parts, one per team: the steps are part 0's (2 samples"));
  const json r = json::parse(read_file(dir / "u.json"))["results"][0]["repeats"][0];
  const json& b = r["breakdown"];
  CHECK(b["profiled_part"]["parts"] == 2);
  CHECK(b["profiled_part"]["samples"] == 2);
  double forward_gflop = 0, backward_ms = 0;
  for (const auto& layer : b["layers"]) forward_gflop += layer["forward"]["gflop"].get<double>();
  for (const auto& row : b["rows"]) backward_ms += row["backward_ms"].get<double>();
  CHECK(backward_ms > 0);
  // The rows are one part's steps (2 samples' work), not both parts' ...
  const double analytic = r["gflops_per_image_forward"].get<double>() * 2;
  CHECK(forward_gflop >= analytic * 0.999);
  CHECK(forward_gflop <= analytic * 1.1);
  // ... and the pass line counts the batch of 3.
  const double unet = b["unet"]["forward"]["gflop"].get<double>();
  CHECK(unet >= analytic * 1.5 * 0.999);
  CHECK(unet <= analytic * 1.5 * 1.1);
}

TEST_CASE("bench unet --roofline measures the bandwidth, places each layer kind under the roofs and writes the PNG") {
  TempDir dir;
  const auto png = dir / "figures" / "roofline.png";  // the missing folder is created
  const auto result = run_cli("bench unet --config unet-tiny --batch 2 --warmup 0 --steps 1 --repeats 1 --threads 1 "
                              "--mode both --roofline " + png.string() + " --json " + (dir / "u.json").string());
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(contains(result.output, "memory bandwidth "));
  CHECK(contains(result.output, "roofline: memory roof"));
  CHECK(contains(result.output, "work per layer kind"));  // --roofline implies --breakdown
  const cv::Mat image = cv::imread(png.string());
  REQUIRE(!image.empty());
  CHECK(image.cols == 900);
  CHECK(read_png_text(png).empty());  // no metadata (and so no machine paths) in the file

  const json j = json::parse(read_file(dir / "u.json"));
  const json& roofline = j["results"][0]["repeats"][0]["roofline"];
  const double bandwidth = roofline["bandwidth_gb_per_s"].get<double>(), peak = roofline["peak_gflops_per_s"].get<double>();
  CHECK(bandwidth > 0);
  CHECK(peak > 0);
  CHECK(j["results"][0]["memory_bandwidth_gb_per_s"].get<double>() == doctest::Approx(bandwidth));
  for (const char* pass : {"forward", "forward_backward"}) {
    CAPTURE(pass);
    REQUIRE(roofline[pass].size() >= 5);
    CHECK(roofline[pass].back()["name"] == "U-Net");
    for (const auto& p : roofline[pass]) {
      const double intensity = p["flop_per_byte"].get<double>();
      CHECK(p["roof_gflops_per_s"].get<double>() == doctest::Approx(std::min(peak, bandwidth * intensity)));
      if (p["roof_gflops_per_s"].get<double>() > 0) {
        CHECK(p["fraction_of_roof"].get<double>() ==
              doctest::Approx(p["gflops_per_s"].get<double>() / p["roof_gflops_per_s"].get<double>()));
      }
    }
  }
}

TEST_CASE("bench unet --roofline refuses paths it cannot write, other kinds and sweeps, before measuring (exit 2)") {
  TempDir dir;
  write_file(dir / "file.txt", "not a folder");
  for (const std::string args :
       {"bench unet --roofline " + (dir / "r.jpg").string(), "bench unet --roofline " + dir.path().string() + "/",
        "bench unet --roofline " + (dir / "file.txt" / "r.png").string(),
        "bench unet --roofline " + (dir / "file.txt" / "sub" / "r.png").string(),
        "bench matmul --roofline " + (dir / "r.png").string(),
        "bench unet --sweep threads=1,2 --roofline " + (dir / "r.png").string()}) {
    const auto result = run_cli(args);
    CAPTURE(args);
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
    CHECK(contains(result.output, "--roofline"));
    CHECK(!contains(result.output, "images/s"));  // refused before anything ran
  }
}

TEST_CASE("diffuflow roofline draws a saved bench unet --breakdown result from its median repeat") {
  TempDir dir;
  std::string output;
  run_tiny_bench_unet("--mode both --breakdown", dir.path(), output);
  // Three repeats with made-up rates and peaks: the median rate (2.0) must give the compute roof (200).
  json j = json::parse(read_file(dir / "u.json"));
  json& repeats = j["results"][0]["repeats"];
  const json base = repeats[0];
  repeats = json::array();
  for (const double rate : {3.0, 1.0, 2.0}) {
    json r = base;
    r["images_per_s"] = rate;
    r["matmul_peak_gflops_per_s"] = 100.0 * rate;
    repeats.push_back(r);
  }
  write_file(dir / "three.json", j.dump());
  const auto png = dir / "r.png";
  const auto ok = run_cli("roofline " + (dir / "three.json").string() + " --bandwidth 12.5 --out " + png.string());
  CAPTURE(ok.output);
  REQUIRE(ok.exit_code == 0);
  CHECK(contains(ok.output, "memory roof 12.5 GB/s"));
  CHECK(contains(ok.output, "compute roof 200.0 GFLOP/s"));  // the median repeat's peak
  CHECK(contains(ok.output, "U-Net"));
  const cv::Mat image = cv::imread(png.string());
  REQUIRE(!image.empty());
  CHECK(image.cols == 900);

  const auto given = run_cli("roofline " + (dir / "three.json").string() + " --bandwidth 12.5 --compute-roof 777 --out " +
                             (dir / "p.png").string());
  CHECK(given.exit_code == 0);
  CHECK(contains(given.output, "compute roof 777.0 GFLOP/s"));
}

TEST_CASE("diffuflow roofline refuses what is not one bench unet run with a breakdown, naming the file (exit 2)") {
  TempDir dir;
  std::string output;
  run_tiny_bench_unet("--mode both", dir.path(), output);  // no --breakdown
  const json plain = json::parse(read_file(dir / "u.json"));
  json other = plain;
  other["bench"] = "train";
  json sweep = plain;
  sweep["results"].push_back(sweep["results"][0]);
  json wrong_type = plain;
  wrong_type["results"][0]["repeats"][0]["images_per_s"] = "fast";
  write_file(dir / "plain.json", plain.dump());
  run_tiny_bench_unet("--mode both --breakdown", dir.path(), output);
  json negative = json::parse(read_file(dir / "u.json"));
  negative["results"][0]["repeats"][0]["breakdown"]["layers"][0]["forward"]["gflops_per_s"] = -1.0;
  write_file(dir / "negative.json", negative.dump());
  write_file(dir / "other.json", other.dump());
  write_file(dir / "sweep.json", sweep.dump());
  write_file(dir / "type.json", wrong_type.dump());
  write_file(dir / "broken.json", "{\"bench\": \"unet\",\n  \"results\": [");
  const std::pair<std::string, std::string> cases[] = {
      {"plain.json", "--breakdown"}, {"other.json", "not a `bench unet` result"}, {"sweep.json", "a sweep"},
      {"type.json", "not a `bench unet` result"}, {"broken.json", "not valid JSON"}, {"missing.json", "cannot open"},
      {"negative.json", "is negative"}};
  for (const auto& [file, message] : cases) {
    const auto result = run_cli("roofline " + (dir / file).string() + " --bandwidth 10 --out " + (dir / "r.png").string());
    CAPTURE(file);
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
    CHECK(contains(result.output, file));
    CHECK(contains(result.output, message));
    CHECK(!std::filesystem::exists(dir / "r.png"));
  }
  const std::string png = (dir / "r.png").string(), jpg = (dir / "r.jpg").string();
  for (const std::string args : {" --out " + png, " --bandwidth 0 --out " + png, " --bandwidth 10 --out " + jpg}) {
    const auto result = run_cli("roofline " + (dir / "plain.json").string() + args);
    CAPTURE(args);
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
  }
}
