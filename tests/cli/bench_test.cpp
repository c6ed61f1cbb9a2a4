// `diffuflow bench`: each kind runs end to end on tiny settings and writes
// valid JSON, CSV and PNG. No timing is asserted: this is a loaded test machine.
#include "nodes/common/plots.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <filesystem>
#include <set>
#include <sstream>

using namespace diffuflow::test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {


std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

// Runs a bench with --json/--csv/--plot into `dir`; checks what every bench writes; returns the JSON.
json run_bench(const TempDir& dir, const std::string& args, size_t rows) {
  const auto result = run_cli("bench " + args + " --json " + (dir / "b.json").string() + " --csv " +
                              (dir / "b.csv").string() + " --plot " + (dir / "b.png").string());
  CAPTURE(args);
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(contains(result.output, "machine: "));
  CHECK(contains(result.output, "oneDNN ISA: "));
  CHECK(contains(result.output, "versions: oneDNN"));
  CHECK(contains(result.output, "images/s"));

  const json j = json::parse(read_file(dir / "b.json"));
  for (const char* key : {"bench", "pipeline", "machine", "settings", "method", "sweep", "results"}) {
    CAPTURE(key);
    CHECK(j.contains(key));
  }
  for (const char* key : {"cpu_model", "cores", "cpus", "openmp_wait", "isa", "versions"}) CHECK(j["machine"].contains(key));
  for (const char* key : {"config", "batch", "threads", "steps", "warmup", "repeats"}) CHECK(j["settings"].contains(key));
  REQUIRE(j["results"].size() == rows);
  for (const auto& r : j["results"]) {
    for (const char* key : {"sweep_value", "threads", "batch", "images_per_s", "model_busy_fraction",
                            "unet_forwards_per_s", "peak_rss_mib", "nodes", "repeats"}) {
      CAPTURE(key);
      CHECK(r.contains(key));
    }
    CHECK(r["images_per_s"]["median"].get<double>() > 0);
    CHECK(r["images_per_s"]["min"].get<double>() <= r["images_per_s"]["median"].get<double>());
    CHECK(r["images_per_s"]["max"].get<double>() >= r["images_per_s"]["median"].get<double>());
    CHECK(r["peak_rss_mib"].get<double>() > 0);
  }

  const auto csv = lines_of(read_file(dir / "b.csv"));
  REQUIRE(csv.size() == rows + 1);
  CHECK(contains(csv[0], "images_per_s_median,images_per_s_min,images_per_s_max"));

  const cv::Mat png = cv::imread((dir / "b.png").string());
  REQUIRE(!png.empty());
  CHECK(png.cols == 800);
  CHECK(png.rows == 480);
  return j;
}

std::set<std::string> node_names(const json& result) {
  std::set<std::string> names;
  for (const auto& n : result["nodes"]) names.insert(n["name"].get<std::string>());
  return names;
}

}  // namespace

TEST_CASE("bench train runs the training graph and reports the model's share of the time") {
  TempDir dir;
  const json j = run_bench(dir, "train --config unet-tiny --batch 4 --warmup 1 --steps 2 --repeats 1 --threads 1", 1);
  CHECK(j["bench"] == "train");
  CHECK(j["sweep"].is_null());
  const auto& r = j["results"][0];
  CHECK(r["threads"] == 1);
  CHECK(r["batch"] == 4);
  const auto names = node_names(r);
  for (const char* n : {"data", "noiser", "forward", "loss", "backward", "optimiser"}) CHECK(names.count(n));
  CHECK(r["model_busy_fraction"].get<double>() > 0);
  CHECK(r["model_busy_fraction"].get<double>() <= 1.0 + 1e-9);
  const auto& rep = r["repeats"][0];
  CHECK(rep["images"] == 8);  // K * batch
  CHECK(rep["steps"] == 2);
  for (const auto& n : rep["nodes"]) {
    if (n["name"] == "backward") CHECK(n["count"] == 2);  // invocations of the measured steps only
  }
  // Nothing is written outside the files asked for: no checkpoints, no run folder.
  CHECK(!fs::exists(source_dir() / "checkpoints"));
}

TEST_CASE("bench sample sweeps max_in_flight and counts U-Net forwards") {
  TempDir dir;
  const json j = run_bench(dir,
                           "sample --config unet-tiny --batch 4 --warmup 1 --steps 2 --repeats 1 "
                           "--set sampler.steps=3 --sweep max_in_flight=1,2",
                           2);
  CHECK(j["sweep"]["name"] == "max_in_flight");
  CHECK(j["results"][0]["sweep_value"] == "1");
  CHECK(j["results"][1]["sweep_value"] == "2");
  for (const auto& r : j["results"]) {
    CHECK(r["unet_forwards_per_s"].get<double>() > 0);
    CHECK(r["repeats"][0]["forwards_per_chain"].get<double>() == doctest::Approx(3.0));
  }
}

TEST_CASE("bench data sweeps threads with repeats") {
  TempDir dir;
  const json j = run_bench(dir, "data --batch 4 --warmup 1 --steps 3 --repeats 2 --sweep threads=1,2", 2);
  CHECK(j["results"][0]["threads"] == 1);
  CHECK(j["results"][1]["threads"] == 2);
  CHECK(j["results"][0]["repeats"].size() == 2);
  const auto names = node_names(j["results"][0]);
  CHECK(names.count("augment"));
  CHECK(!names.count("forward"));
}

TEST_CASE("bench data with --graph-threads runs the graph under that TBB limit and records it") {
  TempDir dir;
  const auto result = run_cli("bench data --batch 4 --warmup 1 --steps 2 --repeats 1 --threads 2 --graph-threads 1 "
                              "--json " + (dir / "b.json").string());
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(contains(result.output, "the graph's TBB threads: 1"));
  const json j = json::parse(read_file(dir / "b.json"));
  CHECK(j["settings"]["graph_threads"] == 1);
  CHECK(j["settings"]["threads"] == 2);
  CHECK(j["results"][0]["images_per_s"]["median"].get<double>() > 0);
}

TEST_CASE("bench data sweeps a node's concurrency and any node parameter") {
  TempDir dir;
  run_bench(dir, "data --batch 4 --warmup 1 --steps 2 --repeats 1 --sweep concurrency=augment:1,2", 2);
  const json j = run_bench(dir, "data --batch 4 --warmup 1 --steps 2 --repeats 1 --sweep augment.pad=0,4", 2);
  CHECK(j["sweep"]["name"] == "augment.pad");
}

TEST_CASE("bench unet runs the bench-unet measurement") {
  TempDir dir;
  const json j = run_bench(dir, "unet --config unet-tiny --batch 2 --warmup 0 --steps 1 --repeats 1", 1);
  CHECK(j["results"][0]["repeats"][0].contains("forward_images_per_s"));
}

TEST_CASE("bench unet sweeps the convolution precision") {
  TempDir dir;
  const json j = run_bench(dir, "unet --config unet-tiny --batch 2 --warmup 0 --steps 1 --repeats 1 "
                                "--sweep precision=f32,bf16", 2);
  CHECK(j["sweep"]["name"] == "precision");
  CHECK(j["results"][0]["sweep_value"] == "f32");
  CHECK(j["results"][1]["sweep_value"] == "bf16");
  // The value reached bench-unet, which reports the precision it ran.
  CHECK(j["results"][0]["repeats"][0]["precision"] == "f32");
  CHECK(j["results"][1]["repeats"][0]["precision"] == "bf16");
}

TEST_CASE("bench unet sweeps teams, and bench train splits its U-Net's batch between teams") {
  TempDir dir;
  const json j = run_bench(dir, "unet --config unet-tiny --batch 4 --warmup 0 --steps 1 --repeats 1 --threads 2 "
                                "--sweep teams=1,2", 2);
  CHECK(j["sweep"]["name"] == "teams");
  CHECK(j["results"][0]["teams"] == 1);
  CHECK(j["results"][1]["teams"] == 2);
  CHECK(j["results"][1]["threads"] == 2);
  const auto train = run_cli("bench train --config unet-tiny --batch 4 --warmup 1 --steps 2 --repeats 1 --threads 2 "
                             "--teams 2 --json " + (dir / "t.json").string());
  CAPTURE(train.output);
  REQUIRE(train.exit_code == 0);
  CHECK(contains(train.output, "in 2 teams"));
  CHECK(json::parse(read_file(dir / "t.json"))["settings"]["teams"] == 2);
  // The pipeline's own teams: is what a row records when --teams is not given.
  const json own = run_bench(dir, "train --config unet-tiny --batch 4 --warmup 1 --steps 2 --repeats 1 --threads 2 "
                                  "--set teams=2", 1);
  CHECK(own["results"][0]["teams"] == 2);
}

TEST_CASE("bench: bad kinds, sweeps and overrides are bad input (exit 2)") {
  for (const std::string args : {"bench trian", "bench train --sweep colour=1,2", "bench train --sweep threads=0",
                                 "bench data --set augment.pad=-1", "bench data --sweep concurrency=nobody:1",
                                 "bench train --steps 0", "bench unet --sweep max_in_flight=1",
                                 "bench unet --sweep precision=f16", "bench train --sweep precision=bf16",
                                 "bench unet --threads 3 --teams 2",
                                 "bench matmul --teams 2", "bench train --threads 3 --teams 2",
                                 "bench unet --sweep teams=0", "bench data --teams 2"}) {
    const auto result = run_cli(args);
    CAPTURE(args);
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
  }
}

TEST_CASE("draw_line_plot draws points, error bars and axes") {
  diffuflow::LineSeries s{"demo", {16, 32, 64}, {10, 20, 15}, {9, 18, 14}, {11, 22, 16}};
  diffuflow::LinePlotStyle style;
  style.title = "demo";
  style.x_label = "batch";
  style.y_label = "images/s";
  style.categorical_x = true;
  const cv::Mat image = diffuflow::draw_line_plot({s}, style);
  CHECK(image.cols == 800);
  CHECK(image.rows == 480);
  CHECK(image.type() == CV_8UC3);
  cv::Mat grey;
  cv::extractChannel(image, grey, 0);
  CHECK(cv::countNonZero(grey < 128) > 500);  // lines and text were drawn
  // Empty and degenerate input still gives a picture.
  CHECK(!diffuflow::draw_line_plot({}, style).empty());
  diffuflow::LineSeries one{"", {1}, {NAN}, {}, {}};
  CHECK(!diffuflow::draw_line_plot({one}, style).empty());
}

TEST_CASE("diffuflow plot draws CSV columns; bad columns and files are bad input") {
  TempDir dir;
  write_file(dir / "s.csv", "threads,a,b,label\n1,10,12,x\n2,19,,y\n4,35,30,z\n");
  const auto ok = run_cli("plot " + (dir / "s.csv").string() + " --x threads --y a,b --categorical --out " +
                          (dir / "s.png").string());
  CAPTURE(ok.output);
  CHECK(ok.exit_code == 0);
  const cv::Mat image = cv::imread((dir / "s.png").string());
  CHECK(image.cols == 800);
  CHECK(image.rows == 480);
  for (const std::string args : {" --x threads --y nope --out p.png", " --x label --y a --out p.png",
                                 " --x threads --out p.png"}) {
    const auto bad = run_cli("plot " + (dir / "s.csv").string() + args);
    CAPTURE(args);
    CAPTURE(bad.output);
    CHECK(bad.exit_code == 2);
  }
  write_file(dir / "ragged.csv", "x,y\n1,2\n3\n");
  const auto ragged = run_cli("plot " + (dir / "ragged.csv").string() + " --x x --y y --out " +
                              (dir / "r.png").string());
  CHECK(ragged.exit_code == 2);
  CHECK(contains(ragged.output, "ragged.csv:3"));
  CHECK_FALSE(fs::exists(dir / "r.png"));
}
