#include "nodes/diffusion/scheduler_config.hpp"

#include "nodes/diffusion/diffusers_scheduler.hpp"
#include "nodes/diffusion/noise_schedule.hpp"
#include "diffusion_fixture.hpp"
#include "node_test_util.hpp"

#include "test_util.hpp"
#include <doctest/doctest.h>

#include <string>

using namespace diffuflow;
using diffuflow::test::max_abs_diff;

namespace {


// The message of the ConfigError(s) parsing `text` throws; empty when it parses.
std::string parse_error(const std::string& text) {
  try {
    SchedulerConfig::from_text(text, "test.json");
  } catch (const ConfigErrors& e) {
    return e.what();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a diffusers scheduler_config.json with every key it writes parses to those values") {
  const SchedulerConfig c = SchedulerConfig::from_file(diffuflow::test::fixture("schedulers") /
                                                       "ddim_trailing_v_zero_snr" / "scheduler_config.json");
  CHECK(c.class_name == SchedulerClass::DDIMScheduler);
  CHECK(c.beta_schedule == BetaSchedule::scaled_linear);
  CHECK(c.beta_start == 0.00085);
  CHECK(c.prediction_type == PredictionType::v_prediction);
  CHECK(c.timestep_spacing == TimestepSpacing::trailing);
  CHECK(c.rescale_betas_zero_snr);
  CHECK_FALSE(c.set_alpha_to_one);
  CHECK_FALSE(c.clip_sample);
  CHECK(c.trained_betas.empty());  // null
  // A folder holding it is read the same way.
  CHECK(SchedulerConfig::from_file(diffuflow::test::fixture("schedulers") / "ddim_trailing_v_zero_snr") == c);
}

TEST_CASE("missing keys take diffusers' defaults; private keys and _use_default_values are read as diffusers reads them") {
  const SchedulerConfig defaults = SchedulerConfig::from_text("{}", "test.json");
  CHECK(defaults == SchedulerConfig{});
  CHECK(defaults.clip_sample);
  CHECK(defaults.set_alpha_to_one);
  CHECK(defaults.timestep_spacing == TimestepSpacing::leading);
  const SchedulerConfig c = SchedulerConfig::from_text(
      R"({"_class_name": "DDPMScheduler", "_diffusers_version": "0.31.0", "_name_or_path": "x",
          "steps_offset": 1, "beta_end": 0.5, "_use_default_values": ["beta_end"]})",
      "test.json");
  CHECK(c.steps_offset == 1);
  CHECK(c.beta_end == 0.02);  // listed as a default diffusers used: the default wins
}

TEST_CASE("malformed scheduler configs are one clear ConfigError naming key, value and choices") {
  const std::string unknown = parse_error(R"({"beta_shedule": "linear"})");
  CHECK(test::contains(unknown, "unknown scheduler config key 'beta_shedule'"));
  CHECK(test::contains(unknown, "did you mean 'beta_schedule'"));

  const std::string schedule = parse_error(R"({"beta_schedule": "sigmoid"})");
  CHECK(test::contains(schedule, "beta_schedule"));
  CHECK(test::contains(schedule, "sigmoid"));
  CHECK(test::contains(schedule, "scaled_linear"));

  const std::string prediction = parse_error(R"({"prediction_type": "flow"})");
  CHECK(test::contains(prediction, "prediction_type"));
  CHECK(test::contains(prediction, "v_prediction"));

  const std::string spacing = parse_error(R"({"timestep_spacing": "middle"})");
  CHECK(test::contains(spacing, "timestep_spacing"));
  CHECK(test::contains(spacing, "trailing"));

  const std::string variance = parse_error(R"({"variance_type": "learned"})");
  CHECK(test::contains(variance, "variance_type"));
  CHECK(test::contains(variance, "fixed_small"));

  const std::string cls = parse_error(R"({"_class_name": "PNDMScheduler"})");
  CHECK(test::contains(cls, "PNDMScheduler"));
  CHECK(test::contains(cls, "DDPMScheduler"));

  CHECK(test::contains(parse_error(R"({"num_train_timesteps": "many"})"), "num_train_timesteps"));
  CHECK(test::contains(parse_error(R"({"clip_sample": [1, 2]})"), "clip_sample"));
  CHECK(test::contains(parse_error(R"({"steps_offset": null})"), "steps_offset"));
  CHECK(test::contains(parse_error(R"({"num_train_timesteps": 4, "trained_betas": [0.1, 0.2]})"),
                 "trained_betas has 2 values but num_train_timesteps is 4"));
  CHECK(test::contains(parse_error("[1, 2]"), "mapping"));
}

TEST_CASE("set_timesteps spacings follow numpy: leading with offset, trailing, linspace rounding half to even") {
  SchedulerConfig c;
  c.steps_offset = 1;
  CHECK(c.inference_timesteps(4) == std::vector<int64_t>{751, 501, 251, 1});
  c.timestep_spacing = TimestepSpacing::trailing;
  CHECK(c.inference_timesteps(4) == std::vector<int64_t>{999, 749, 499, 249});
  c.timestep_spacing = TimestepSpacing::linspace;
  CHECK(c.inference_timesteps(7) == std::vector<int64_t>{999, 832, 666, 500, 333, 166, 0});
  c.timestep_spacing = TimestepSpacing::trailing;
  CHECK(c.inference_timesteps(60).size() == 60);
  CHECK_THROWS_AS(c.inference_timesteps(61), ConfigError);  // numpy gives a 62nd timestep, -1
  CHECK_THROWS_AS(c.inference_timesteps(1001), ConfigError);
}

TEST_CASE("noise_schedule takes diffusers keys inline, a config file, and the older kind/timesteps alike") {
  RunContext ctx;
  diffuflow::test::make_resource("noise_schedule", "a", "{kind: cosine, timesteps: 100}", ctx);
  diffuflow::test::make_resource("noise_schedule", "b",
                                 "{beta_schedule: squaredcos_cap_v2, num_train_timesteps: 100}", ctx);
  diffuflow::test::make_resource("noise_schedule", "c",
                                 "{config: '{\"beta_schedule\": \"squaredcos_cap_v2\", \"num_train_timesteps\": 100}'}",
                                 ctx);
  const auto a = ctx.resource_as<NoiseSchedule>("a");
  CHECK(a->timesteps() == 100);
  CHECK(max_abs_diff(a->alphas_cumprod(), ctx.resource_as<NoiseSchedule>("b")->alphas_cumprod()) == 0.0);
  CHECK(max_abs_diff(a->alphas_cumprod(), ctx.resource_as<NoiseSchedule>("c")->alphas_cumprod()) == 0.0);

  const std::string path = (diffuflow::test::fixture("schedulers") / "ddim_linear_leading").string();
  diffuflow::test::make_resource("noise_schedule", "d", "{config: " + path + "}", ctx);
  CHECK(ctx.resource_as<NoiseSchedule>("d")->config().steps_offset == 1);
  CHECK(ctx.resource_as<NoiseSchedule>("d")->config().class_name == SchedulerClass::DDIMScheduler);

  // Two different non-default values for one key are refused.
  CHECK_THROWS_WITH(diffuflow::test::make_resource("noise_schedule", "e",
                                                    "{kind: cosine, beta_schedule: scaled_linear}", ctx),
                    doctest::Contains("beta_schedule"));
}

TEST_CASE("scaled_linear betas are the squares of a float32 line between the roots") {
  const std::vector<float> betas = NoiseSchedule::scaled_linear_betas(10, 0.00085, 0.012);
  CHECK(betas.front() == doctest::Approx(0.00085).epsilon(1e-6));
  CHECK(betas.back() == doctest::Approx(0.012).epsilon(1e-6));
  CHECK(std::sqrt(betas[5]) - std::sqrt(betas[4]) == doctest::Approx(std::sqrt(betas[1]) - std::sqrt(betas[0])).epsilon(1e-4));
}

TEST_CASE("zero terminal SNR rescaling ends the schedule at abar = 0 and keeps abar_0") {
  SchedulerConfig c;
  c.rescale_betas_zero_snr = true;
  NoiseSchedule rescaled(c);
  NoiseSchedule plain{SchedulerConfig{}};
  CHECK(rescaled.alpha_bar(999) == 0.0f);
  CHECK(rescaled.beta(999) == 1.0f);
  CHECK(rescaled.alpha_bar(0) == doctest::Approx(plain.alpha_bar(0)).epsilon(1e-6));
}

TEST_CASE("a DDIM scheduler steps by T // steps; a DDPM one to the next scheduled timestep") {
  Device& device = *Device::host();
  SchedulerConfig c;
  c.class_name = SchedulerClass::DDPMScheduler;
  auto ddpm = make_diffusers_scheduler(c, device);
  CHECK_THROWS_AS(ddpm->previous_timestep(999), std::logic_error);  // set_timesteps first
  ddpm->set_timesteps(4);
  CHECK(ddpm->previous_timestep(750) == 500);
  CHECK(ddpm->previous_timestep(0) == -1);
  CHECK_THROWS_AS(ddpm->previous_timestep(749), std::invalid_argument);
  c.class_name = SchedulerClass::DDIMScheduler;
  auto ddim = make_diffusers_scheduler(c, device);
  ddim->set_timesteps(4);
  CHECK(ddim->previous_timestep(749) == 499);
  CHECK(ddim->previous_timestep(0) == -250);
}

TEST_CASE("to_json writes a config that reads back to the same values, with the class's own keys") {
  SchedulerConfig c;
  c.class_name = SchedulerClass::DDIMScheduler;
  c.beta_schedule = BetaSchedule::scaled_linear;
  c.prediction_type = PredictionType::v_prediction;
  c.set_alpha_to_one = false;
  c.steps_offset = 1;
  const std::string json = c.to_json();
  CHECK(test::contains(json, "\"_class_name\": \"DDIMScheduler\""));
  CHECK(test::contains(json, "\"trained_betas\": null"));
  CHECK_FALSE(test::contains(json, "variance_type"));  // a DDPMScheduler key
  CHECK(SchedulerConfig::from_text(json, "round trip") == c);
}
