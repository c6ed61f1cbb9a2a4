// sampler: one step against the PyTorch fixtures (through the node's `back`
// port with a fake prediction), and the whole loop through a real graph.
#include "graph/pipeline.hpp"
#include "graph/registry.hpp"
#include "graph/spec.hpp"
#include "nodes/diffusion/diffusion_steps.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/diffusion/sampler.hpp"
#include "diffusion_fixture.hpp"
#include "node_test_util.hpp"

#include <doctest/doctest.h>

#include <map>
#include <mutex>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::ddpm_fixture;
using diffuflow::test::make_node;
using diffuflow::test::make_resource;
using diffuflow::test::max_abs_diff;
using diffuflow::test::row_max_abs_diff;
using diffuflow::test::single_input;
using diffuflow::test::timesteps_tensor;

namespace {

// Keeps every packet it receives, by node name and seq, for the graph tests below.
class SamplerTestSink : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test sink: keeps the packets it receives";
    c.inputs = {{"in", {}, "anything"}};
    return c;
  }
  SamplerTestSink(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
  void process(const NodeInput& in, Emitter&) override {
    std::lock_guard<std::mutex> lock(mutex());
    store()[name()][in.seq()] = in.ptr();
  }
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::map<std::string, std::map<int64_t, PacketPtr>>& store() {
    static std::map<std::string, std::map<int64_t, PacketPtr>> s;
    return s;
  }
};

// One step of the sampler from the packet a model would send back.
Packet back_packet(const Tensor& x_t, const Tensor& t, const Tensor& prediction, int64_t step) {
  return Packet(0).with("x_t", x_t).with("t", t).with("prediction", prediction).with(fields::kSamplerStep, step);
}

struct LoopRun {
  std::map<int64_t, PacketPtr> samples;
  RunReport report;
};

LoopRun run_loop(const std::string& sampler_params, int max_in_flight, int concurrency, int chains = 3,
                 const std::string& schedule_params = "kind: linear, timesteps: 100") {
  SamplerTestSink::store().clear();
  const std::string yaml = R"(
name: sample_loop
seed: 7
resources:
  - {name: schedule, type: noise_schedule, params: {)" + schedule_params + R"(}}
  - {name: model, type: mlp_model, params: {hidden: 16, layers: 2, time_embed_dim: 8, init_seed: 3}}
nodes:
  - {name: noise, type: noise_source, params: {shape: [2, 1, 1], batch_size: 8, count: )" +
                           std::to_string(8 * chains) + R"(}}
  - {name: gate, type: limiter, params: {max_in_flight: )" + std::to_string(max_in_flight) + R"(}}
  - {name: sampler, type: sampler, params: )" + sampler_params +
                           ", concurrency: " + std::to_string(concurrency) + R"(}
  - {name: forward, type: model_forward, params: {model: model}}
  - {name: sink, type: sampler_test_sink}
edges:
  - noise -> gate
  - gate -> sampler.start
  - sampler.model -> forward
  - forward -> sampler.back
  - sampler.done -> sink
  - sampler.done -> gate.decrement
)";
  PipelineSpec spec = parse_pipeline(yaml, "sample_loop.yaml");
  RunContext ctx(Device::host(), spec.seed);
  Pipeline pipeline(spec, ctx);
  LoopRun run;
  run.report = pipeline.run();
  run.samples = SamplerTestSink::store()["sink"];
  return run;
}

// Runs the loop with one chain in flight and with three (concurrency 2): each
// chain's sample must be bitwise the same, and no sampler-private field may
// leave the loop. Returns the first run.
LoopRun check_in_flight_invariance(const std::string& params,
                                   const std::string& schedule = "kind: linear, timesteps: 100") {
  LoopRun one = run_loop(params, 1, 1, 3, schedule);
  const LoopRun three = run_loop(params, 3, 2, 3, schedule);
  REQUIRE(one.samples.size() == 3);
  REQUIRE(three.samples.size() == 3);
  for (const auto& [seq, packet] : one.samples) {
    CAPTURE(seq);
    CHECK(max_abs_diff(packet->tensor("sample").to_vector(), three.samples.at(seq)->tensor("sample").to_vector()) ==
          0.0);
    CHECK_FALSE(packet->has("sampler_history"));
    CHECK_FALSE(packet->has("sampler_sample"));
    CHECK_FALSE(packet->has("t_exact"));
  }
  return one;
}

int64_t invocations(const RunReport& report, const std::string& node) {
  for (const auto& n : report.nodes)
    if (n.name == node) return n.count;
  return -1;
}

}  // namespace

DIFFUFLOW_REGISTER_NODE(sampler_test_sink, SamplerTestSink);

TEST_CASE("a sampler DDPM step from the model's prediction matches the PyTorch reference") {
  const auto& ref = ddpm_fixture();
  for (const std::string kind : {"linear", "cosine"}) {
    CAPTURE(kind);
    RunContext ctx;
    make_resource("noise_schedule", "schedule", "{kind: " + kind + "}", ctx);
    auto sampler = make_node("sampler", "{schedule: schedule, method: ddpm}", ctx);
    // Rows at t = 999, 500, 1, 0; the reference noise travels as the optional z field.
    Packet back = back_packet(ref.tensor("ddpm.x_t"), timesteps_tensor(ref.ints("ddpm.t")),
                              ref.tensor("ddpm.eps_pred"), 999);
    back.set("z", ref.tensor("ddpm.z"));
    CollectingEmitter out;
    sampler->process(single_input(std::move(back).share(), Sampler::kBackPort), out);
    REQUIRE(out.size() == 1);
    CHECK(out.port(0) == Sampler::kDonePort);  // step 999 of 1000 is the last
    const std::vector<float> got = out.packet(0).tensor("sample").to_vector();
    const std::vector<float> want = ref.floats("ddpm.x_prev." + kind);
    CHECK(row_max_abs_diff(got, want, 4, 0) <= 1e-6);
    CHECK(row_max_abs_diff(got, want, 4, 1) <= 1e-6);
    CHECK(row_max_abs_diff(got, want, 4, 2) <= 1e-4);  // t = 1: cancellation in float32
    CHECK(row_max_abs_diff(got, want, 4, 3) <= 1e-6);
    CHECK_FALSE(out.packet(0).has("prediction"));
  }
}

TEST_CASE("a sampler DDIM step (eta 0, 50 steps) matches the PyTorch reference and moves t by T/steps") {
  const auto& ref = ddpm_fixture();
  for (const std::string kind : {"linear", "cosine"}) {
    CAPTURE(kind);
    RunContext ctx;
    make_resource("noise_schedule", "schedule", "{kind: " + kind + "}", ctx);
    auto sampler = make_node("sampler", "{schedule: schedule, method: ddim, steps: 50}", ctx);
    CollectingEmitter out;
    sampler->process(single_input(back_packet(ref.tensor("ddim.x_t"), timesteps_tensor(ref.ints("ddim.t")),
                                              ref.tensor("ddim.eps_pred"), 49)
                                      .share(),
                                  Sampler::kBackPort),
                     out);
    REQUIRE(out.size() == 1);
    CHECK(out.port(0) == Sampler::kDonePort);
    CHECK(max_abs_diff(out.packet(0).tensor("sample").to_vector(), ref.floats("ddim.x_prev." + kind)) <= 1e-6);

    // The same step in the middle of a chain goes back to the model at t - 20.
    out.clear();
    sampler->process(single_input(back_packet(ref.tensor("ddim.x_t"), timesteps_tensor({980, 500, 20, 20}),
                                              ref.tensor("ddim.eps_pred"), 3)
                                      .share(),
                                  Sampler::kBackPort),
                     out);
    REQUIRE(out.size() == 1);
    CHECK(out.port(0) == Sampler::kModelPort);
    CHECK(out.packet(0).get(fields::kSamplerStep) == 4);
    auto t = out.packet(0).tensor("t").map<int32_t>();
    CHECK(std::vector<int32_t>(t.begin(), t.end()) == std::vector<int32_t>{960, 480, 0, 0});
  }
}

TEST_CASE("a chain starts at the noisiest timestep of its method") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear}", ctx);
  Tensor x = Tensor::zeros({2, 1, 4, 4}, DType::f32, ctx.device().engine());
  auto first_t = [&](const std::string& params) {
    auto sampler = make_node("sampler", params, ctx);
    CollectingEmitter out;
    sampler->process(single_input(Packet(5).with("x_t", x).share(), Sampler::kStartPort), out);
    REQUIRE(out.size() == 1);
    CHECK(out.port(0) == Sampler::kModelPort);
    CHECK(out.packet(0).seq() == 5);
    CHECK(out.packet(0).get(fields::kSamplerStep) == 0);
    auto t = out.packet(0).tensor("t").map<int32_t>();
    REQUIRE(t.size() == 2);
    CHECK(t[0] == t[1]);
    return t[0];
  };
  CHECK(first_t("{schedule: schedule, method: ddim}") == 980);
  CHECK(first_t("{schedule: schedule, method: ddim, steps: 5}") == 800);
  CHECK(first_t("{schedule: schedule, method: ddpm}") == 999);
  CHECK(first_t("{schedule: schedule, method: ddpm, steps: 100}") == 990);
}

TEST_CASE("sampler steps beyond the schedule and more snapshots than chain states are config errors") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear, timesteps: 100}", ctx);
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, steps: 200}", ctx),
                    doctest::Contains("at most the schedule's 100 timesteps"));
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, steps: 5, snapshots: 7}", ctx),
                    doctest::Contains("at most steps + 1 = 6"));
}

TEST_CASE("v and x0 predictions are converted to epsilon before the step") {
  const auto& ref = ddpm_fixture();
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear}", ctx);
  auto schedule = ctx.resource_as<NoiseSchedule>("schedule");
  DiffusionSteps steps(*schedule, ctx.device());
  const Tensor x_t = ref.tensor("ddim.x_t"), eps = ref.tensor("ddim.eps_pred");
  const Tensor t = timesteps_tensor(ref.ints("ddim.t"));
  // x0 prediction that corresponds to eps (unclipped): x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar).
  const Tensor x0 = steps.predict_x0(x_t, eps, t, false);
  auto eps_sampler = make_node("sampler", "{schedule: schedule, steps: 50}", ctx, "eps_sampler");
  auto x0_sampler = make_node("sampler", "{schedule: schedule, steps: 50, prediction: x0}", ctx, "x0_sampler");
  CollectingEmitter a, b;
  eps_sampler->process(single_input(back_packet(x_t, t, eps, 49).share(), Sampler::kBackPort), a);
  x0_sampler->process(single_input(back_packet(x_t, t, x0, 49).share(), Sampler::kBackPort), b);
  // Rows with abar close to 0 amplify round-off in x0; compare rows 1 and 2.
  const auto ga = a.packet(0).tensor("sample").to_vector(), gb = b.packet(0).tensor("sample").to_vector();
  CHECK(row_max_abs_diff(ga, gb, 4, 1) <= 1e-4);
  CHECK(row_max_abs_diff(ga, gb, 4, 2) <= 1e-4);
}

TEST_CASE("the sampling loop in a graph gives the same samples with one or three chains in flight") {
  for (const std::string params : {"{schedule: schedule, method: ddpm, steps: 0}",
                                   "{schedule: schedule, method: ddim, steps: 10, eta: 0.5}"}) {
    CAPTURE(params);
    const LoopRun one = run_loop(params, 1, 1);
    const LoopRun three = run_loop(params, 3, 2);
    REQUIRE(one.samples.size() == 3);
    REQUIRE(three.samples.size() == 3);
    for (const auto& [seq, packet] : one.samples) {
      CAPTURE(seq);
      const auto a = packet->tensor("sample").to_vector();
      const auto b = three.samples.at(seq)->tensor("sample").to_vector();
      REQUIRE(a.size() == 16);
      CHECK(max_abs_diff(a, b) == 0.0);
      CHECK(max_abs_diff(a, packet->tensor("x_t").to_vector()) > 0.0);  // x_0 differs from the last x_t
    }
    // Chains differ from one another.
    CHECK(max_abs_diff(one.samples.at(0)->tensor("sample").to_vector(),
                       one.samples.at(1)->tensor("sample").to_vector()) > 1e-3);
  }
}

TEST_CASE("DDIM with steps = 5 calls the model exactly 5 times per chain") {
  const LoopRun run = run_loop("{schedule: schedule, method: ddim, steps: 5}", 2, 2, 4);
  CHECK(run.samples.size() == 4);
  CHECK(invocations(run.report, "forward") == 5 * 4);
  CHECK(invocations(run.report, "sampler") == 6 * 4);  // one start and five steps
}

TEST_CASE("snapshots keep x_T, evenly spaced states and x_0 of the reverse chain") {
  const LoopRun run = run_loop("{schedule: schedule, method: ddim, steps: 4, snapshots: 3}", 1, 1, 2);
  REQUIRE(run.samples.size() == 2);
  RunContext ctx(Device::host(), 7);
  for (const auto& [seq, packet] : run.samples) {
    const Tensor& chain = packet->tensor("chain");
    REQUIRE(chain.shape() == Shape{8, 3, 2, 1, 1});
    const auto values = chain.to_vector();
    const auto sample = packet->tensor("sample").to_vector();
    auto rng = ctx.rng("noise", seq);
    const auto noise = standard_normal({8, 2, 1, 1}, rng, ctx.device()).to_vector();
    for (int i = 0; i < 8; ++i) {
      for (int c = 0; c < 2; ++c) {
        CHECK(values[(i * 3 + 0) * 2 + c] == noise[i * 2 + c]);   // x_T
        CHECK(values[(i * 3 + 2) * 2 + c] == sample[i * 2 + c]);  // x_0
      }
    }
  }
}

TEST_CASE("sampler steps follow the schedule's diffusers config: spacing, prediction type, thresholding, eta") {
  // Reference steps from tests/fixtures/schedulers (see make_scheduler_fixtures.py).
  struct Case {
    std::string name, params;
    int64_t t, step, next_t;  // the step from t (chain step `step`) and the next model call's timestep
    int64_t fixture_step;     // which step.<i> of the fixture is the step from t
  };
  const std::vector<Case> cases = {
      {"ddim_trailing_v_zero_snr", "{schedule: schedule, method: ddim, steps: 10, eta: 0.5}", 999, 0, 899, 0},
      {"ddpm_cosine_linspace_sample_threshold", "{schedule: schedule, method: ddpm, steps: 7}", 500, 3, 333, 1},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const auto folder = diffuflow::test::fixture("schedulers") / c.name;
    const auto in = SafetensorsFile::read(folder / "in.safetensors");
    const auto want = SafetensorsFile::read(folder / "out.safetensors");
    RunContext ctx;
    make_resource("noise_schedule", "schedule", "{config: " + folder.string() + "}", ctx);
    auto sampler = make_node("sampler", c.params, ctx);
    const Tensor sample = in.tensor("sample");
    Packet back = back_packet(sample, timesteps_tensor(std::vector<int64_t>(size_t(sample.dim(0)), c.t)),
                              in.tensor("model_output"), c.step);
    back.set("z", in.tensor("noise"));
    CollectingEmitter out;
    sampler->process(single_input(std::move(back).share(), Sampler::kBackPort), out);
    REQUIRE(out.size() == 1);
    REQUIRE(out.port(0) == Sampler::kModelPort);
    auto t = out.packet(0).tensor("t").map<int32_t>();
    CHECK(t[0] == c.next_t);
    const std::string key = "step." + std::to_string(c.fixture_step) + ".prev_sample";
    CHECK(max_abs_diff(out.packet(0).tensor("x_t").to_vector(), want.floats(key)) <= 2e-6);
  }
}

TEST_CASE("DPM-Solver++ and Euler chains in flight together each keep their own history") {
  for (const std::string params : {"{schedule: schedule, method: dpmpp, steps: 8}",
                                   "{schedule: schedule, method: euler, steps: 6}",
                                   "{schedule: schedule, method: euler_ancestral, steps: 6}"}) {
    CAPTURE(params);
    const LoopRun one = check_in_flight_invariance(params);
    CHECK(max_abs_diff(one.samples.at(0)->tensor("sample").to_vector(),
                       one.samples.at(1)->tensor("sample").to_vector()) > 1e-3);
  }
  const LoopRun run = run_loop("{schedule: schedule, method: dpmpp, steps: 7}", 2, 2, 2);
  CHECK(invocations(run.report, "forward") == 2 * 7);
}

TEST_CASE("third-order, stochastic DPM-Solver and UniPC chains give the same samples however many are in flight") {
  // 3M keeps two past outputs per chain; the SDE variants draw noise keyed by the image, not the batch;
  // UniPC keeps solver_order outputs, the sample its last step started from and that step's order.
  const std::string base = "kind: linear, timesteps: 100, final_sigmas_type: sigma_min, ";
  const std::string dpm = "{schedule: schedule, method: dpmpp, steps: 9}";
  const std::string unipc = "{schedule: schedule, method: unipc, steps: 9}";
  for (const auto& [params, schedule] : std::vector<std::pair<std::string, std::string>>{
           {dpm, base + "solver_order: 3"},
           {dpm, base + "solver_order: 3, algorithm_type: dpmsolver"},
           {dpm, base + "solver_order: 3, algorithm_type: sde-dpmsolver++"},
           {dpm, base + "algorithm_type: sde-dpmsolver, solver_type: heun"},
           {unipc, base + "solver_order: 3"},
           {unipc, base + "predict_x0: false, solver_type: bh1"}}) {
    CAPTURE(params);
    CAPTURE(schedule);
    check_in_flight_invariance(params, schedule);
  }
  // The same start and model: the stochastic solver's samples differ from the deterministic one's.
  const LoopRun ode = run_loop("{schedule: schedule, method: dpmpp, steps: 9}", 1, 1, 1, base + "solver_order: 3");
  const LoopRun sde = run_loop("{schedule: schedule, method: dpmpp, steps: 9}", 1, 1, 1,
                               base + "solver_order: 3, algorithm_type: sde-dpmsolver++");
  CHECK(max_abs_diff(ode.samples.at(0)->tensor("sample").to_vector(), sde.samples.at(0)->tensor("sample").to_vector()) >
        1e-3);
}
