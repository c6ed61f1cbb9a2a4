#include "nodes/diffusion/noise_schedule.hpp"

#include "diffusion_fixture.hpp"
#include "node_test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>

using namespace diffuflow;
using diffuflow::test::ddpm_fixture;
using diffuflow::test::max_abs_diff;

TEST_CASE("linear schedule reproduces torch.linspace betas and the float64-accumulated cumprod bit for bit") {
  NoiseSchedule schedule(NoiseSchedule::Params{});
  const auto& ref = ddpm_fixture();
  CHECK(schedule.timesteps() == 1000);
  CHECK(max_abs_diff(schedule.betas(), ref.floats("linear.betas", {1000})) == 0.0);
  CHECK(max_abs_diff(schedule.alphas_cumprod(), ref.floats("linear.alphas_cumprod", {1000})) == 0.0);
}

TEST_CASE("cosine schedule (squaredcos_cap_v2) matches the PyTorch reference bit for bit") {
  NoiseSchedule::Params params;
  params.kind = ScheduleKind::cosine;
  NoiseSchedule schedule(params);
  const auto& ref = ddpm_fixture();
  CHECK(max_abs_diff(schedule.betas(), ref.floats("cosine.betas", {1000})) == 0.0);
  CHECK(max_abs_diff(schedule.alphas_cumprod(), ref.floats("cosine.alphas_cumprod", {1000})) == 0.0);
  // the cap: the last beta of the cosine schedule is clipped to 0.999
  CHECK(schedule.beta(999) == doctest::Approx(0.999f));
}

TEST_CASE("a float32 running product would not match: the cumprod must accumulate in float64") {
  const auto& ref = ddpm_fixture();
  const std::vector<float> betas = ref.floats("linear.betas");
  std::vector<float> single(betas.size());
  float running = 1.0f;
  for (size_t i = 0; i < betas.size(); ++i) single[i] = running *= (1.0f - betas[i]);
  CHECK(max_abs_diff(single, ref.floats("linear.alphas_cumprod")) > 1e-8);
  CHECK(max_abs_diff(NoiseSchedule::cumprod_alphas(betas), ref.floats("linear.alphas_cumprod")) == 0.0);
}

TEST_CASE("noise_schedule resource is registered and reads kind, timesteps and betas from its params") {
  RunContext ctx;
  auto resource = diffuflow::test::make_resource("noise_schedule", "schedule",
                                                 "{kind: linear, timesteps: 10, beta_start: 0.001, beta_end: 0.1}", ctx);
  auto schedule = ctx.resource_as<NoiseSchedule>("schedule");
  REQUIRE(schedule->betas().size() == 10);
  CHECK(schedule->beta(0) == doctest::Approx(0.001));
  CHECK(schedule->beta(9) == doctest::Approx(0.1));
  CHECK(schedule->alpha_bar(1) == doctest::Approx((1 - 0.001) * (1 - 0.012)).epsilon(1e-6));
}

TEST_CASE("noise_schedule defaults to the DDPM linear schedule with T = 1000") {
  RunContext ctx;
  diffuflow::test::make_resource("noise_schedule", "schedule", "{}", ctx);
  auto schedule = ctx.resource_as<NoiseSchedule>("schedule");
  CHECK(schedule->params().kind == ScheduleKind::linear);
  CHECK(schedule->timesteps() == 1000);
  CHECK(schedule->beta(0) == doctest::Approx(1e-4));
  CHECK(schedule->beta(999) == doctest::Approx(0.02));
}

TEST_CASE("an unknown schedule kind is a config error that lists the valid kinds") {
  RunContext ctx;
  try {
    diffuflow::test::make_resource("noise_schedule", "schedule", "{kind: quadratic}", ctx);
    FAIL("expected a config error");
  } catch (const ConfigErrors& e) {
    CHECK(std::string(e.what()).find("linear") != std::string::npos);
    CHECK(std::string(e.what()).find("cosine") != std::string::npos);
  }
}

TEST_CASE("timesteps outside [0, T) are rejected with the valid range in the message") {
  NoiseSchedule schedule(NoiseSchedule::Params{});
  CHECK_THROWS_WITH_AS(schedule.alpha_bar(1000), doctest::Contains("[0, 999]"), std::out_of_range);
  CHECK_THROWS_AS(schedule.beta(-1), std::out_of_range);
  CHECK(schedule.alpha_bar_or_one(-1) == 1.0f);
}

TEST_CASE("posterior at t = 0 returns x0 exactly and clamps the variance to 1e-20") {
  NoiseSchedule schedule(NoiseSchedule::Params{});
  const auto p = schedule.posterior(0);
  CHECK(p.coef_x0 == 1.0f);
  CHECK(p.coef_xt == 0.0f);
  CHECK(p.variance == 1e-20f);
  // away from 0 the fixed_small variance is beta_t (1 - abar_{t-1}) / (1 - abar_t) < beta_t
  const auto q = schedule.posterior(500);
  CHECK(q.variance > 0.0f);
  CHECK(q.variance < schedule.beta(500));
  CHECK(q.coef_x0 + q.coef_xt > 0.0f);
}

TEST_CASE("sqrt helpers are the square roots of abar and 1 - abar") {
  NoiseSchedule schedule(NoiseSchedule::Params{});
  for (int t : {0, 17, 500, 999}) {
    CHECK(schedule.sqrt_alpha_bar(t) == std::sqrt(schedule.alpha_bar(t)));
    CHECK(schedule.sqrt_one_minus_alpha_bar(t) == std::sqrt(1.0f - schedule.alpha_bar(t)));
    CHECK(schedule.snr(t) == doctest::Approx(schedule.alpha_bar(t) / (1 - schedule.alpha_bar(t))));
  }
}
