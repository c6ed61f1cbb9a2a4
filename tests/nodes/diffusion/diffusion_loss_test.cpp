#include "nodes/diffusion/diffusion_loss.hpp"

#include "../diffusion/diffusion_fixture.hpp"
#include "node_test_util.hpp"
#include "nodes/train/train_fixture.hpp"

#include <doctest/doctest.h>

#include <cmath>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::make_node;
using diffuflow::test::make_resource;
using diffuflow::test::random_values;
using diffuflow::test::single_input;
using diffuflow::test::timesteps_tensor;

namespace {

const Shape kShape{3, 2, 4, 4};
constexpr size_t kPerSample = 32;

struct LossInputs {
  std::vector<float> prediction, x0, noise;
  std::vector<int64_t> t{5, 500, 990};

  PacketPtr packet(int64_t seq) const {
    return Packet(seq)
        .with("prediction", Tensor::from_vector(kShape, prediction))
        .with("x0", Tensor::from_vector(kShape, x0))
        .with("noise", Tensor::from_vector(kShape, noise))
        .with("t", timesteps_tensor(t))
        .share();
  }
};

LossInputs make_inputs() {
  LossInputs in;
  in.prediction = random_values(96, 1);
  in.x0 = random_values(96, 2, 0.5f);
  in.noise = random_values(96, 3);
  return in;
}

// loss and gradient on the host, in double: weights w_i, targets per element.
void check_against_host(const Packet& result, const std::vector<float>& prediction, const std::vector<double>& target,
                        const std::vector<double>& weights) {
  const double count = double(prediction.size());
  double loss = 0;
  std::vector<double> grad(prediction.size());
  for (size_t i = 0; i < prediction.size(); ++i) {
    const double w = weights[i / kPerSample], d = prediction[i] - target[i];
    loss += w * d * d / count;
    grad[i] = 2 * w * d / count;
  }
  CHECK(result.number("loss") == doctest::Approx(loss).epsilon(1e-5));
  const auto actual = result.tensor("grad_prediction");
  CHECK(actual.shape() == kShape);
  const auto values = actual.to_vector();
  double worst = 0;
  for (size_t i = 0; i < grad.size(); ++i) worst = std::max(worst, std::fabs(values[i] - grad[i]));
  CHECK(worst < 1e-7);
}

}  // namespace

TEST_CASE("diffusion_loss is the MSE to eps and its gradient is 2 (prediction - eps) / numel") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear}", ctx);
  auto node = make_node("diffusion_loss", "{schedule: schedule}", ctx);
  const auto in = make_inputs();
  CollectingEmitter out;
  node->process(single_input(in.packet(0)), out);
  REQUIRE(out.size() == 1);
  std::vector<double> target(in.noise.begin(), in.noise.end());
  check_against_host(out.packet(0), in.prediction, target, {1, 1, 1});
  CHECK(out.packet(0).has("x0"));  // the packet travels on
  CHECK(ctx.metrics().latest("loss") == doctest::Approx(out.packet(0).number("loss")));
}

TEST_CASE("diffusion_loss with v-prediction and min-SNR-gamma weights each sample by min(snr, gamma) / (snr + 1)") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: cosine}", ctx);
  const auto schedule = ctx.resource_as<NoiseSchedule>("schedule");
  auto node = make_node("diffusion_loss", "{schedule: schedule, prediction: v, min_snr_gamma: 5}", ctx);
  const auto in = make_inputs();
  CollectingEmitter out;
  node->process(single_input(in.packet(0)), out);
  std::vector<double> target(in.noise.size()), weights;
  for (size_t s = 0; s < 3; ++s) {
    const double abar = schedule->alpha_bar(static_cast<int>(in.t[s]));
    const double snr = abar / (1 - abar);
    weights.push_back(std::min(snr, 5.0) / (snr + 1));
    for (size_t j = 0; j < kPerSample; ++j) {
      const size_t i = s * kPerSample + j;
      target[i] = std::sqrt(abar) * in.noise[i] - std::sqrt(1 - abar) * in.x0[i];
    }
  }
  CHECK(weights[0] < 0.99);  // the weights really differ from 1 at small t
  check_against_host(out.packet(0), in.prediction, target, weights);
}

TEST_CASE("diffusion_loss with x0-prediction targets the clean images") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear}", ctx);
  auto node = make_node("diffusion_loss", "{schedule: schedule, prediction: x0}", ctx);
  const auto in = make_inputs();
  CollectingEmitter out;
  node->process(single_input(in.packet(0)), out);
  check_against_host(out.packet(0), in.prediction, std::vector<double>(in.x0.begin(), in.x0.end()), {1, 1, 1});
}

TEST_CASE("a non-finite loss stops with the node, the step and the value; on_nonfinite: skip emits a zero gradient") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear}", ctx);
  auto node = make_node("diffusion_loss", "{schedule: schedule}", ctx, "loss");
  auto in = make_inputs();
  in.prediction[7] = NAN;
  CollectingEmitter out;
  try {
    node->process(single_input(in.packet(17)), out);
    FAIL("expected a NodeError");
  } catch (const NodeError& e) {
    CHECK(e.step() == 17);
    CHECK(e.node() == "loss");
    CHECK(std::string(e.what()).find("nan") != std::string::npos);
  }
  CHECK(out.size() == 0);

  auto skipping = make_node("diffusion_loss", "{schedule: schedule, on_nonfinite: skip}", ctx, "lenient");
  skipping->process(single_input(in.packet(18)), out);
  REQUIRE(out.size() == 1);
  CHECK(std::isnan(out.packet(0).number("loss")));
  for (float g : out.packet(0).tensor("grad_prediction").to_vector()) CHECK(g == 0.0f);
}

TEST_CASE("per-bucket losses are logged under loss_t<lo>_<hi> with the unweighted MSE of that bucket's samples") {
  CHECK(DiffusionLoss::bucket_range(0, 10, 1000) == std::pair<int, int>{0, 99});
  CHECK(DiffusionLoss::bucket_range(9, 10, 1000) == std::pair<int, int>{900, 999});
  CHECK(DiffusionLoss::bucket_of(99, 10, 1000) == 0);
  CHECK(DiffusionLoss::bucket_of(100, 10, 1000) == 1);
  for (int t = 0; t < 7; ++t) {  // uneven split: every t lands in the bucket whose range holds it
    const int b = DiffusionLoss::bucket_of(t, 3, 7);
    const auto [lo, hi] = DiffusionLoss::bucket_range(b, 3, 7);
    CHECK(lo <= t);
    CHECK(t <= hi);
  }

  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear}", ctx);
  auto node = make_node("diffusion_loss", "{schedule: schedule, buckets: 10, log_every: 1}", ctx);
  const auto in = make_inputs();
  CollectingEmitter out;
  node->process(single_input(in.packet(0)), out);
  double mse_last = 0;  // sample 2, t = 990
  for (size_t j = 2 * kPerSample; j < 3 * kPerSample; ++j)
    mse_last += double(in.prediction[j] - in.noise[j]) * (in.prediction[j] - in.noise[j]) / kPerSample;
  CHECK(ctx.metrics().latest("loss_t900_999") == doctest::Approx(mse_last).epsilon(1e-5));
  CHECK(std::isnan(ctx.metrics().latest("loss_t100_199")));  // no sample there
}
