// The matmul peak probe (runners/bench_matmul.hpp), `diffuflow bench matmul`
// and the fractions of that peak `bench unet` reports. No timing is asserted.
#include "compute/program.hpp"
#include "graph/errors.hpp"
#include "runners/bench_matmul.hpp"
#include "test_util.hpp"
#include "tiny_bench_unet.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <set>

using namespace diffuflow;
using namespace diffuflow::test;
using json = nlohmann::json;

namespace {


bool cpu_has_native_bf16() { return native_bf16(dnnl::engine(dnnl::engine::kind::cpu, 0)); }

}  // namespace

TEST_CASE("matmul flops are 2 m n k and a fraction of an unknown peak is 0") {
  CHECK(matmul_flops(2048, 2048, 2048) == doctest::Approx(17179869184.0));
  CHECK(matmul_flops(3, 5, 7) == doctest::Approx(210.0));
  CHECK(fraction_of_peak(175.0, 350.0) == doctest::Approx(0.5));
  CHECK(fraction_of_peak(175.0, 0.0) == 0.0);
  CHECK(fraction_of_peak(175.0, -1.0) == 0.0);
}

TEST_CASE("a matmul peak is the flops of one pass over its median and fastest pass times") {
  MatmulPeak peak;
  peak.settings.size = 1000;
  peak.median_s = 2.0;
  peak.min_s = 1.0;
  CHECK(peak.gflops_per_s() == 0.0);  // not available: nothing was timed
  peak.available = true;
  CHECK(peak.gflops_per_s() == doctest::Approx(1.0));  // 2e9 flops in 2 s
  CHECK(peak.best_gflops_per_s() == doctest::Approx(2.0));
}

TEST_CASE("the matmul probe times a small f32 matmul, and refuses sizes and counts out of range") {
  MatmulPeakSettings s;
  s.size = 64;
  s.threads = 1;
  s.iters = 3;
  s.warmup = 0;
  const MatmulPeak peak = measure_matmul_peak(s);
  REQUIRE(peak.available);
  CHECK(peak.settings.threads == 1);
  CHECK(!peak.implementation.empty());
  CHECK(peak.min_s <= peak.median_s);
  CHECK(peak.median_s <= peak.max_s);
  CHECK(peak.gflops_per_s() > 0);

  s.precision = Precision::bf16;
  const MatmulPeak bf16 = measure_matmul_peak(s);
  CHECK(bf16.available == cpu_has_native_bf16());
  if (!bf16.available) CHECK(contains(bf16.why, "no native bf16"));

  MatmulPeakSettings bad;
  bad.size = 8;
  CHECK_THROWS_AS(measure_matmul_peak(bad), ConfigError);
  bad = MatmulPeakSettings{};
  bad.iters = 0;
  CHECK_THROWS_AS(measure_matmul_peak(bad), ConfigError);
}

TEST_CASE("bench matmul prints GFLOP/s per precision and writes them as JSON and CSV") {
  TempDir dir;
  const bool bf16 = cpu_has_native_bf16();
  const auto result = run_cli(std::string("bench matmul --threads 1 --steps 1 --warmup 0 --repeats 1 --sweep ") +
                              (bf16 ? "precision=f32,bf16" : "precision=f32") + " --json " +
                              (dir / "m.json").string() + " --csv " + (dir / "m.csv").string());
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(contains(result.output, "GFLOP/s"));
  const json j = json::parse(read_file(dir / "m.json"));
  CHECK(j["bench"] == "matmul");
  REQUIRE(j["results"].size() == (bf16 ? 2u : 1u));
  for (const auto& r : j["results"]) {
    CHECK(r["gflops_per_s"]["median"].get<double>() > 0);
    CHECK(r["repeats"][0]["size"] == 2048);
    CHECK(r["repeats"][0]["precision"] == r["sweep_value"]);
  }
  CHECK(contains(read_file(dir / "m.csv"), "gflops_per_s_median"));
}

TEST_CASE("bench matmul in bf16 on a CPU without native bf16 says so and fails") {
  if (cpu_has_native_bf16()) return;  // nothing to refuse here
  const auto result = run_cli("bench matmul --precision bf16 --steps 1 --warmup 0 --repeats 1");
  CAPTURE(result.output);
  CHECK(result.exit_code == 1);
  CHECK(contains(result.output, "no native bf16"));
}

TEST_CASE("bench matmul and bench unet options: precision, sweeps, mode and overrides are checked (exit 2)") {
  for (const std::string args :
       {"bench matmul --precision fp8", "bench matmul --sweep batch=1,2", "bench matmul --set a.b=1",
        "bench train --precision bf16", "bench data --mode both", "bench unet --precision f16",
        "bench unet --convolution fft", "bench train --convolution direct", "bench unet --sweep convolution=direct,fft",
        "bench matmul --sweep convolution=direct", "bench-unet --convolution sideways",
        "bench unet --bf16-backward nhwc", "bench train --bf16-backward blocked",
        "bench unet --sweep bf16_backward=blocked,diagonal", "bench sample --sweep bf16_backward=blocked",
        "bench-unet --bf16-backward sideways", "bench unet --graph-threads 2", "bench matmul --graph-threads 1",
        "bench sample --graph-threads -1", "bench unet --activation-layout nchw",
        "bench train --activation-layout channels_last", "bench-unet --activation-layout sideways"}) {
    const auto result = run_cli(args);
    CAPTURE(args);
    CAPTURE(result.output);
    CHECK(result.exit_code == 2);
  }
}

TEST_CASE("bench unet sweeps the convolution algorithm and the bf16 backward layout, recording each row's") {
  struct Sweep {
    const char* args;
    const char* name;    // the JSON field of each repeat
    const char* header;  // what the header says of the swept setting
    const char* first;
    const char* second;
  };
  for (const Sweep& sweep :
       {Sweep{"--mode forward --sweep convolution=direct,winograd", "convolution", "convolution swept", "direct",
              "winograd"},
        Sweep{"--mode train --precision bf16 --sweep bf16_backward=channels_last,blocked", "bf16_backward",
              "bf16 backward swept", "channels_last", "blocked"}}) {
    CAPTURE(sweep.args);
    TempDir dir;
    std::string output;
    const json rows = run_tiny_bench_unet(sweep.args, dir.path(), output);
    CHECK(contains(output, sweep.header));
    REQUIRE(rows.size() == 2);
    for (size_t i = 0; i < 2; ++i) {
      CAPTURE(i);
      CHECK(rows[i]["sweep_value"] == (i == 0 ? sweep.first : sweep.second));
      CHECK(rows[i]["repeats"][0][sweep.name] == rows[i]["sweep_value"]);
    }
  }
}

TEST_CASE("bench unet --activation-layout is said in the header and recorded in each repeat, with the layout used") {
  for (const std::string layout : {"", "channels_last", "blocked"}) {
    CAPTURE(layout);
    TempDir dir;
    std::string output;
    const json r =
        run_tiny_bench_unet("--mode forward" + (layout.empty() ? "" : " --activation-layout " + layout), dir.path(),
                            output)[0];
    const std::string expected = layout.empty() ? "by_isa" : layout;
    CHECK(contains(output, "activations " + expected));
    CHECK(r["repeats"][0]["activation_layout"] == expected);
    // by_isa resolved: f32 (this test's precision) is channel-blocked everywhere.
    CHECK(r["repeats"][0]["activation_layout_used"] == (layout.empty() ? "blocked" : layout));
  }
}

TEST_CASE("bench unet gives each GFLOP/s figure as a fraction of the matmul peak of the same run") {
  TempDir dir;
  std::string output;
  const json r = run_tiny_bench_unet("--mode both --csv " + (dir / "u.csv").string(), dir.path(), output)[0];
  CHECK(contains(output, "of the matmul peak"));
  const double peak = r["matmul_peak_gflops_per_s"].get<double>();
  REQUIRE(peak > 0);
  for (const std::string pass : {"forward", "forward_backward"}) {
    CAPTURE(pass);
    const double gflops = r[pass + "_gflops_per_s"].get<double>();
    CHECK(gflops > 0);
    CHECK(r[pass + "_fraction_of_peak"].get<double>() == doctest::Approx(gflops / peak));
  }
  // --mode both: the row's images/s is the forward+backward rate.
  CHECK(r["images_per_s"]["median"].get<double>() == doctest::Approx(r["forward_backward_images_per_s"].get<double>()));
  CHECK(contains(read_file(dir / "u.csv"), "forward_fraction_of_peak"));
}

TEST_CASE("bench unet --breakdown splits each pass by layer kind; other kinds refuse it") {
  TempDir dir;
  std::string output;
  const json b = run_tiny_bench_unet("--mode both --breakdown", dir.path(), output)[0]["repeats"][0]["breakdown"];
  CHECK(contains(output, "time per layer kind"));
  REQUIRE(b["rows"].size() > 0);
  std::set<std::string> layers;
  double forward = 0, backward = 0;
  for (const auto& r : b["rows"]) {
    layers.insert(r["layer"].get<std::string>());
    forward += r["forward_ms"].get<double>();
    backward += r["backward_ms"].get<double>();
  }
  for (const char* kind : {"convolution", "group_norm", "elementwise", "attention"}) CHECK(layers.count(kind));
  CHECK(forward > 0);
  CHECK(backward > 0);
  CHECK(b["passes"] == 1);

  const auto refused = run_cli("bench train --breakdown");
  CAPTURE(refused.output);
  CHECK(refused.exit_code == 2);
}
