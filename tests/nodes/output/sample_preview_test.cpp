// sample_preview: previews at the right steps from fixed noise, EMA weights
// swapped in and restored bit for bit, and the same chains as the in-graph sampler.
#include "nodes/output/sample_preview.hpp"

#include "node_test_util.hpp"
#include "nodes/diffusion/sampler.hpp"
#include "nodes/model/model_resource.hpp"
#include "nodes/train/train_fixture.hpp"

#include <doctest/doctest.h>

#include <opencv2/imgcodecs.hpp>

#include <algorithm>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::make_node;
using diffuflow::test::make_resource;
using diffuflow::test::read_flat;
using diffuflow::test::single_input;
using diffuflow::test::TempDir;
using diffuflow::test::write_flat;

namespace {

constexpr const char* kPointsPreview =
    "{model: model, schedule: schedule, shape: [2, 1, 1], count: 64, every: 2, steps: 5, layout: points, "
    "reverse_chain: 3}";

// A run context holding a schedule and a randomly initialised MLP for 2-D points.
std::unique_ptr<RunContext> mlp_context(uint64_t seed = 7) {
  auto ctx = std::make_unique<RunContext>(std::make_shared<Device>(DeviceSpec{}), seed);
  make_resource("noise_schedule", "schedule", "{kind: linear}", *ctx);
  make_resource("mlp_model", "model", "{dim: 2, hidden: 32, layers: 2, time_embed_dim: 16, init_seed: 3}", *ctx);
  return ctx;
}

SamplePreview& as_preview(Node& node) { return dynamic_cast<SamplePreview&>(node); }

PacketPtr step_packet(int64_t seq, int64_t step) { return Packet(seq).with("step", step).share(); }

}  // namespace

TEST_CASE("sample_preview writes preview_<step> at multiples of every, final and reverse_chain at the end") {
  TempDir out("sample-preview");
  auto ctx = mlp_context();
  ctx->set_out_dir(out.path());
  auto node = make_node("sample_preview", kPointsPreview, *ctx, "preview");
  CollectingEmitter emitted;
  // Steps 1..5, with step 4 arriving twice (gradient accumulation): one preview per step.
  const std::vector<int64_t> steps{1, 2, 3, 4, 4, 5};
  for (size_t i = 0; i < steps.size(); ++i) node->process(single_input(step_packet(int64_t(i), steps[i])), emitted);

  REQUIRE(emitted.size() == steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    CHECK(emitted.port(i) == 0);
    CHECK(emitted.packet(i).integer("step") == steps[i]);  // passed through unchanged
  }
  CHECK(as_preview(*node).previewed_steps() == std::vector<int64_t>{2, 4});
  const auto folder = out.path() / "samples";
  CHECK(std::filesystem::exists(folder / "preview_000002.png"));
  CHECK(std::filesystem::exists(folder / "preview_000004.png"));
  CHECK_FALSE(std::filesystem::exists(folder / "preview_000001.png"));
  CHECK_FALSE(std::filesystem::exists(folder / "preview_000003.png"));
  CHECK_FALSE(std::filesystem::exists(folder / "preview_000005.png"));
  CHECK_FALSE(std::filesystem::exists(folder / "final.png"));

  node->finish();
  CHECK(std::filesystem::exists(folder / "final.png"));
  const cv::Mat chain = cv::imread((folder / "reverse_chain.png").string());
  const cv::Mat final_png = cv::imread((folder / "final.png").string());
  REQUIRE_FALSE(chain.empty());
  REQUIRE_FALSE(final_png.empty());
  CHECK(final_png.cols == 400);  // one panel
  CHECK(chain.cols == 3 * 300);   // three panels side by side: x_T, the middle, x_0
}

TEST_CASE("sample_preview without an output folder samples nothing and still passes packets on") {
  auto ctx = mlp_context();
  auto node = make_node("sample_preview", kPointsPreview, *ctx, "preview");
  CollectingEmitter emitted;
  node->process(single_input(step_packet(0, 2)), emitted);
  node->finish();
  CHECK(emitted.size() == 1);
  CHECK(as_preview(*node).previewed_steps().empty());
}

TEST_CASE("previews start from the same noise: unchanged weights give identical samples") {
  auto ctx = mlp_context();
  auto node = make_node("sample_preview", kPointsPreview, *ctx, "preview");
  auto& preview = as_preview(*node);
  std::vector<Tensor> chain;
  const std::vector<float> first = preview.draw(&chain).to_vector();
  const std::vector<float> second = preview.draw().to_vector();
  CHECK(first == second);
  REQUIRE(chain.size() == 3);
  CHECK(chain.front().to_vector() == preview.initial_noise().to_vector());  // the chain starts at x_T
  CHECK(chain.back().to_vector() == first);                                 // and ends at x_0

  // The noise depends only on the pipeline seed and the node name.
  auto same = make_node("sample_preview", kPointsPreview, *ctx, "preview");
  auto other = make_node("sample_preview", kPointsPreview, *ctx, "preview_b");
  CHECK(as_preview(*same).initial_noise().to_vector() == preview.initial_noise().to_vector());
  CHECK(as_preview(*other).initial_noise().to_vector() != preview.initial_noise().to_vector());
  auto reseeded = mlp_context(8);
  auto other_seed = make_node("sample_preview", kPointsPreview, *reseeded, "preview");
  CHECK(as_preview(*other_seed).initial_noise().to_vector() != preview.initial_noise().to_vector());

  // With eta > 0 the step noise is fixed too.
  auto noisy = make_node("sample_preview",
                         "{model: model, schedule: schedule, shape: [2, 1, 1], count: 16, steps: 4, eta: 1.0, "
                         "layout: points}",
                         *ctx, "noisy");
  CHECK(as_preview(*noisy).draw().to_vector() == as_preview(*noisy).draw().to_vector());
}

TEST_CASE("sample_preview samples from the EMA weights and restores the raw weights bitwise") {
  auto ctx = mlp_context();
  auto resource = ctx->resource_as<ModelResource>("model");
  DenoiserModel& model = resource->model();
  const std::vector<float> raw = read_flat(model.params());
  std::vector<float> ema_values = raw;
  for (size_t i = 0; i < ema_values.size(); ++i) ema_values[i] = 0.5f * raw[i] + 0.01f * float(i % 7);
  dnnl::memory ema(model.params().get_desc(), model.engine());
  write_flat(ema, ema_values);

  auto node = make_node("sample_preview", kPointsPreview, *ctx, "preview");
  auto plain = make_node("sample_preview", std::string(kPointsPreview).insert(1, "use_ema: false, "), *ctx, "preview");
  const std::vector<float> from_raw = as_preview(*node).draw().to_vector();  // no EMA published yet
  CHECK(as_preview(*plain).draw().to_vector() == from_raw);

  resource->set_ema(&ema);
  const std::vector<float> from_ema = as_preview(*node).draw().to_vector();
  CHECK(read_flat(model.params()) == raw);  // restored bit for bit
  CHECK(read_flat(ema) == ema_values);      // and the EMA is untouched
  CHECK(from_ema != from_raw);
  CHECK(as_preview(*plain).draw().to_vector() == from_raw);  // use_ema: false ignores it

  // The EMA sample is what the model gives with the EMA weights loaded.
  write_flat(model.params(), ema_values);
  resource->set_ema(nullptr);
  CHECK(as_preview(*node).draw().to_vector() == from_ema);
  write_flat(model.params(), raw);
}

TEST_CASE("sample_reverse_chain gives the in-graph sampler's samples and chain bit for bit") {
  auto ctx = mlp_context();
  auto resource = ctx->resource_as<ModelResource>("model");
  auto schedule = ctx->resource_as<NoiseSchedule>("schedule");
  auto sampler = make_node("sampler", "{schedule: schedule, method: ddim, steps: 10, snapshots: 4}", *ctx);
  auto forward = make_node("model_forward", "{model: model}", *ctx);

  std::mt19937_64 rng(11);
  const Tensor x_T = standard_normal({32, 2, 1, 1}, rng, ctx->device());
  CollectingEmitter out;
  sampler->process(single_input(Packet(0).with("x_t", x_T).share(), Sampler::kStartPort), out);
  for (int guard = 0; guard < 100 && out.port(out.size() - 1) == Sampler::kModelPort; ++guard) {
    CollectingEmitter predicted;
    forward->process(single_input(out.emitted.back().second), predicted);
    sampler->process(single_input(predicted.emitted.back().second, Sampler::kBackPort), out);
  }
  REQUIRE(out.port(out.size() - 1) == Sampler::kDonePort);
  const Packet& done = out.packet(out.size() - 1);

  DiffusionSteps steps(*schedule, ctx->device());
  ReverseChainDraw draw;
  draw.options.steps = 10;
  draw.snapshots = 4;
  std::vector<Tensor> snapshots;
  const Tensor sample = sample_reverse_chain(resource->model(), steps, x_T, draw, &snapshots);
  CHECK(sample.to_vector() == done.tensor("sample").to_vector());

  REQUIRE(snapshots.size() == 4);
  const std::vector<float> chain = done.tensor("chain").to_vector();  // [N,K,2,1,1]
  bool same_chain = true;
  for (int64_t k = 0; k < 4; ++k) {
    const std::vector<float> state = snapshots[k].to_vector();
    for (int64_t i = 0; i < 32; ++i) {
      for (int64_t c = 0; c < 2; ++c) same_chain = same_chain && state[i * 2 + c] == chain[(i * 4 + k) * 2 + c];
    }
  }
  CHECK(same_chain);
}

TEST_CASE("plan_reverse_chain picks the sampler's timesteps and snapshot positions") {
  ReverseChainPlan ddim = plan_reverse_chain(1000, SamplerMethod::ddim, 0, 3);
  CHECK(ddim.timesteps.size() == 50);
  CHECK(ddim.timesteps.front() == 980);
  CHECK(ddim.timesteps.back() == 0);
  CHECK(ddim.stride == 20);
  CHECK_FALSE(ddim.ancestral);
  CHECK(ddim.snapshot_positions == std::vector<int64_t>{0, 25, 50});

  ReverseChainPlan ddpm = plan_reverse_chain(1000, SamplerMethod::ddpm, 0, 3);
  CHECK(ddpm.timesteps.size() == 1000);
  CHECK(ddpm.ancestral);

  CHECK_THROWS_WITH_AS(plan_reverse_chain(1000, SamplerMethod::ddpm, 2000, 0), doctest::Contains("steps"),
                       ConfigError);
  CHECK_THROWS_WITH_AS(plan_reverse_chain(1000, SamplerMethod::ddim, 5, 7, "reverse_chain"),
                       doctest::Contains("reverse_chain: reverse chain snapshots must be at most steps + 1 = 6"),
                       ConfigError);
}

TEST_CASE("sample_preview in grid layout writes image grids and an image chain") {
  TempDir out("sample-preview-grid");
  RunContext ctx(std::make_shared<Device>(DeviceSpec{}), 1);
  ctx.set_out_dir(out.path());
  make_resource("noise_schedule", "schedule", "{kind: linear}", ctx);
  make_resource("unet_model", "model", "{config: unet-tiny, init_seed: 0}", ctx);
  auto node = make_node("sample_preview",
                        "{model: model, schedule: schedule, shape: [1, 16, 16], count: 3, every: 1, steps: 2, "
                        "layout: grid, reverse_chain: 3, scale: 1, subdir: previews}",
                        ctx, "preview");
  CollectingEmitter emitted;
  node->process(single_input(step_packet(0, 1)), emitted);
  node->finish();
  const cv::Mat grid = cv::imread((out.path() / "previews" / "preview_000001.png").string(), cv::IMREAD_UNCHANGED);
  const cv::Mat chain = cv::imread((out.path() / "previews" / "reverse_chain.png").string(), cv::IMREAD_UNCHANGED);
  CHECK(std::filesystem::exists(out.path() / "previews" / "final.png"));
  REQUIRE_FALSE(grid.empty());
  REQUIRE_FALSE(chain.empty());
  CHECK(grid.cols > grid.rows);   // 3 images in one row
  CHECK(chain.rows > 2 * 16);     // 3 rows (samples) ...
  CHECK(chain.cols > 2 * 16);     // ... of 3 columns (chain states)
}

TEST_CASE("sample_preview rejects a points layout for images and out-of-range snapshots") {
  auto ctx = mlp_context();
  CHECK_THROWS_WITH(make_node("sample_preview", "{model: model, schedule: schedule, shape: [1, 28, 28], layout: points}",
                              *ctx),
                    doctest::Contains("[2, 1, 1]"));
  CHECK_THROWS_WITH(make_node("sample_preview",
                              "{model: model, schedule: schedule, shape: [2, 1, 1], layout: points, steps: 4, "
                              "reverse_chain: 6}",
                              *ctx),
                    doctest::Contains("reverse chain"));
}

TEST_CASE("sample_preview and the sampler take the same chain options, choices and defaults (but steps)") {
  const NodeContract* sampler = Registry::instance().node_contract("sampler");
  const NodeContract* preview = Registry::instance().node_contract("sample_preview");
  REQUIRE(sampler);
  REQUIRE(preview);
  auto row = [](const NodeContract& c, const std::string& name) {
    const auto found = std::find_if(c.params.begin(), c.params.end(), [&](const ParamSpec& p) { return p.name == name; });
    REQUIRE(found != c.params.end());
    return *found;
  };
  for (const char* name : {"method", "steps", "eta", "clip", "prediction"}) {
    CAPTURE(name);
    const ParamSpec a = row(*sampler, name);
    const ParamSpec b = row(*preview, name);
    CHECK(a.type == b.type);
    CHECK(a.choices == b.choices);
    CHECK(a.doc == b.doc);
    CHECK(a.min == b.min);
    CHECK(a.max == b.max);
    if (std::string(name) != "steps") CHECK(a.default_value == b.default_value);
  }
  CHECK(row(*sampler, "method").choices ==
        std::vector<std::string>{"ddpm", "ddim", "dpmpp", "euler", "euler_ancestral", "unipc"});
  CHECK(row(*sampler, "steps").default_value == ParamValue(int64_t{0}));
  CHECK(row(*preview, "steps").default_value == ParamValue(int64_t{50}));

  // A misspelt method is refused by both with the same choices.
  auto ctx = mlp_context();
  CHECK_THROWS_WITH_AS(make_node("sampler", "{schedule: schedule, method: ddin}", *ctx),
                       doctest::Contains("'method': expected one of ddpm|ddim|dpmpp|euler|euler_ancestral|unipc (did you mean 'ddim'?)"), ConfigErrors);
  CHECK_THROWS_WITH_AS(make_node("sample_preview", "{model: model, schedule: schedule, method: ddin}", *ctx),
                       doctest::Contains("'method': expected one of ddpm|ddim|dpmpp|euler|euler_ancestral|unipc (did you mean 'ddim'?)"), ConfigErrors);
}
