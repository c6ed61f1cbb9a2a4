// `diffuflow scheduler-io` against the reference fixtures of
// tests/fixtures/make_scheduler_fixtures.py (both classes, every spacing and
// prediction type, clipping, thresholding, zero-SNR rescale, set_alpha_to_one,
// fixed_small/fixed_large, eta > 0 with noise), and its bad input.
#include "graph/safetensors.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>

using namespace diffuflow;
using namespace diffuflow::test;
namespace fs = std::filesystem;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// max |a - b| / max(1, |b|) over two equally long vectors.
double max_scaled_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])) / std::max(1.0, std::fabs(double(b[i]))));
  return worst;
}

std::string scheduler_io(const fs::path& folder, int64_t steps, const fs::path& inputs, const fs::path& out) {
  return "scheduler-io --config " + (folder / "scheduler_config.json").string() + " --steps " +
         std::to_string(steps) + " --inputs " + inputs.string() + " --out " + out.string();
}

}  // namespace

TEST_CASE("scheduler-io reproduces diffusers' DDPM and DDIM steps for every fixture case") {
  const fs::path root = fixture("schedulers");
  const auto cases = nlohmann::json::parse(read_file(root / "cases.json"));
  REQUIRE(cases.size() >= 8);
  TempDir dir;
  for (const auto& c : cases) {
    const std::string name = c.at("name");
    CAPTURE(name);
    const fs::path folder = root / name;
    const fs::path out = dir / (name + ".safetensors");
    const auto result = run_cli(scheduler_io(folder, c.at("steps").get<int64_t>(), folder / "in.safetensors", out));
    CAPTURE(result.output);
    REQUIRE(result.exit_code == 0);
    const auto got = SafetensorsFile::read(out);
    const auto want = SafetensorsFile::read(folder / "out.safetensors");
    CHECK(got.ints("timesteps") == want.ints("timesteps"));
    CHECK(max_scaled_diff(got.floats("alphas_cumprod"), want.floats("alphas_cumprod")) <= 1e-7);
    const size_t steps = SafetensorsFile::read(folder / "in.safetensors").ints("step_timesteps").size();
    for (size_t i = 0; i < steps; ++i) {
      for (const char* output : {"prev_sample", "pred_original_sample"}) {
        const std::string key = "step." + std::to_string(i) + "." + output;
        CAPTURE(key);
        REQUIRE(got.has(key));
        CHECK(got.entry(key).shape == want.entry(key).shape);
        CHECK(max_scaled_diff(got.floats(key), want.floats(key)) <= 2e-6);
      }
    }
  }
}

TEST_CASE("scheduler-io refuses bad configs and inputs with one clear message") {
  const fs::path folder = fixture("schedulers") / "ddpm_linear_all";
  const fs::path inputs = folder / "in.safetensors";
  TempDir dir;
  const fs::path out = dir / "out.safetensors";
  auto run_with = [&](const std::string& config_text, int64_t steps = 10) {
    write_file(dir / "scheduler_config.json", config_text);
    return run_cli(scheduler_io(dir.path(), steps, inputs, out));
  };

  const auto unknown = run_with(R"({"_class_name": "DDPMScheduler", "beta_shedule": "linear"})");
  CHECK(unknown.exit_code == 2);
  CHECK(contains(unknown.output, "unknown scheduler config key 'beta_shedule'"));
  CHECK(contains(unknown.output, "did you mean 'beta_schedule'"));

  const auto value = run_with(R"({"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid"})");
  CHECK(value.exit_code == 2);
  CHECK(contains(value.output, "beta_schedule"));
  CHECK(contains(value.output, "sigmoid"));
  CHECK(contains(value.output, "squaredcos_cap_v2"));

  const auto variance = run_with(R"({"_class_name": "DDPMScheduler", "variance_type": "learned_range"})");
  CHECK(variance.exit_code == 2);
  CHECK(contains(variance.output, "learned_range"));
  CHECK(contains(variance.output, "fixed_large"));

  const auto type = run_with(R"({"_class_name": "DDIMScheduler", "clip_sample": "yes please"})");
  CHECK(type.exit_code == 2);
  CHECK(contains(type.output, "clip_sample"));

  const auto cls = run_with(R"({"_class_name": "PNDMScheduler"})");
  CHECK(cls.exit_code == 2);
  CHECK(contains(cls.output, "PNDMScheduler"));
  CHECK(contains(cls.output, "DDIMScheduler"));

  const auto too_many = run_with(R"({"_class_name": "DDIMScheduler"})", 1001);
  CHECK(too_many.exit_code == 2);

  // step_timesteps of the fixture (999, 500, 1, 0) are not all on a 10-step DDPM schedule.
  const auto off_schedule = run_with(R"({"_class_name": "DDPMScheduler"})", 10);
  CHECK(off_schedule.exit_code == 2);
  CHECK(contains(off_schedule.output, "not one of the 10 timesteps"));
}
