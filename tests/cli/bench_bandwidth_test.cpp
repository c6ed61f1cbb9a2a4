// The memory bandwidth probe (runners/bench_bandwidth.hpp) and `diffuflow
// bench bandwidth`. No timing is asserted.
#include "graph/errors.hpp"
#include "runners/bench_bandwidth.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

using namespace diffuflow;
using namespace diffuflow::test;
using json = nlohmann::json;

TEST_CASE("a bandwidth is the bytes read and written per pass over the median and fastest pass times") {
  MemoryBandwidth bw;
  bw.settings.mib = 1000;
  CHECK(bw.bytes_per_pass() == doctest::Approx(2.0 * 1000 * 1024 * 1024));
  CHECK(bw.gb_per_s() == 0.0);  // nothing timed
  bw.median_s = 2.0;
  bw.min_s = 1.0;
  CHECK(bw.gb_per_s() == doctest::Approx(2.0 * 1000 * 1024 * 1024 / 2.0 * 1e-9));
  CHECK(bw.best_gb_per_s() == doctest::Approx(2.0 * bw.gb_per_s()));
}

TEST_CASE("the bandwidth probe times a small copy, and refuses sizes and counts out of range") {
  BandwidthSettings s;
  s.mib = 4;
  s.threads = 1;
  s.iters = 3;
  s.warmup = 0;
  const MemoryBandwidth bw = measure_bandwidth(s);
  CHECK(bw.settings.threads == 1);
  CHECK(!bw.implementation.empty());
  CHECK(bw.min_s <= bw.median_s);
  CHECK(bw.median_s <= bw.max_s);
  CHECK(bw.gb_per_s() > 0);

  for (auto change : {+[](BandwidthSettings& b) { b.mib = 0; }, +[](BandwidthSettings& b) { b.iters = 0; },
                      +[](BandwidthSettings& b) { b.warmup = -1; }, +[](BandwidthSettings& b) { b.threads = -1; }}) {
    BandwidthSettings bad;
    change(bad);
    CHECK_THROWS_AS(measure_bandwidth(bad), ConfigError);
  }
}

TEST_CASE("bench bandwidth prints GB/s and the ISA and writes them as JSON and CSV") {
  TempDir dir;
  const auto result = run_cli("bench bandwidth --mib 8 --threads 1 --steps 2 --warmup 1 --repeats 1 --sweep threads=1,2 "
                              "--json " + (dir / "b.json").string() + " --csv " + (dir / "b.csv").string());
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(contains(result.output, "GB/s"));
  CHECK(contains(result.output, "oneDNN ISA:"));
  CHECK(contains(result.output, "8 MiB copied per pass"));
  const json j = json::parse(read_file(dir / "b.json"));
  CHECK(j["bench"] == "bandwidth");
  REQUIRE(j["results"].size() == 2u);
  for (const auto& r : j["results"]) {
    CHECK(r["gb_per_s"]["median"].get<double>() > 0);
    CHECK(r["repeats"][0]["mib"] == 8);
    CHECK(r["repeats"][0]["gb_per_s_best"].get<double>() >= r["repeats"][0]["gb_per_s"].get<double>());
  }
  CHECK(contains(read_file(dir / "b.csv"), "gb_per_s_median"));
}

TEST_CASE("bench bandwidth options are checked (exit 2)") {
  for (const std::string args : {"bench bandwidth --mib 0", "bench bandwidth --precision bf16",
                                 "bench bandwidth --sweep precision=f32", "bench bandwidth --sweep batch=1,2",
                                 "bench bandwidth --breakdown", "bench matmul --mib 8", "bench bandwidth --set a.b=1"}) {
    const auto result = run_cli(args);
    CAPTURE(args);
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
  }
}
