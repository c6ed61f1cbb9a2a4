#include "nodes/diffusion/diffusion_steps.hpp"

#include "diffusion_fixture.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <random>

using namespace diffuflow;
using diffuflow::test::ddpm_fixture;
using diffuflow::test::max_abs_diff;
using diffuflow::test::row_max_abs_diff;
using diffuflow::test::timesteps_tensor;

namespace {

NoiseSchedule make_schedule(const std::string& kind) {
  NoiseSchedule::Params params;
  params.kind = parse_enum<ScheduleKind>(kind);
  return NoiseSchedule(params);
}

Tensor random_tensor(const Shape& shape, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (auto& v : values) v = scale * normal(rng);
  return Tensor::from_vector(shape, values);
}

}  // namespace

TEST_CASE("q_sample matches the PyTorch closed form for both schedules") {
  const auto& ref = ddpm_fixture();
  Device device(DeviceSpec{});
  for (const std::string kind : {"linear", "cosine"}) {
    CAPTURE(kind);
    NoiseSchedule schedule = make_schedule(kind);
    DiffusionSteps steps(schedule, device);
    Tensor x_t = steps.q_sample(ref.tensor("q.x0"), ref.tensor("q.eps"), timesteps_tensor(ref.ints("q.t")));
    CHECK(x_t.shape() == Shape{4, 1, 8, 8});
    const double diff = max_abs_diff(x_t.to_vector(), ref.floats("q.x_t." + kind));
    CAPTURE(diff);
    CHECK(diff <= 1e-6);
  }
}

TEST_CASE("one DDPM ancestral step matches diffusers' DDPMScheduler (fixed_small, clipped x0)") {
  const auto& ref = ddpm_fixture();
  Device device(DeviceSpec{});
  const std::vector<int64_t> t = ref.ints("ddpm.t");  // 999, 500, 1, 0
  REQUIRE(t == std::vector<int64_t>{999, 500, 1, 0});
  for (const std::string kind : {"linear", "cosine"}) {
    CAPTURE(kind);
    NoiseSchedule schedule = make_schedule(kind);
    DiffusionSteps steps(schedule, device);
    Tensor x_prev = steps.ddpm_step(ref.tensor("ddpm.x_t"), ref.tensor("ddpm.eps_pred"), ref.tensor("ddpm.z"),
                                    timesteps_tensor(t));
    const std::vector<float> got = x_prev.to_vector();
    const std::vector<float> want = ref.floats("ddpm.x_prev." + kind);
    for (size_t row = 0; row < 4; ++row) {
      const double diff = row_max_abs_diff(got, want, 4, row);
      CAPTURE(row);
      CAPTURE(diff);
      // Evaluated in diffusers' float32 order, even the t = 1 row (where 1 - abar_t and
      // 1 - a are ~1e-4 and lose ~3 digits to cancellation) matches; measured: 0.
      CHECK(diff <= 1e-6);
    }
  }
}

TEST_CASE("a DDPM step at t = 0 adds no noise, whatever z holds") {
  const auto& ref = ddpm_fixture();
  Device device(DeviceSpec{});
  NoiseSchedule schedule = make_schedule("linear");
  DiffusionSteps steps(schedule, device);
  const Tensor t = timesteps_tensor({0, 0, 0, 0});
  Tensor with_z = steps.ddpm_step(ref.tensor("ddpm.x_t"), ref.tensor("ddpm.eps_pred"), ref.tensor("ddpm.z"), t);
  Tensor without_z = steps.ddpm_step(ref.tensor("ddpm.x_t"), ref.tensor("ddpm.eps_pred"), Tensor(), t);
  CHECK(max_abs_diff(with_z.to_vector(), without_z.to_vector()) == 0.0);
  // and the result is the clipped x0 prediction itself
  Tensor x0 = steps.predict_x0(ref.tensor("ddpm.x_t"), ref.tensor("ddpm.eps_pred"), t);
  CHECK(max_abs_diff(with_z.to_vector(), x0.to_vector()) == 0.0);
  for (float v : x0.to_vector()) CHECK((v >= -1.0f && v <= 1.0f));
}

TEST_CASE("a DDPM step where t > 0 without noise is an error, not a silent zero") {
  const auto& ref = ddpm_fixture();
  Device device(DeviceSpec{});
  NoiseSchedule schedule = make_schedule("linear");
  DiffusionSteps steps(schedule, device);
  CHECK_THROWS_WITH(steps.ddpm_step(ref.tensor("ddpm.x_t"), ref.tensor("ddpm.eps_pred"), Tensor(),
                                    timesteps_tensor({5, 0, 0, 0})),
                    doctest::Contains("noise"));
}

TEST_CASE("one DDIM step (eta = 0) matches diffusers' DDIMScheduler, with abar = 1 past the last step") {
  const auto& ref = ddpm_fixture();
  Device device(DeviceSpec{});
  for (const std::string kind : {"linear", "cosine"}) {
    CAPTURE(kind);
    NoiseSchedule schedule = make_schedule(kind);
    DiffusionSteps steps(schedule, device);
    Tensor x_prev = steps.ddim_step(ref.tensor("ddim.x_t"), ref.tensor("ddim.eps_pred"),
                                    timesteps_tensor(ref.ints("ddim.t")), timesteps_tensor(ref.ints("ddim.t_prev")),
                                    0.0f, Tensor());
    const double diff = max_abs_diff(x_prev.to_vector(), ref.floats("ddim.x_prev." + kind));
    CAPTURE(diff);
    CHECK(diff <= 1e-6);
  }
}

TEST_CASE("DDIM with eta = 1 adds noise of the DDPM posterior's scale and is reproducible") {
  Device device(DeviceSpec{});
  NoiseSchedule schedule = make_schedule("linear");
  DiffusionSteps steps(schedule, device);
  const Shape shape{2, 1, 4, 4};
  Tensor x_t = random_tensor(shape, 1), eps = random_tensor(shape, 2), z = random_tensor(shape, 3);
  const Tensor t = timesteps_tensor({500, 500});
  const Tensor t_prev = timesteps_tensor({499, 499});
  Tensor deterministic = steps.ddim_step(x_t, eps, t, t_prev, 0.0f, Tensor());
  Tensor noisy = steps.ddim_step(x_t, eps, t, t_prev, 1.0f, z);
  CHECK(max_abs_diff(noisy.to_vector(), deterministic.to_vector()) > 1e-3);
  CHECK(max_abs_diff(noisy.to_vector(), steps.ddim_step(x_t, eps, t, t_prev, 1.0f, z).to_vector()) == 0.0);
  // with eta = 1 and a one-step stride, DDIM is the DDPM ancestral step (without
  // clipping: clipping x0 breaks the identity between x0_hat and eps)
  Tensor ddim_unclipped = steps.ddim_step(x_t, eps, t, t_prev, 1.0f, z, false);
  Tensor ddpm_unclipped = steps.ddpm_step(x_t, eps, z, t, false);
  CHECK(max_abs_diff(ddim_unclipped.to_vector(), ddpm_unclipped.to_vector()) <= 1e-5);
  CHECK_THROWS(steps.ddim_step(x_t, eps, t, t_prev, 1.0f, Tensor()));
  CHECK_THROWS(steps.ddim_step(x_t, eps, t, t_prev, 1.5f, z));
}

TEST_CASE("DDIM timesteps use leading spacing: 980, 960, ..., 0 for 50 of 1000") {
  const std::vector<int> ts = DiffusionSteps::ddim_timesteps(1000, 50);
  REQUIRE(ts.size() == 50);
  CHECK(ts.front() == 980);
  CHECK(ts[1] == 960);
  CHECK(ts.back() == 0);
  CHECK(DiffusionSteps::ddim_timesteps(1000, 1000).front() == 999);
  CHECK(DiffusionSteps::ddim_timesteps(1000, 3) == std::vector<int>{666, 333, 0});
  CHECK_THROWS_AS(DiffusionSteps::ddim_timesteps(1000, 0), ConfigError);
  CHECK_THROWS_AS(DiffusionSteps::ddim_timesteps(10, 11), ConfigError);
}

TEST_CASE("v and x0 predictions convert back to the epsilon that made them") {
  Device device(DeviceSpec{});
  NoiseSchedule schedule = make_schedule("cosine");
  DiffusionSteps steps(schedule, device);
  const Shape shape{3, 2, 4, 4};
  Tensor x0 = random_tensor(shape, 7, 0.5f), eps = random_tensor(shape, 8);
  const Tensor t = timesteps_tensor({3, 400, 900});
  Tensor x_t = steps.q_sample(x0, eps, t);
  Tensor v = steps.training_target(PredictionTarget::v, x0, eps, t);
  CHECK(max_abs_diff(steps.epsilon_from(PredictionTarget::v, x_t, v, t).to_vector(), eps.to_vector()) <= 1e-5);
  CHECK(max_abs_diff(steps.epsilon_from(PredictionTarget::x0, x_t, x0, t).to_vector(), eps.to_vector()) <= 2e-4);
  CHECK(max_abs_diff(steps.training_target(PredictionTarget::epsilon, x0, eps, t).to_vector(), eps.to_vector()) == 0);
  // v = sqrt(abar) eps - sqrt(1 - abar) x0, checked on one element
  const float a = schedule.sqrt_alpha_bar(400), b = schedule.sqrt_one_minus_alpha_bar(400);
  const size_t i = 32 + 5;  // sample 1, element 5
  CHECK(v.to_vector()[i] == doctest::Approx(a * eps.to_vector()[i] - b * x0.to_vector()[i]).epsilon(1e-6));
}

TEST_CASE("min-SNR weights cap the signal-to-noise ratio at gamma for each prediction type") {
  Device device(DeviceSpec{});
  NoiseSchedule schedule = make_schedule("linear");
  DiffusionSteps steps(schedule, device);
  const Tensor t = timesteps_tensor({0, 999});
  const float snr0 = schedule.snr(0), snr999 = schedule.snr(999);
  REQUIRE(snr0 > 5.0f);
  REQUIRE(snr999 < 5.0f);
  const auto eps_w = steps.min_snr_weights(PredictionTarget::epsilon, t, 5.0f);
  CHECK(eps_w[0] == doctest::Approx(5.0f / snr0));
  CHECK(eps_w[1] == doctest::Approx(1.0f));
  const auto v_w = steps.min_snr_weights(PredictionTarget::v, t, 5.0f);
  CHECK(v_w[0] == doctest::Approx(5.0f / (snr0 + 1)));
  CHECK(v_w[1] == doctest::Approx(snr999 / (snr999 + 1)));
  const auto x0_w = steps.min_snr_weights(PredictionTarget::x0, t, 5.0f);
  CHECK(x0_w[0] == doctest::Approx(5.0f));
  CHECK(x0_w[1] == doctest::Approx(snr999));
}

TEST_CASE("timesteps outside the schedule and mismatched batches are reported") {
  Device device(DeviceSpec{});
  NoiseSchedule schedule = make_schedule("linear");
  DiffusionSteps steps(schedule, device);
  Tensor x = random_tensor({2, 1, 2, 2}, 1);
  CHECK_THROWS_WITH(steps.q_sample(x, x, timesteps_tensor({0, 1000})), doctest::Contains("1000"));
  CHECK_THROWS_WITH(steps.q_sample(x, x, timesteps_tensor({0, 1, 2})), doctest::Contains("3 timesteps"));
}

TEST_CASE("prediction targets parse from their YAML spelling") {
  CHECK(parse_enum<PredictionTarget>("epsilon") == PredictionTarget::epsilon);
  CHECK(parse_enum<PredictionTarget>("v") == PredictionTarget::v);
  CHECK(parse_enum<PredictionTarget>("x0") == PredictionTarget::x0);
  CHECK(enum_name(PredictionTarget::v) == "v");
  CHECK_THROWS_AS(parse_enum<PredictionTarget>("sample"), ConfigError);
}
