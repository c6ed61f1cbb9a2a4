// Class conditioning and classifier-free guidance: the guidance arithmetic,
// the batched conditional/unconditional model call, the sampler's guided
// steps, label dropout statistics, the training graph's labels, and the
// errors raised before sampling starts.
#include "graph/errors.hpp"
#include "graph/pipeline.hpp"
#include "graph/registry.hpp"
#include "graph/spec.hpp"
#include "nodes/common/class_labels.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/diffusion/guidance.hpp"
#include "nodes/diffusion/label_dropout.hpp"
#include "nodes/diffusion/noise_schedule.hpp"
#include "nodes/diffusion/sampler.hpp"
#include "nodes/model/model_resource.hpp"
#include "nodes/output/sample_preview.hpp"
#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <mutex>
#include <random>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::make_node;
using diffuflow::test::make_resource;
using diffuflow::test::single_input;

namespace {

// A U-Net with num_class_embeds 3 (classes 0, 1 and the null class 2), 2 channels, 8 x 12.
std::string conditional_unet() {
  return "{config: " + test::fixture("unet_options_b/config.json").string() + ", init_seed: 5}";
}

Tensor random_tensor(const Shape& shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (float& v : values) v = normal(rng);
  return Tensor::from_vector(shape, values);
}

Tensor s32_tensor(const std::vector<int32_t>& values) {
  Tensor t({static_cast<int64_t>(values.size())}, DType::s32, Device::host()->engine());
  auto host = t.map<int32_t>();
  std::copy(values.begin(), values.end(), host.begin());
  return t;
}

std::vector<int32_t> s32_values(const Tensor& t) {
  const std::vector<int64_t> wide = t.to_int64_vector();
  return std::vector<int32_t>(wide.begin(), wide.end());
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(double(a[i]) - double(b[i])));
  return worst;
}

std::vector<float> rows(const std::vector<float>& all, int64_t first, int64_t count, int64_t per_row) {
  return std::vector<float>(all.begin() + first * per_row, all.begin() + (first + count) * per_row);
}

// Keeps the packets it receives, for the training-graph test.
class GuidanceTestSink : public Node {
 public:
  static NodeContract contract() {
    NodeContract c;
    c.doc = "test sink: keeps the packets it receives";
    c.inputs = {{"in", {}, "anything"}};
    return c;
  }
  GuidanceTestSink(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {}
  void process(const NodeInput& in, Emitter&) override {
    std::lock_guard<std::mutex> lock(mutex());
    packets()[in.seq()] = in.ptr();
  }
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::map<int64_t, PacketPtr>& packets() {
    static std::map<int64_t, PacketPtr> kept;
    return kept;
  }
};

}  // namespace

DIFFUFLOW_REGISTER_NODE(guidance_test_sink, GuidanceTestSink);

TEST_CASE("guidance combines eps_uncond + w (eps_cond - eps_uncond) from the conditional-first halves") {
  // Two images of 3 values: conditional rows first, then the unconditional ones.
  const Tensor both = Tensor::from_vector({4, 3, 1, 1}, {1, 2, 3, -1, 0, 4,   // eps_cond
                                                         0, 1, 1, 1, 1, 1});  // eps_uncond
  CHECK(guide(both, 3.0).to_vector() == std::vector<float>{3, 4, 7, -5, -2, 10});
  CHECK(guide(both, 1.0).to_vector() == std::vector<float>{1, 2, 3, -1, 0, 4});
  CHECK(guide(both, 0.0).to_vector() == std::vector<float>{0, 1, 1, 1, 1, 1});
  CHECK(guide(both, 3.0).shape() == Shape{2, 3, 1, 1});
  CHECK_THROWS_WITH(guide(Tensor::from_vector({3, 1, 1, 1}, {1, 2, 3}), 2.0), doctest::Contains("[2N,...]"));
  CHECK(repeat_batch(Tensor::from_vector({2, 1, 1, 1}, {5, 6})).to_vector() == std::vector<float>{5, 6, 5, 6});
  CHECK(leading_rows(Tensor::from_vector({3, 1, 1, 1}, {5, 6, 7}), 2).to_vector() == std::vector<float>{5, 6});
}

TEST_CASE("repeat_batch doubles a batch and leading_rows takes its first rows, for f32 and s32 tensors") {
  CHECK(s32_values(repeat_batch(s32_tensor({4, 5, 6}))) == std::vector<int32_t>{4, 5, 6, 4, 5, 6});
  CHECK(s32_values(leading_rows(s32_tensor({4, 5, 6, 7}), 3)) == std::vector<int32_t>{4, 5, 6});
  const Tensor x = Tensor::from_vector({3, 2}, {1, 2, 3, 4, 5, 6});
  CHECK(repeat_batch(x).shape() == Shape{6, 2});
  CHECK(repeat_batch(x).to_vector() == std::vector<float>{1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6});
  CHECK(leading_rows(x, 2).to_vector() == std::vector<float>{1, 2, 3, 4});
  CHECK_THROWS_AS(leading_rows(x, 4), std::invalid_argument);
}

TEST_CASE("class choices: all, one, a list; blocks of a packet per class; bad text and out of range") {
  CHECK(parse_class_choice("all", 4, "classes") == std::vector<int32_t>{0, 1, 2, 3});
  CHECK(parse_class_choice("7", 10, "classes") == std::vector<int32_t>{7});
  CHECK(parse_class_choice("1, 4,7", 10, "classes") == std::vector<int32_t>{1, 4, 7});
  CHECK(parse_class_choice("", 10, "classes").empty());
  CHECK_THROWS_WITH(parse_class_choice("10", 10, "classes"),
                    doctest::Contains("class 10 is out of range [0, 9]"));
  CHECK_THROWS_WITH(parse_class_choice("10", 10, "classes"), doctest::Contains("num_class_embeds is 11"));
  CHECK_THROWS_AS(parse_class_choice("seven", 10, "classes"), ConfigError);
  CHECK_THROWS_AS(parse_class_choice("-1", 10, "classes"), ConfigError);
  CHECK_THROWS_AS(parse_class_choice("1,,2", 10, "classes"), ConfigError);
  CHECK(block_labels({0, 1, 2}, 6) == std::vector<int32_t>{0, 0, 1, 1, 2, 2});
  CHECK(block_labels({7}, 3) == std::vector<int32_t>{7, 7, 7});
  CHECK(block_labels({3, 5}, 3) == std::vector<int32_t>{3, 3, 5});
  // cycle: image i of the run takes classes[i % count], wherever its packet starts.
  CHECK(cycle_labels({0, 1, 2}, 4, 0) == std::vector<int32_t>{0, 1, 2, 0});
  CHECK(cycle_labels({0, 1, 2}, 4, 5) == std::vector<int32_t>{2, 0, 1, 2});
  CHECK(cycle_labels({3, 7}, 3, 1) == std::vector<int32_t>{7, 3, 7});
}

TEST_CASE("one batched cond/uncond model call on 2N images equals the two separate calls") {
  RunContext ctx;
  auto resource = std::dynamic_pointer_cast<ModelResource>(make_resource("unet_model", "model", conditional_unet(), ctx));
  DenoiserModel& model = resource->model();
  REQUIRE(model.num_classes() == 3);
  GuidanceOptions options;
  options.classes = "all";
  options.guidance_scale = 2.5;
  const ClassGuidance guidance(options, model.num_classes(), "model");
  REQUIRE(guidance.doubled());
  CHECK(guidance.null_class() == 2);

  const int64_t n = 3;
  const Tensor x = random_tensor({n, 2, 8, 12}, 11);
  const Tensor t = s32_tensor({900, 400, 17});
  const Tensor labels = guidance.labels(n);
  CHECK(s32_values(labels) == std::vector<int32_t>{0, 0, 1});

  const GuidedBatch batch = guidance.model_inputs(x, t, labels);
  CHECK(batch.x.shape() == Shape{2 * n, 2, 8, 12});
  CHECK(s32_values(batch.t) == std::vector<int32_t>{900, 400, 17, 900, 400, 17});
  CHECK(s32_values(batch.labels) == std::vector<int32_t>{0, 0, 1, 2, 2, 2});
  ForwardInputs both_in;
  both_in.class_labels = batch.labels;
  const std::vector<float> both = model.forward(batch.x, batch.t, false, both_in).prediction.to_vector();

  ForwardInputs cond_in, uncond_in;
  cond_in.class_labels = labels;
  uncond_in.class_labels = s32_tensor({2, 2, 2});
  const std::vector<float> cond = model.forward(x, t, false, cond_in).prediction.to_vector();
  const std::vector<float> uncond = model.forward(x, t, false, uncond_in).prediction.to_vector();
  const int64_t per = 2 * 8 * 12;
  CHECK(max_abs_diff(rows(both, 0, n, per), cond) <= 1e-5);
  CHECK(max_abs_diff(rows(both, n, n, per), uncond) <= 1e-5);
  CHECK(max_abs_diff(cond, uncond) > 1e-3);  // the class embedding matters

  // The guided output is the arithmetic on the two separate calls.
  const std::vector<float> guided =
      guidance.combine(model.forward(batch.x, batch.t, false, both_in).prediction).to_vector();
  std::vector<float> want(cond.size());
  for (size_t i = 0; i < want.size(); ++i) want[i] = uncond[i] + 2.5f * (cond[i] - uncond[i]);
  CHECK(max_abs_diff(guided, want) <= 1e-4);
}

TEST_CASE("the sampler sends 2N images with the null class when guided and steps on the guided prediction") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear, timesteps: 100}", ctx);
  make_resource("unet_model", "model", conditional_unet(), ctx);
  for (const std::string method : {"ddim", "ddpm"}) {
    CAPTURE(method);
    const std::string common = "schedule: schedule, method: " + method + ", steps: 10, model: model, classes: '1,0'";
    auto guided = make_node("sampler", "{" + common + ", guidance_scale: 3}", ctx);
    auto plain = make_node("sampler", "{" + common + ", guidance_scale: 1}", ctx);
    const Tensor x = random_tensor({4, 2, 8, 12}, 3);

    CollectingEmitter started;
    guided->process(single_input(Packet(2).with(fields::kXt, x).share(), Sampler::kStartPort), started);
    REQUIRE(started.size() == 1);
    const Packet& to_model = started.packet(0);
    CHECK(to_model.get(fields::kXt).shape() == Shape{8, 2, 8, 12});
    CHECK(s32_values(to_model.get(fields::kLabels)) == std::vector<int32_t>{1, 1, 0, 0, 2, 2, 2, 2});
    const std::vector<int32_t> t = s32_values(to_model.get(fields::kT));
    CHECK(t.size() == 8);

    // Unguided (w = 1): N images, the chain's own classes.
    CollectingEmitter plain_started;
    plain->process(single_input(Packet(2).with(fields::kXt, x).share(), Sampler::kStartPort), plain_started);
    CHECK(plain_started.packet(0).get(fields::kXt).shape() == Shape{4, 2, 8, 12});
    CHECK(s32_values(plain_started.packet(0).get(fields::kLabels)) == std::vector<int32_t>{1, 1, 0, 0});

    // The model's answer for the 2N images; the guided step equals a plain step on the combined prediction.
    const Tensor prediction = random_tensor({8, 2, 8, 12}, 4);
    const Tensor z = random_tensor({4, 2, 8, 12}, 5);
    CollectingEmitter stepped, reference;
    guided->process(single_input(Packet(to_model).with(fields::kPrediction, prediction).with(fields::kStepNoise, z).share(),
                                 Sampler::kBackPort),
                    stepped);
    plain->process(single_input(Packet(plain_started.packet(0))
                                    .with(fields::kPrediction, guide(prediction, 3.0))
                                    .with(fields::kStepNoise, z)
                                    .share(),
                                Sampler::kBackPort),
                   reference);
    REQUIRE(stepped.size() == 1);
    REQUIRE(reference.size() == 1);
    CHECK(stepped.port(0) == Sampler::kModelPort);
    // The next model call is again doubled; its first half is the plain step's x_t.
    const Packet& next = stepped.packet(0);
    CHECK(next.get(fields::kXt).shape() == Shape{8, 2, 8, 12});
    CHECK(s32_values(next.get(fields::kLabels)) == std::vector<int32_t>{1, 1, 0, 0, 2, 2, 2, 2});
    CHECK(max_abs_diff(leading_rows(next.get(fields::kXt), 4).to_vector(),
                       reference.packet(0).get(fields::kXt).to_vector()) == 0.0);
    CHECK(max_abs_diff(rows(next.get(fields::kXt).to_vector(), 4, 4, 192),
                       reference.packet(0).get(fields::kXt).to_vector()) == 0.0);
  }
}

TEST_CASE("guided DPM-Solver++ and Euler in sample_reverse_chain equal the guided sampler node, classes cycling by "
          "image") {
  // Euler with linspace spacing calls the model at fractional timesteps (t_exact, doubled with the batch).
  for (const auto& [spacing, method] : {std::pair<std::string, SamplerMethod>{"leading", SamplerMethod::dpmpp},
                                        {"linspace", SamplerMethod::euler}}) {
    CAPTURE(spacing);
    RunContext ctx;
    make_resource("noise_schedule", "schedule", "{kind: linear, timesteps: 100, timestep_spacing: " + spacing + "}",
                  ctx);
    make_resource("unet_model", "model", conditional_unet(), ctx);
    auto sampler = make_node("sampler",
                             "{schedule: schedule, method: " + enum_name(method) +
                                 ", steps: 5, model: model, classes: '0,1', guidance_scale: 3, class_order: cycle}",
                             ctx);
    auto forward = make_node("model_forward", "{model: model}", ctx);
    const Tensor x_T = random_tensor({3, 2, 8, 12}, 7);
    CollectingEmitter out;
    // The packet's first image is image 1 of the run: classes 1, 0, 1.
    sampler->process(single_input(Packet(0).with(fields::kXt, x_T).with(fields::kFirstImage, int64_t{1}).share(),
                                  Sampler::kStartPort),
                     out);
    for (int guard = 0; guard < 20 && out.port(out.size() - 1) == Sampler::kModelPort; ++guard) {
      CollectingEmitter predicted;
      forward->process(single_input(out.emitted.back().second), predicted);
      sampler->process(single_input(predicted.emitted.back().second, Sampler::kBackPort), out);
    }
    REQUIRE(out.port(out.size() - 1) == Sampler::kDonePort);
    const Packet& done = out.packet(out.size() - 1);
    CHECK(s32_values(done.get(fields::kLabels)) == std::vector<int32_t>{1, 0, 1});

    GuidanceOptions options;
    options.classes = "0,1";
    options.guidance_scale = 3;
    options.class_order = ClassOrder::cycle;
    ReverseChainDraw draw;
    draw.options.method = method;
    draw.options.steps = 5;
    draw.guidance = ClassGuidance(options, 3, "model");
    draw.first_image = 1;
    DiffusionSteps steps(*ctx.resource_as<NoiseSchedule>("schedule"), ctx.device());
    const Tensor sample = sample_reverse_chain(ctx.resource_as<ModelResource>("model")->model(), steps, x_T, draw);
    CHECK(max_abs_diff(sample.to_vector(), done.get(fields::kSample).to_vector()) < 1e-6);

    // Without guidance the samples differ: the guidance reached the solver.
    options.guidance_scale = 1.0;
    draw.guidance = ClassGuidance(options, 3, "model");
    const Tensor plain = sample_reverse_chain(ctx.resource_as<ModelResource>("model")->model(), steps, x_T, draw);
    CHECK(max_abs_diff(plain.to_vector(), done.get(fields::kSample).to_vector()) > 1e-4);
  }
}

TEST_CASE("class and guidance errors come when the sampler is built, before sampling starts") {
  RunContext ctx;
  make_resource("noise_schedule", "schedule", "{kind: linear, timesteps: 100}", ctx);
  make_resource("unet_model", "model", conditional_unet(), ctx);
  make_resource("mlp_model", "plain", "{hidden: 16, layers: 2, time_embed_dim: 8}", ctx);
  // Guidance or classes for an unconditional model.
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, model: plain, classes: '0', guidance_scale: 3}", ctx),
                    doctest::Contains("guidance_scale 3 needs a class-conditional model, but model 'plain' has no "
                                      "class embedding"));
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, model: plain, classes: all}", ctx),
                    doctest::Contains("needs a class-conditional model"));
  // A class out of range (classes 0 and 1; 2 is the null class).
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, model: model, classes: '2'}", ctx),
                    doctest::Contains("class 2 is out of range [0, 1]"));
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, model: model, classes: '0,5', guidance_scale: 2}", ctx),
                    doctest::Contains("class 5 is out of range"));
  // Guidance without a model, without classes, or a conditional model without classes.
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, guidance_scale: 2}", ctx),
                    doctest::Contains("need `model`"));
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, model: model, guidance_scale: 2}", ctx),
                    doctest::Contains("give classes"));
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, model: nothing, classes: '0'}", ctx),
                    doctest::Contains("no resource named 'nothing'"));
  CHECK_THROWS_WITH(make_node("sampler", "{schedule: schedule, model: model, classes: '0', guidance_scale: -1}", ctx),
                    doctest::Contains("guidance_scale: value -1 is out of range"));
  // The preview takes the same options and checks them against its model.
  CHECK_THROWS_WITH(make_node("sample_preview", "{model: model, schedule: schedule, shape: [2, 1, 1], layout: points, "
                                                "classes: '3'}",
                              ctx),
                    doctest::Contains("class 3 is out of range"));
  CHECK_THROWS_WITH(make_node("sample_preview", "{model: plain, schedule: schedule, shape: [2, 1, 1], layout: points, "
                                                "guidance_scale: 4}",
                              ctx),
                    doctest::Contains("needs a class-conditional model"));
  CHECK_NOTHROW(make_node("sampler", "{schedule: schedule, model: plain}", ctx));
  CHECK_NOTHROW(make_node("sampler", "{schedule: schedule, model: model, classes: all, guidance_scale: 4}", ctx));
}

TEST_CASE("label dropout replaces labels by the null class at rate p, the same draw for the same image") {
  RunContext ctx(Device::host(), 42);
  make_resource("unet_model", "model", conditional_unet(), ctx);
  auto dropout = make_node("label_dropout", "{model: model, p: 0.1}", ctx, "drop");
  CHECK(dynamic_cast<LabelDropout&>(*dropout).null_class() == 2);

  const int64_t n = 1000, packets = 20;
  std::vector<int32_t> given(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) given[static_cast<size_t>(i)] = static_cast<int32_t>(i % 2);
  auto run = [&](Node& node, int64_t seq, int64_t first_item) {
    CollectingEmitter out;
    node.process(single_input(Packet(seq).at_item(first_item).with(fields::kLabels, s32_tensor(given)).share()), out);
    REQUIRE(out.size() == 1);
    return s32_values(out.packet(0).get(fields::kLabels));
  };
  int64_t dropped = 0;
  for (int64_t s = 0; s < packets; ++s) {
    const std::vector<int32_t> got = run(*dropout, s, s * n);
    for (int64_t i = 0; i < n; ++i) {
      const int32_t label = got[static_cast<size_t>(i)];
      CHECK((label == given[static_cast<size_t>(i)] || label == 2));
      dropped += label == 2;
    }
  }
  // 20,000 draws at p = 0.1: standard deviation 0.0021.
  const double rate = double(dropped) / double(n * packets);
  CHECK(rate == doctest::Approx(0.1).epsilon(0.1));

  // Deterministic by image position: another node instance, another seq, the same items.
  auto again = make_node("label_dropout", "{model: model, p: 0.1}", ctx, "drop");
  CHECK(run(*again, 99, 3 * n) == run(*dropout, 3, 3 * n));
  CHECK(run(*dropout, 3, 4 * n) != run(*dropout, 3, 3 * n));
  // Another node name draws other images; p = 0 and p = 1 are none and all.
  auto other = make_node("label_dropout", "{model: model, p: 0.1}", ctx, "other");
  CHECK(run(*other, 3, 3 * n) != run(*dropout, 3, 3 * n));
  auto none = make_node("label_dropout", "{model: model, p: 0}", ctx);
  CHECK(run(*none, 0, 0) == given);
  auto all = make_node("label_dropout", "{model: model, p: 1}", ctx);
  CHECK(run(*all, 0, 0) == std::vector<int32_t>(static_cast<size_t>(n), 2));

  // Labels that are the null class or beyond, and unconditional models, are refused.
  CollectingEmitter out;
  CHECK_THROWS_WITH(dropout->process(single_input(Packet(0).with(fields::kLabels, s32_tensor({0, 2})).share()), out),
                    doctest::Contains("num_class_embeds must be the number of classes + 1"));
  make_resource("mlp_model", "plain", "{hidden: 16, layers: 2, time_embed_dim: 8}", ctx);
  CHECK_THROWS_WITH(make_node("label_dropout", "{model: plain}", ctx), doctest::Contains("num_class_embeds 0"));
}

TEST_CASE("the training graph passes the loader's labels (after dropout) to the conditional U-Net") {
  GuidanceTestSink::packets().clear();
  const std::string yaml = R"(
name: train_cond
seed: 3
resources:
  - {name: schedule, type: noise_schedule, params: {kind: linear, timesteps: 100}}
  - {name: model, type: unet_model, params: {config: )" +
                           test::fixture("unet_options_a/config.json").string() + R"(, init_seed: 1}}
nodes:
  - {name: data, type: synthetic_source, params: {kind: shapes, size: 16, channels: 3, batch_size: 8, count: 16, epochs: 1, shuffle: false}}
  - {name: drop_labels, type: label_dropout, params: {model: model, p: 0.5}}
  - {name: timesteps, type: timestep_sampler, params: {timesteps: 100}}
  - {name: noiser, type: noiser, params: {schedule: schedule}}
  - {name: forward, type: model_forward, params: {model: model, training: true}}
  - {name: sink, type: guidance_test_sink}
edges:
  - data -> drop_labels
  - drop_labels -> timesteps
  - timesteps -> noiser
  - noiser -> forward
  - forward -> sink
)";
  PipelineSpec spec = parse_pipeline(yaml, "train_cond.yaml");
  RunContext ctx(Device::host(), spec.seed);
  Pipeline pipeline(spec, ctx);
  pipeline.run();
  const auto& packets = GuidanceTestSink::packets();
  REQUIRE(packets.size() == 2);
  DenoiserModel& model = ctx.resource_as<ModelResource>("model")->model();
  int64_t nulls = 0, kept = 0;
  for (const auto& [seq, packet] : packets) {
    CAPTURE(seq);
    const std::vector<int32_t> labels = s32_values(packet->get(fields::kLabels));
    REQUIRE(labels.size() == 8);
    for (size_t i = 0; i < labels.size(); ++i) {
      // Unshuffled shapes: image i of the set has class i mod 4, or the null class 4 when dropped.
      const int32_t own = static_cast<int32_t>((seq * 8 + static_cast<int64_t>(i)) % 4);
      CHECK((labels[i] == own || labels[i] == 4));
      (labels[i] == 4 ? nulls : kept) += 1;
    }
    // The prediction is the model's for these labels, and not for others.
    const Tensor& x_t = packet->get(fields::kXt);
    const Tensor& t = packet->get(fields::kT);
    ForwardInputs with_labels, other_labels;
    with_labels.class_labels = packet->get(fields::kLabels);
    std::vector<int32_t> shifted(labels);
    for (int32_t& label : shifted) label = (label + 1) % 5;
    other_labels.class_labels = s32_tensor(shifted);
    const std::vector<float> got = packet->get(fields::kPrediction).to_vector();
    CHECK(max_abs_diff(got, model.forward(x_t, t, false, with_labels).prediction.to_vector()) <= 1e-5);
    CHECK(max_abs_diff(got, model.forward(x_t, t, false, other_labels).prediction.to_vector()) > 1e-4);
  }
  CHECK(nulls > 0);
  CHECK(kept > 0);
}
