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
#include <tuple>

using namespace diffuflow;
using namespace diffuflow::test;
namespace fs = std::filesystem;

namespace {


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

// scheduler-io on the config in `folder` and its in.safetensors (or `inputs`), which must succeed; its output.
SafetensorsFile run_case(const fs::path& folder, int64_t steps, const fs::path& out, const fs::path& inputs = {}) {
  const auto result = run_cli(scheduler_io(folder, steps, inputs.empty() ? folder / "in.safetensors" : inputs, out));
  CAPTURE(result.output);
  REQUIRE(result.exit_code == 0);
  return SafetensorsFile::read(out);
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
    const auto got = run_case(folder, c.at("steps").get<int64_t>(), dir / (name + ".safetensors"));
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

TEST_CASE("scheduler-io runs DPM-Solver (orders 1-3, ODE and SDE), Euler, Euler ancestral and UniPC along the whole "
          "schedule as the fixtures do") {
  const fs::path root = fixture("solvers");
  const auto cases = nlohmann::json::parse(read_file(root / "cases.json"));
  REQUIRE(cases.size() >= 28);
  TempDir dir;
  for (const auto& c : cases) {
    const std::string name = c.at("name");
    CAPTURE(name);
    const fs::path folder = root / name;
    const auto got = run_case(folder, c.at("steps").get<int64_t>(), dir / (name + ".safetensors"));
    const auto want = SafetensorsFile::read(folder / "out.safetensors");
    REQUIRE(got.entry("timesteps").dtype == want.entry("timesteps").dtype);
    if (want.entry("timesteps").dtype == "I64") {
      CHECK(got.ints("timesteps") == want.ints("timesteps"));
    } else {
      CHECK(max_scaled_diff(got.floats("timesteps"), want.floats("timesteps")) <= 1e-6);
    }
    CHECK(max_scaled_diff(got.floats("sigmas"), want.floats("sigmas")) <= 1e-6);
    CHECK(max_scaled_diff(got.floats("init_noise_sigma"), want.floats("init_noise_sigma")) <= 1e-6);
    CHECK(max_scaled_diff(got.floats("alphas_cumprod"), want.floats("alphas_cumprod")) <= 1e-7);
    const int64_t steps = SafetensorsFile::read(folder / "in.safetensors").entry("model_outputs").shape[0];
    for (int64_t i = 0; i < steps; ++i) {
      for (const char* output : {"model_input", "prev_sample", "pred_original_sample"}) {
        const std::string key = "step." + std::to_string(i) + "." + output;
        CAPTURE(key);
        REQUIRE(got.has(key));
        CHECK(got.entry(key).shape == want.entry(key).shape);
        CHECK(max_scaled_diff(got.floats(key), want.floats(key)) <= 1e-5);
      }
    }
  }
}

TEST_CASE("each solver class reads the other's solver_type names as diffusers does") {
  // DPM-Solver takes UniPC's bh1/bh2 as midpoint; UniPC takes midpoint/heun as bh2.
  TempDir dir;
  for (const auto& [name, from, to] : {std::tuple<std::string, std::string, std::string>{
                                           "dpmpp_2m_linspace_20", "\"solver_type\": \"midpoint\"", "\"solver_type\": \"bh2\""},
                                       {"unipc_bh2_2_linspace_10", "\"solver_type\": \"bh2\"", "\"solver_type\": \"heun\""}}) {
    CAPTURE(name);
    const fs::path folder = fixture("solvers") / name;
    std::string config = read_file(folder / "scheduler_config.json");
    REQUIRE(config.find(from) != std::string::npos);
    config.replace(config.find(from), from.size(), to);
    write_file(dir / "scheduler_config.json", config);
    const auto steps = nlohmann::json::parse(read_file(fixture("solvers") / "cases.json"));
    int64_t count = 0;
    for (const auto& c : steps)
      if (c.at("name") == name) count = c.at("steps");
    const auto got = run_case(dir.path(), count, dir / "out.safetensors", folder / "in.safetensors");
    const auto want = SafetensorsFile::read(folder / "out.safetensors");
    const std::string last = "step." + std::to_string(count - 1) + ".prev_sample";
    CHECK(max_scaled_diff(got.floats(last), want.floats(last)) <= 1e-5);
  }
}

TEST_CASE("scheduler-io refuses solver settings and inputs it cannot honour, before stepping") {
  const fs::path folder = fixture("solvers") / "dpmpp_2m_linspace_20";
  TempDir dir;
  const fs::path out = dir / "out.safetensors";
  auto run_with = [&](const std::string& config_text, int64_t steps = 20, const fs::path& inputs = {}) {
    write_file(dir / "scheduler_config.json", config_text);
    return run_cli(scheduler_io(dir.path(), steps, inputs.empty() ? folder / "in.safetensors" : inputs, out));
  };
  const auto algorithm = run_with(R"({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmslover++"})");
  CHECK(algorithm.exit_code == 2);
  CHECK(contains(algorithm.output, "algorithm_type 'sde-dpmslover++' is not one of dpmsolver, dpmsolver++, sde-dpmsolver"));
  CHECK(contains(algorithm.output, "did you mean 'sde-dpmsolver++'"));

  // diffusers refuses these two as well: DPM-Solver on epsilon towards sigma 0, sde-dpmsolver of order 3.
  const auto towards_zero = run_with(R"({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver"})");
  CHECK(towards_zero.exit_code == 2);
  CHECK(contains(towards_zero.output, "final_sigmas_type: sigma_min"));
  const auto order = run_with(R"({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3,
                                  "algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"})");
  CHECK(order.exit_code == 2);
  CHECK(contains(order.output, "sde-dpmsolver has no third-order update"));

  // The SDE variants without their noise.
  const auto sde_no_noise =
      run_with(R"({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"})");
  CHECK(sde_no_noise.exit_code == 2);
  CHECK(contains(sde_no_noise.output, "algorithm_type sde-dpmsolver++ adds noise at every step: give 'noises'"));

  const auto solver = run_with(R"({"_class_name": "DPMSolverMultistepScheduler", "solver_type": "bh3"})");
  CHECK(solver.exit_code == 2);
  CHECK(contains(solver.output, "midpoint|heun|bh1|bh2"));

  // UniPC towards sigma 0 with a higher-order last step is 0 / 0 (NaN in diffusers): refused.
  const auto unipc_last = run_with(R"({"_class_name": "UniPCMultistepScheduler", "lower_order_final": false})");
  CHECK(unipc_last.exit_code == 2);
  CHECK(contains(unipc_last.output, "set lower_order_final: true or final_sigmas_type: sigma_min"));

  const auto exponential = run_with(R"({"_class_name": "EulerDiscreteScheduler", "use_exponential_sigmas": true})");
  CHECK(exponential.exit_code == 2);
  CHECK(contains(exponential.output, "use_exponential_sigmas"));
  CHECK(contains(exponential.output, "only diffusers' default false"));

  const auto clipped = run_with(R"({"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -5.1})");
  CHECK(clipped.exit_code == 2);
  CHECK(contains(clipped.output, "lambda_min_clipped"));

  const auto too_many = run_with(R"({"_class_name": "DPMSolverMultistepScheduler"})", 1001);
  CHECK(too_many.exit_code == 2);
  CHECK(contains(too_many.output, "at most the schedule's 1000 timesteps"));

  const auto ancestral_sample =
      run_with(R"({"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "sample"})");
  CHECK(ancestral_sample.exit_code == 2);
  CHECK(contains(ancestral_sample.output, "prediction_type sample"));

  // 20 model outputs for a 10-step schedule.
  const auto long_sequence = run_with(R"({"_class_name": "DPMSolverMultistepScheduler"})", 10);
  CHECK(long_sequence.exit_code == 2);
  CHECK(contains(long_sequence.output, "holds 20 steps but the schedule has 10"));

  // Euler ancestral without its noise; the DDPM/DDIM format given to a solver.
  const auto no_noise = run_with(R"({"_class_name": "EulerAncestralDiscreteScheduler"})");
  CHECK(no_noise.exit_code == 2);
  CHECK(contains(no_noise.output, "noises"));
  const fs::path single = fixture("schedulers") / "ddim_linear_leading" / "in.safetensors";
  const auto wrong_format = run_with(R"({"_class_name": "EulerDiscreteScheduler"})", 20, single);
  CHECK(wrong_format.exit_code == 2);
  CHECK(contains(wrong_format.output, "model_outputs"));
}
