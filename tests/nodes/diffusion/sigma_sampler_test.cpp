// The sigma-space samplers (DPM-Solver++, Euler, Euler ancestral) in the
// sampler node, step by step against the reference fixtures of
// tests/fixtures/make_solver_fixtures.py, and against DDIM, which a first-order
// step of each equals in exact arithmetic.
#include "graph/safetensors.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"
#include "nodes/diffusion/noise_schedule.hpp"
#include "nodes/diffusion/sampler.hpp"
#include "nodes/diffusion/sigma_steps.hpp"
#include "diffusion_fixture.hpp"
#include "node_test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::make_node;
using diffuflow::test::make_resource;
using diffuflow::test::single_input;
using diffuflow::test::timesteps_tensor;
namespace fs = std::filesystem;

namespace {

// max |a - b| / max(1, |b|).
double scaled_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])) / std::max(1.0, std::fabs(double(b[i]))));
  return worst;
}

// Item i of a stacked [S, ...] fixture tensor.
Tensor item(const SafetensorsFile& file, const std::string& name, int64_t i) {
  const auto& entry = file.entry(name);
  const Shape shape(entry.shape.begin() + 1, entry.shape.end());
  const std::vector<float> all = file.floats(name);
  Tensor out(shape, DType::f32, Device::host()->engine());
  auto host = out.map<float>();
  std::copy(all.begin() + i * int64_t(host.size()), all.begin() + (i + 1) * int64_t(host.size()), host.begin());
  return out;
}

const char* method_of(const std::string& config) {
  if (config.find("\"DPMSolverMultistepScheduler\"") != std::string::npos) return "dpmpp";
  if (config.find("\"EulerDiscreteScheduler\"") != std::string::npos) return "euler";
  if (config.find("\"UniPCMultistepScheduler\"") != std::string::npos) return "unipc";
  return "euler_ancestral";
}

}  // namespace

TEST_CASE("the sampler node's DPM-Solver, Euler, Euler ancestral and UniPC chains equal the fixtures step by step") {
  const fs::path root = test::fixture("solvers");
  const auto cases = nlohmann::json::parse(test::read_file(root / "cases.json"));
  int checked = 0;
  for (const auto& c : cases) {
    const std::string name = c.at("name");
    CAPTURE(name);
    const fs::path folder = root / name;
    const auto in = SafetensorsFile::read(folder / "in.safetensors");
    const auto want = SafetensorsFile::read(folder / "out.safetensors");
    const int64_t count = in.entry("model_outputs").shape[0];
    // (diffusers' configs hold -Infinity, which is not JSON: read the class name as text.)
    const std::string config = test::read_file(folder / "scheduler_config.json");
    // The whole schedule, at integer timesteps: the model sees diffusers' exact timesteps.
    std::vector<double> timesteps;
    if (want.entry("timesteps").dtype == "I64") {
      for (int64_t t : want.ints("timesteps")) timesteps.push_back(double(t));
    } else {
      for (float t : want.floats("timesteps")) timesteps.push_back(t);
    }
    if (count != int64_t(timesteps.size())) continue;
    // Fractional timesteps (Euler's linspace, Karras sigmas) go to the model as t_exact, t rounded.
    const bool integer = std::all_of(timesteps.begin(), timesteps.end(), [](double t) { return t == std::floor(t); });

    RunContext ctx;
    make_resource("noise_schedule", "schedule", "{config: " + folder.string() + "}", ctx);
    const std::string method = method_of(config);
    auto sampler = make_node("sampler", "{schedule: schedule, method: " + method + ", steps: " +
                                            std::to_string(c.at("steps").get<int64_t>()) + "}", ctx);
    CollectingEmitter out;
    sampler->process(single_input(Packet(0).with("x_t", in.tensor("initial_noise")).share(), Sampler::kStartPort),
                     out);
    for (int64_t i = 0; i < count; ++i) {
      CAPTURE(i);
      REQUIRE(out.size() == 1);
      REQUIRE(out.port(0) == Sampler::kModelPort);
      Packet packet = out.packet(0);
      const std::string prefix = "step." + std::to_string(i) + ".";
      CHECK(scaled_diff(packet.tensor("x_t").to_vector(), want.floats(prefix + "model_input")) <= 1e-5);
      auto t = packet.tensor("t").map<int32_t>();
      CHECK(t[0] == int32_t(std::nearbyint(timesteps[size_t(i)])));
      CHECK(packet.has("t_exact") == !integer);
      if (!integer) CHECK(packet.tensor("t_exact").to_vector()[0] == doctest::Approx(timesteps[size_t(i)]).epsilon(1e-6));
      packet.set("prediction", item(in, "model_outputs", i));
      if (in.has("noises")) packet.set("z", item(in, "noises", i));
      out.clear();
      sampler->process(single_input(std::move(packet).share(), Sampler::kBackPort), out);
    }
    REQUIRE(out.size() == 1);
    REQUIRE(out.port(0) == Sampler::kDonePort);
    CHECK(scaled_diff(out.packet(0).tensor("sample").to_vector(),
                      want.floats("step." + std::to_string(count - 1) + ".prev_sample")) <= 1e-5);
    ++checked;
  }
  CHECK(checked >= 25);  // every whole-schedule case, fractional Euler timesteps included
}

TEST_CASE("a first-order DPM-Solver++ step and an Euler step each equal a DDIM step with eta 0") {
  // DPM-Solver++ of order 1 is DDIM (Lu et al. 2022); Euler in sigma space is DDIM after
  // scaling x by sqrt(abar) (Karras et al. 2022). Independent of the solver code.
  RunContext ctx;
  SchedulerConfig config;
  config.clip_sample = false;
  NoiseSchedule schedule(config);
  DiffusionSteps steps(schedule, ctx.device());
  std::mt19937_64 rng(3);
  const Tensor x = standard_normal({2, 1, 3, 3}, rng, ctx.device());
  const Tensor eps = standard_normal({2, 1, 3, 3}, rng, ctx.device());
  config.timestep_spacing = TimestepSpacing::trailing;

  config.solver_order = 1;
  const SigmaSchedule dpm =
      plan_sigma_schedule(config, SchedulerClass::DPMSolverMultistepScheduler, 10, schedule.alphas_cumprod());
  const int t = dpm.model_timestep(3), t_prev = dpm.model_timestep(4);
  const auto ddim = steps.ddim_step(x, eps, std::vector<int>{t, t}, std::vector<int>{t_prev, t_prev}, 0.0f, Tensor(),
                                    config);
  const auto solver = sigma_step(steps, dpm, config, 3, x, eps, {}, Tensor());
  CHECK(scaled_diff(solver.prev_sample.to_vector(), ddim.prev_sample.to_vector()) <= 2e-5);
  CHECK(scaled_diff(solver.pred_original_sample.to_vector(), ddim.pred_original_sample.to_vector()) <= 2e-5);

  const SigmaSchedule euler =
      plan_sigma_schedule(config, SchedulerClass::EulerDiscreteScheduler, 10, schedule.alphas_cumprod());
  REQUIRE(euler.model_timestep(3) == t);
  // Euler's sample is x / sqrt(abar_t); its result, times sqrt(abar_prev), is DDIM's.
  const float s = euler.sigmas[3], s_prev = euler.sigmas[4];
  const size_t n = 2;
  const Tensor euler_x = steps.combine(std::vector<float>(n, std::sqrt(s * s + 1.0f)), x, std::vector<float>(n, 0.0f), x);
  const auto step = sigma_step(steps, euler, config, 3, euler_x, eps, {}, Tensor());
  const Tensor back = steps.combine(std::vector<float>(n, 1.0f / std::sqrt(s_prev * s_prev + 1.0f)), step.prev_sample,
                                    std::vector<float>(n, 0.0f), step.prev_sample);
  CHECK(scaled_diff(back.to_vector(), ddim.prev_sample.to_vector()) <= 2e-5);
  CHECK(scaled_diff(scale_model_input(steps, euler, 3, euler_x).to_vector(), x.to_vector()) <= 1e-6);
}

TEST_CASE("a multistep DPM-Solver warms up one order per step and lowers the order at the end as diffusers does") {
  SchedulerConfig config;
  NoiseSchedule schedule(config);
  auto orders = [&](int64_t steps) {
    const SigmaSchedule plan =
        plan_sigma_schedule(config, SchedulerClass::DPMSolverMultistepScheduler, steps, schedule.alphas_cumprod());
    std::vector<int> out;
    for (size_t k = 0; k < plan.size(); ++k) out.push_back(sigma_step_order(plan, config, k));
    return out;
  };
  config.solver_order = 3;
  // Fewer than 15 steps: second, then first order at the end (lower_order_final).
  CHECK(orders(8) == std::vector<int>{1, 2, 3, 3, 3, 3, 2, 1});
  // 15 and more: third order up to the last step, which goes to sigma 0 in first order.
  std::vector<int> fifteen(15, 3);
  fifteen[0] = 1, fifteen[1] = 2, fifteen[14] = 1;
  CHECK(orders(15) == fifteen);
  // ... unless it ends at sigma_min: third order to the end.
  config.final_sigmas_type = FinalSigmasType::sigma_min;
  fifteen[14] = 3;
  CHECK(orders(15) == fifteen);
  config.euler_at_final = true;
  fifteen[14] = 1;
  CHECK(orders(15) == fifteen);
  config.euler_at_final = false;
  config.lower_order_final = false;
  CHECK(orders(8) == std::vector<int>{1, 2, 3, 3, 3, 3, 3, 3});
  config.solver_order = 2;
  CHECK(orders(4) == std::vector<int>{1, 2, 2, 2});
  config.solver_order = 1;
  CHECK(orders(3) == std::vector<int>{1, 1, 1});
  // UniPC: up to the steps left with lower_order_final, one more per step at the start.
  config.solver_order = 3;
  config.lower_order_final = true;
  const SigmaSchedule unipc =
      plan_sigma_schedule(config, SchedulerClass::UniPCMultistepScheduler, 6, schedule.alphas_cumprod());
  std::vector<int> unipc_orders;
  for (size_t k = 0; k < unipc.size(); ++k) unipc_orders.push_back(sigma_step_order(unipc, config, k));
  CHECK(unipc_orders == std::vector<int>{1, 2, 3, 3, 2, 1});
  config.solver_order = 1;
  // Euler steps have no order above one.
  const SigmaSchedule euler =
      plan_sigma_schedule(config, SchedulerClass::EulerDiscreteScheduler, 5, schedule.alphas_cumprod());
  CHECK(sigma_step_order(euler, config, 3) == 1);
}

TEST_CASE("a DPM-Solver step without the history or noise its order and algorithm need is refused") {
  RunContext ctx;
  SchedulerConfig config;
  config.solver_order = 3;
  config.algorithm_type = "sde-dpmsolver++";
  NoiseSchedule schedule(config);
  DiffusionSteps steps(schedule, ctx.device());
  std::mt19937_64 rng(5);
  const Tensor x = standard_normal({1, 1, 2, 2}, rng, ctx.device());
  const SigmaSchedule plan =
      plan_sigma_schedule(config, SchedulerClass::DPMSolverMultistepScheduler, 20, schedule.alphas_cumprod());
  CHECK_THROWS_WITH(sigma_step(steps, plan, config, 2, x, x, SolverHistory{{x}}, x), doctest::Contains("needs the converted model "
                                                                                        "outputs of the 2 steps"));
  CHECK_THROWS_WITH(sigma_step(steps, plan, config, 0, x, x, {}, Tensor()), doctest::Contains("needs noise"));
  // A step keeps solver_order - 1 outputs for the next, the latest first.
  const auto result = sigma_step(steps, plan, config, 2, x, x, SolverHistory{{x, x}}, x);
  CHECK(result.history.outputs.size() == 2);
}

TEST_CASE("the sigma samplers refuse settings they cannot honour before sampling starts") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear, timesteps: 100}", ctx);
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, method: dpmpp, steps: 101}", ctx),
                    doctest::Contains("at most the schedule's 100 timesteps"));
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, method: euler, eta: 0.5}", ctx),
                    doctest::Contains("eta is DDIM's noise scale; method euler takes none"));
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, method: dpmpp, steps: 5, snapshots: 7}", ctx),
                    doctest::Contains("at most steps + 1 = 6"));
  make_resource("noise_schedule", "x0", "{kind: linear, timesteps: 100, prediction_type: sample}", ctx);
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: x0, method: euler_ancestral}", ctx),
                    doctest::Contains("prediction_type sample"));
  CHECK_THROWS_WITH(make_resource("noise_schedule", "sde3",
                                  "{kind: linear, solver_order: 3, algorithm_type: sde-dpmsolver, "
                                  "final_sigmas_type: sigma_min}",
                                  ctx),
                    doctest::Contains("sde-dpmsolver has no third-order update"));
  CHECK_THROWS_WITH(make_resource("noise_schedule", "eps", "{kind: linear, algorithm_type: dpmsolver}", ctx),
                    doctest::Contains("final_sigmas_type zero does not go with algorithm_type dpmsolver"));
}
