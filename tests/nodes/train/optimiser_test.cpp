#include "nodes/train/optimiser.hpp"

#include "graph/safetensors.hpp"
#include "node_test_util.hpp"
#include "train_fixture.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

using namespace diffuflow;
using diffuflow::test::add_flat_model;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::make_node;
using diffuflow::test::random_values;
using diffuflow::test::read_flat;
using diffuflow::test::single_input;
using diffuflow::test::TempDir;
using diffuflow::test::write_flat;

namespace {

constexpr size_t kCount = 17;  // FlatModel's parameters

// torch.optim.Adam / AdamW and diffusers' EMAModel, in double precision.
struct ReferenceAdam {
  bool decoupled = false;
  double b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0, ema_decay = 0;
  std::vector<double> p, m, v, ema;
  int64_t k = 0;

  explicit ReferenceAdam(const std::vector<float>& start)
      : p(start.begin(), start.end()), m(start.size()), v(start.size()), ema(p) {}

  void step(const std::vector<float>& grad, double lr) {
    ++k;
    const double bc1 = 1 - std::pow(b1, double(k)), bc2 = 1 - std::pow(b2, double(k));
    for (size_t i = 0; i < p.size(); ++i) {
      double g = grad[i];
      if (!decoupled) g += wd * p[i];
      if (decoupled) p[i] *= 1 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      p[i] -= lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
    }
    const double s = double(k - 1);
    const double d = k == 1 ? 0.0 : std::min(ema_decay, (1 + s) / (10 + s));
    for (size_t i = 0; i < p.size(); ++i) ema[i] = d * ema[i] + (1 - d) * p[i];
  }
};

double worst_relative(const std::vector<float>& actual, const std::vector<double>& expected) {
  double worst = 0;
  for (size_t i = 0; i < expected.size(); ++i)
    worst = std::max(worst, std::fabs(actual[i] - expected[i]) / (1e-3 + std::fabs(expected[i])));
  return worst;
}

PacketPtr grads_packet(int64_t seq, double loss = 0.5) {
  return Packet(seq).with("grads_ready", int64_t{1}).with("loss", loss).share();
}

// Runs `steps` packets through an optimiser on the flat model, one random gradient per step.
void run_steps(Node& node, DenoiserModel& model, int steps, uint64_t seed, CollectingEmitter& out, int64_t first = 0) {
  for (int s = 0; s < steps; ++s) {
    write_flat(model.grads(), random_values(kCount, seed + s));
    node.process(single_input(grads_packet(first + s)), out);
  }
}

// The optimiser's results on the flat model: parameters, moments, EMA.
using Results = std::vector<std::vector<float>>;

Results check_matches_reference(const std::string& yaml, ReferenceAdam reference, double lr, int parts = 1) {
  RunContext ctx;
  auto resource = add_flat_model(ctx);
  resource->flat().parts = parts;
  auto& model = resource->model();
  const auto start = random_values(kCount, 1);
  write_flat(model.params(), start);
  reference.p.assign(start.begin(), start.end());
  reference.m.assign(kCount, 0.0);
  reference.v.assign(kCount, 0.0);
  reference.ema = reference.p;
  auto node = make_node("optimiser", yaml, ctx);
  auto& optimiser = dynamic_cast<Optimiser&>(*node);
  CollectingEmitter out;
  for (int s = 0; s < 5; ++s) {
    const auto grad = random_values(kCount, 100 + s);
    write_flat(model.grads(), grad);
    node->process(single_input(grads_packet(s)), out);
    reference.step(grad, lr);
  }
  REQUIRE(out.size() == 5);
  CHECK(out.packet(4).integer("step") == 5);
  CHECK(optimiser.step() == 5);
  CHECK(worst_relative(read_flat(model.params()), reference.p) < 1e-5);
  CHECK(worst_relative(read_flat(optimiser.exp_avg()), reference.m) < 1e-5);
  CHECK(worst_relative(read_flat(optimiser.exp_avg_sq()), reference.v) < 1e-5);
  REQUIRE(optimiser.ema() != nullptr);
  CHECK(worst_relative(read_flat(*optimiser.ema()), reference.ema) < 1e-5);
  // the step leaves the gradients zeroed for the next batch
  for (float g : read_flat(model.grads())) CHECK(g == 0.0f);
  return {read_flat(model.params()), read_flat(optimiser.exp_avg()), read_flat(optimiser.exp_avg_sq()),
          read_flat(*optimiser.ema())};
}

}  // namespace

TEST_CASE("optimiser adam with L2 weight decay matches torch.optim.Adam in double precision over 5 steps") {
  ReferenceAdam reference({});
  reference.decoupled = false;
  reference.wd = 0.05;
  reference.ema_decay = 0.9;
  check_matches_reference("{model: model, algorithm: adam, lr: 0.01, weight_decay: 0.05, ema_decay: 0.9}", reference,
                          0.01);
}

TEST_CASE("optimiser adamw decays weights decoupled like torch.optim.AdamW over 5 steps") {
  ReferenceAdam reference({});
  reference.decoupled = true;
  reference.wd = 0.1;
  reference.b1 = 0.8;
  reference.b2 = 0.99;
  reference.eps = 1e-6;
  reference.ema_decay = 0.999;
  check_matches_reference(
      "{model: model, algorithm: adamw, lr: 0.02, beta1: 0.8, beta2: 0.99, eps: 1.0e-6, weight_decay: 0.1}",
      reference, 0.02);
}

TEST_CASE("a step shared among teams, a slice each, is bitwise the step of one; with clipping within rounding") {
  // Every operation but the gradient norm is elementwise; the norm is the sum
  // of the parts' in part order, here close enough that clipping scales alike.
  ReferenceAdam reference({});
  reference.wd = 0.05;
  reference.ema_decay = 0.9;
  const std::string yaml = "{model: model, algorithm: adam, lr: 0.01, weight_decay: 0.05, ema_decay: 0.9}";
  const Results one = check_matches_reference(yaml, reference, 0.01);
  for (int parts : {2, 3, 17}) {
    CAPTURE(parts);
    CHECK(check_matches_reference(yaml, reference, 0.01, parts) == one);
  }
  // With clipping, the norm that decides the scale is summed over the parts: the same steps within rounding.
  RunContext a, b;
  auto whole = add_flat_model(a), split = add_flat_model(b);
  split->flat().parts = 3;
  auto clip_one = make_node("optimiser", "{model: model, clip_grad_norm: 0.5}", a);
  auto clip_three = make_node("optimiser", "{model: model, clip_grad_norm: 0.5}", b);
  CollectingEmitter out;
  run_steps(*clip_one, whole->model(), 3, 40, out);
  run_steps(*clip_three, split->model(), 3, 40, out);
  const auto p1 = read_flat(whole->model().params()), p3 = read_flat(split->model().params());
  for (size_t i = 0; i < kCount; ++i) CHECK(p3[i] == doctest::Approx(p1[i]).epsilon(1e-6));
  CHECK(dynamic_cast<Optimiser&>(*clip_three).last_grad_norm() ==
        doctest::Approx(dynamic_cast<Optimiser&>(*clip_one).last_grad_norm()).epsilon(1e-6));
}

TEST_CASE("learning rate warms up linearly from 0 and then follows the cosine down to min_lr") {
  Optimiser::Params p;
  p.lr = 1e-3;
  p.warmup_steps = 10;
  CHECK(Optimiser::learning_rate(p, 1) == doctest::Approx(1e-4));
  CHECK(Optimiser::learning_rate(p, 5) == doctest::Approx(5e-4));
  CHECK(Optimiser::learning_rate(p, 10) == doctest::Approx(1e-3));
  CHECK(Optimiser::learning_rate(p, 1000) == doctest::Approx(1e-3));
  p.schedule = Optimiser::LrSchedule::cosine;
  p.total_steps = 110;
  p.min_lr = 1e-5;
  CHECK(Optimiser::learning_rate(p, 10) == doctest::Approx(1e-3));
  CHECK(Optimiser::learning_rate(p, 60) == doctest::Approx(1e-5 + (1e-3 - 1e-5) * 0.5));
  CHECK(Optimiser::learning_rate(p, 110) == doctest::Approx(1e-5));
  CHECK(Optimiser::learning_rate(p, 500) == doctest::Approx(1e-5));

  // the node uses and logs that schedule
  RunContext ctx;
  auto& model = add_flat_model(ctx)->model();
  auto node = make_node("optimiser",
                        "{model: model, lr: 0.001, warmup_steps: 10, schedule: cosine, total_steps: 110, min_lr: 1.0e-5}",
                        ctx);
  CollectingEmitter out;
  run_steps(*node, model, 3, 7, out);
  CHECK(ctx.metrics().latest("lr") == doctest::Approx(3e-4));
  CHECK(ctx.metrics().latest("loss") == doctest::Approx(0.5));
}

TEST_CASE("a cosine ends at total_steps, else at --max-steps, else at --max-time, else holds its rate") {
  RunContext ctx;
  add_flat_model(ctx);
  CHECK_THROWS_AS(make_node("optimiser", "{model: model, schedule: cosine, warmup_steps: 10, total_steps: 10}", ctx),
                  ConfigError);
  const std::string yaml = "{model: model, schedule: cosine, warmup_steps: 10}";
  auto params = [&](RunContext& c) {
    auto node = make_node("optimiser", yaml, c);
    return dynamic_cast<Optimiser&>(*node).params();
  };
  {
    auto node = make_node("optimiser", yaml, ctx);  // no end: no decay
    auto& optimiser = dynamic_cast<Optimiser&>(*node);
    CollectingEmitter out;
    run_steps(*node, ctx.resource_as<ModelResource>("model")->model(), 12, 87, out);
    CHECK(optimiser.step() == 12);
    CHECK(ctx.metrics().latest("lr") == doctest::Approx(2e-4));  // the default lr, held
  }
  ctx.max_time_s = 60;
  CHECK(params(ctx).total_steps == 0);  // over the time budget
  ctx.max_steps = 5;                    // a run that ends inside its warm-up
  CHECK(params(ctx).total_steps == 5);
  ctx.max_steps = 500;
  CHECK(params(ctx).total_steps == 500);
}

TEST_CASE("time progress runs from the anchor to the end of the budget, on from a resumed start") {
  CHECK(Optimiser::time_progress(0.0, 10, 10, 100) == 0.0);
  CHECK(Optimiser::time_progress(0.0, 10, 55, 100) == doctest::Approx(0.5));
  CHECK(Optimiser::time_progress(0.0, 10, 100, 100) == 1.0);
  CHECK(Optimiser::time_progress(0.0, 10, 400, 100) == 1.0);   // steps draining after the deadline
  CHECK(Optimiser::time_progress(0.5, 0, 10, 20) == doctest::Approx(0.75));
  CHECK(Optimiser::time_progress(0.25, 30, 31, 20) == 1.0);    // no time left: the decay is over
}

TEST_CASE("with --max-time and no total_steps the cosine follows the run clock and resumes from its progress") {
  TempDir dir("lr_over_time");
  const std::string yaml = "{model: model, lr: 0.001, warmup_steps: 2, schedule: cosine, min_lr: 0.0}";
  const auto rate = [](double progress) { return 1e-3 * 0.5 * (1.0 + std::cos(M_PI * progress)); };
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  ctx.max_time_s = 100;
  auto& model = add_flat_model(ctx)->model();
  auto node = make_node("optimiser", yaml, ctx);
  CollectingEmitter out;
  // The run clock is set as a data-parallel exchange sets it.
  ctx.set_agreed_run_seconds(5);
  run_steps(*node, model, 1, 80, out);
  CHECK(ctx.metrics().latest("lr") == doctest::Approx(5e-4));  // warm-up counts steps
  ctx.set_agreed_run_seconds(10);
  run_steps(*node, model, 1, 81, out, 1);
  CHECK(ctx.metrics().latest("lr") == doctest::Approx(1e-3));  // the decay starts here, at 10 s
  ctx.set_agreed_run_seconds(55);
  run_steps(*node, model, 1, 82, out, 2);
  CHECK(ctx.metrics().latest("lr") == doctest::Approx(rate(0.5)));  // half of the 90 s left
  node->finish();
  const auto latest = dir.path() / "checkpoints" / "latest.safetensors";
  CHECK(SafetensorsFile::read(latest).metadata().at("lr_progress") == "0.5");

  // A resumed run with a budget of its own decays the rest of the way within it.
  RunContext resumed;
  resumed.resume_path = latest;
  resumed.start_step = Optimiser::checkpoint_step(latest);
  resumed.max_time_s = 20;
  auto& fresh = add_flat_model(resumed)->model();
  auto restored = make_node("optimiser", yaml, resumed);
  resumed.set_agreed_run_seconds(0);
  run_steps(*restored, fresh, 1, 83, out, 3);
  CHECK(resumed.metrics().latest("lr") == doctest::Approx(rate(0.5)));
  resumed.set_agreed_run_seconds(10);
  run_steps(*restored, fresh, 1, 84, out, 4);
  CHECK(resumed.metrics().latest("lr") == doctest::Approx(rate(0.75)));
  resumed.set_agreed_run_seconds(25);
  run_steps(*restored, fresh, 1, 85, out, 5);
  CHECK(resumed.metrics().latest("lr") == doctest::Approx(0.0));

  // Resumed with no budget at all, the rate stays where the checkpoint left it.
  RunContext held;
  held.resume_path = latest;
  held.start_step = Optimiser::checkpoint_step(latest);
  auto& again = add_flat_model(held)->model();
  auto holding = make_node("optimiser", yaml, held);
  run_steps(*holding, again, 2, 88, out, 3);
  CHECK(held.metrics().latest("lr") == doctest::Approx(rate(0.5)));
}

TEST_CASE("a checkpoint with a malformed lr_progress is rejected with the file's name") {
  TempDir dir("bad_progress");
  RunContext ctx;
  auto& model = add_flat_model(ctx)->model();
  auto node = make_node("optimiser", "{model: model, schedule: cosine, total_steps: 10}", ctx);
  CollectingEmitter out;
  run_steps(*node, model, 1, 86, out);
  auto& optimiser = dynamic_cast<Optimiser&>(*node);
  const auto good = dir.path() / "good.safetensors";
  optimiser.write_checkpoint(good);
  for (const std::string bad : {"", "0.5x", "1.5", "-0.1", "nan"}) {
    SafetensorsFile file = SafetensorsFile::read(good);
    file.set_metadata("lr_progress", bad);
    const auto path = dir.path() / "bad.safetensors";
    file.write(path);
    RunContext resumed;
    resumed.resume_path = path;
    add_flat_model(resumed);
    try {
      make_node("optimiser", "{model: model, schedule: cosine, total_steps: 10}", resumed);
      FAIL("accepted lr_progress '" << bad << "'");
    } catch (const DataError& e) {
      CHECK(std::string(e.what()).find("bad.safetensors") != std::string::npos);
      CHECK(std::string(e.what()).find("lr_progress") != std::string::npos);
    }
  }
}

TEST_CASE("clip_grad_norm scales the gradient to the max norm and logs the norm before clipping") {
  RunContext ctx;
  auto& model = add_flat_model(ctx)->model();
  auto node = make_node("optimiser", "{model: model, clip_grad_norm: 0.5, beta1: 0.9}", ctx);
  auto& optimiser = dynamic_cast<Optimiser&>(*node);
  auto grad = random_values(kCount, 3);
  double norm = 0;
  for (float g : grad) norm += double(g) * g;
  norm = std::sqrt(norm);
  for (auto& g : grad) g = static_cast<float>(g * 10.0 / norm);  // ||g|| = 10
  write_flat(model.grads(), grad);
  CollectingEmitter out;
  node->process(single_input(grads_packet(0)), out);
  CHECK(optimiser.last_grad_norm() == doctest::Approx(10.0).epsilon(1e-5));
  CHECK(ctx.metrics().latest("grad_norm") == doctest::Approx(10.0).epsilon(1e-5));
  // exp_avg = (1 - beta1) * clipped gradient: its norm shows what the step used
  const auto m = read_flat(optimiser.exp_avg());
  double m_norm = 0;
  for (float v : m) m_norm += double(v) * v;
  CHECK(std::sqrt(m_norm) / 0.1 == doctest::Approx(0.5).epsilon(1e-4));
  for (size_t i = 0; i < kCount; ++i) CHECK(m[i] / 0.1 == doctest::Approx(grad[i] * 0.05).epsilon(1e-4));

  // a gradient already under the limit is left alone
  grad = random_values(kCount, 4, 0.01f);
  write_flat(model.grads(), grad);
  const auto m_before = read_flat(optimiser.exp_avg());
  node->process(single_input(grads_packet(1)), out);
  const auto m_after = read_flat(optimiser.exp_avg());
  for (size_t i = 0; i < kCount; ++i) CHECK(m_after[i] == doctest::Approx(0.9 * m_before[i] + 0.1 * grad[i]));
}

TEST_CASE("accumulating 3 packets steps once on their averaged gradient") {
  const auto start = random_values(kCount, 11);
  const std::vector<std::vector<float>> grads{random_values(kCount, 12), random_values(kCount, 13),
                                              random_values(kCount, 14)};
  RunContext ctx_a, ctx_b;
  auto& model_a = add_flat_model(ctx_a)->model();
  auto& model_b = add_flat_model(ctx_b)->model();
  write_flat(model_a.params(), start);
  write_flat(model_b.params(), start);
  auto accumulating = make_node("optimiser", "{model: model, lr: 0.01, accumulate: 3}", ctx_a);
  auto single = make_node("optimiser", "{model: model, lr: 0.01}", ctx_b);

  CollectingEmitter out_a, out_b;
  std::vector<float> sum(kCount, 0.0f);
  for (int s = 0; s < 3; ++s) {
    for (size_t i = 0; i < kCount; ++i) sum[i] += grads[s][i];
    write_flat(model_a.grads(), sum);  // what backward() leaves after adding this batch
    accumulating->process(single_input(grads_packet(s)), out_a);
    if (s < 2) CHECK(read_flat(model_a.params()) == start);  // no step before the third packet
  }
  std::vector<float> mean(kCount);
  for (size_t i = 0; i < kCount; ++i) mean[i] = sum[i] / 3.0f;
  write_flat(model_b.grads(), mean);
  single->process(single_input(grads_packet(0)), out_b);

  REQUIRE(out_a.size() == 3);  // one packet out per packet in, so a limiter frees every slot
  CHECK(out_a.packet(0).integer("step") == 0);
  CHECK(out_a.packet(1).integer("step") == 0);
  CHECK(out_a.packet(2).integer("step") == 1);
  const auto a = read_flat(model_a.params()), b = read_flat(model_b.params());
  for (size_t i = 0; i < kCount; ++i) CHECK(a[i] == doctest::Approx(b[i]).epsilon(1e-6));
}

TEST_CASE("EMA decay follows diffusers' warm-up: 0 at the first update, then min(decay, (1+s)/(10+s))") {
  CHECK(Optimiser::ema_decay_at(0.999, 1) == 0.0);
  CHECK(Optimiser::ema_decay_at(0.999, 2) == doctest::Approx(2.0 / 11.0));
  CHECK(Optimiser::ema_decay_at(0.999, 3) == doctest::Approx(3.0 / 12.0));
  CHECK(Optimiser::ema_decay_at(0.999, 100000) == doctest::Approx(0.999));
  CHECK(Optimiser::ema_decay_at(0.5, 50) == doctest::Approx(0.5));

  // after the first update the EMA equals the weights exactly
  RunContext ctx;
  auto& model = add_flat_model(ctx)->model();
  write_flat(model.params(), random_values(kCount, 21));
  auto node = make_node("optimiser", "{model: model, lr: 0.1}", ctx);
  auto& optimiser = dynamic_cast<Optimiser&>(*node);
  CollectingEmitter out;
  run_steps(*node, model, 1, 22, out);
  CHECK(read_flat(*optimiser.ema()) == read_flat(model.params()));
  const auto ema1 = read_flat(*optimiser.ema());
  run_steps(*node, model, 1, 23, out, 1);
  const auto p2 = read_flat(model.params()), ema2 = read_flat(*optimiser.ema());
  const double d = 2.0 / 11.0;
  for (size_t i = 0; i < kCount; ++i) CHECK(ema2[i] == doctest::Approx(d * ema1[i] + (1 - d) * p2[i]).epsilon(1e-6));

  auto no_ema = make_node("optimiser", "{model: model, ema_decay: 0}", ctx, "plain");
  CHECK(dynamic_cast<Optimiser&>(*no_ema).ema() == nullptr);
}

TEST_CASE("a non-finite gradient norm stops naming the step and the value, or is skipped with on_nonfinite: skip") {
  RunContext ctx;
  auto& model = add_flat_model(ctx)->model();
  const auto start = random_values(kCount, 31);
  write_flat(model.params(), start);
  auto node = make_node("optimiser", "{model: model, lr: 0.1}", ctx, "opt");
  auto grad = random_values(kCount, 32);
  grad[3] = NAN;
  write_flat(model.grads(), grad);
  CollectingEmitter out;
  try {
    node->process(single_input(grads_packet(41)), out);
    FAIL("expected a NodeError");
  } catch (const NodeError& e) {
    const std::string what = e.what();
    CHECK(e.step() == 41);
    CHECK(what.find("opt") != std::string::npos);
    CHECK(what.find("nan") != std::string::npos);
    CHECK(what.find("step 41") != std::string::npos);
  }
  CHECK(read_flat(model.params()) == start);

  auto skipping = make_node("optimiser", "{model: model, lr: 0.1, on_nonfinite: skip}", ctx, "skipper");
  grad[3] = INFINITY;
  write_flat(model.grads(), grad);
  skipping->process(single_input(grads_packet(42)), out);
  REQUIRE(out.size() == 1);  // still answers, so the limiter is not starved
  CHECK(out.packet(0).integer("step") == 0);
  CHECK(read_flat(model.params()) == start);
  CHECK(ctx.metrics().latest("skipped_step") == 1.0);
  // the next finite gradient steps as usual
  write_flat(model.grads(), random_values(kCount, 33));
  skipping->process(single_input(grads_packet(43)), out);
  CHECK(out.packet(1).integer("step") == 1);
  CHECK(read_flat(model.params()) != start);
}

TEST_CASE("checkpoints are written atomically as step files plus latest, and keep_last prunes the older ones") {
  TempDir dir("ckpt");
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto& model = add_flat_model(ctx)->model();
  auto node = make_node("optimiser", "{model: model, lr: 0.01, checkpoint_every: 2, keep_last: 2}", ctx);
  CollectingEmitter out;
  run_steps(*node, model, 7, 50, out);
  node->finish();
  const auto folder = dir.path() / "checkpoints";
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(folder)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"latest.safetensors", "step_000006.safetensors", "step_000007.safetensors"});
  CHECK(Optimiser::checkpoint_step(folder / "latest.safetensors") == 7);
  CHECK(Optimiser::checkpoint_step(folder / "step_000006.safetensors") == 6);
  auto bytes = [](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  CHECK(bytes(folder / "latest.safetensors") == bytes(folder / "step_000007.safetensors"));

  const auto file = SafetensorsFile::read(folder / "latest.safetensors");
  CHECK(file.has("layer.weight"));
  CHECK(file.has("ema.layer.bias"));
  CHECK(file.entry("optimiser.exp_avg").shape == Shape{17});
  CHECK(file.metadata().at("format") == "diffuflow-checkpoint");
  CHECK(file.metadata().at("format_version") == "1");
  CHECK(file.metadata().at("model_config") == "{\"kind\": \"flat\", \"params\": 17}");
  CHECK(file.metadata().at("optimiser_step") == "7");

  // no out_dir: nothing is written
  RunContext quiet;
  auto& quiet_model = add_flat_model(quiet)->model();
  auto silent = make_node("optimiser", "{model: model, checkpoint_every: 1}", quiet);
  run_steps(*silent, quiet_model, 2, 60, out);
  silent->finish();
  CHECK(dynamic_cast<Optimiser&>(*silent).checkpoint_folder().empty());
}

TEST_CASE("a checkpoint round-trips weights, EMA, moments and step counters exactly") {
  TempDir dir("roundtrip");
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  auto& model = add_flat_model(ctx)->model();
  write_flat(model.params(), random_values(kCount, 70));
  auto node = make_node("optimiser", "{model: model, lr: 0.01, ema_decay: 0.95}", ctx);
  auto& optimiser = dynamic_cast<Optimiser&>(*node);
  CollectingEmitter out;
  run_steps(*node, model, 4, 71, out);
  node->finish();
  const auto latest = dir.path() / "checkpoints" / "latest.safetensors";

  RunContext resumed;
  resumed.resume_path = latest;
  resumed.start_step = Optimiser::checkpoint_step(latest);
  auto& fresh = add_flat_model(resumed)->model();
  auto restored_node = make_node("optimiser", "{model: model, lr: 0.01, ema_decay: 0.95}", resumed);
  auto& restored = dynamic_cast<Optimiser&>(*restored_node);
  CHECK(read_flat(fresh.params()) == read_flat(model.params()));
  CHECK(read_flat(*restored.ema()) == read_flat(*optimiser.ema()));
  CHECK(read_flat(restored.exp_avg()) == read_flat(optimiser.exp_avg()));
  CHECK(read_flat(restored.exp_avg_sq()) == read_flat(optimiser.exp_avg_sq()));
  CHECK(restored.step() == 4);
  CHECK(restored.packets() == 4);

  // and the next step is bitwise the same in both
  run_steps(*node, model, 1, 90, out, 4);
  run_steps(*restored_node, fresh, 1, 90, out, 4);
  CHECK(read_flat(fresh.params()) == read_flat(model.params()));
  CHECK(read_flat(*restored.ema()) == read_flat(*optimiser.ema()));
}

TEST_CASE("checkpoint_step and resuming reject a file that is not a training checkpoint") {
  TempDir dir("badckpt");
  const auto junk = dir.path() / "junk.safetensors";
  std::ofstream(junk) << "not a safetensors file";
  CHECK_THROWS_AS(Optimiser::checkpoint_step(junk), DataError);
  SafetensorsFile plain;
  const float w = 1.0f;
  plain.add_f32("w", {1}, &w);
  plain.write(dir.path() / "plain.safetensors");
  CHECK_THROWS_AS(Optimiser::checkpoint_step(dir.path() / "plain.safetensors"), DataError);

  RunContext ctx;
  ctx.resume_path = dir.path() / "plain.safetensors";
  add_flat_model(ctx);
  CHECK_THROWS_AS(make_node("optimiser", "{model: model}", ctx), DataError);
}

namespace {

// The flat model under another configuration text.
class OtherConfigModel : public diffuflow::test::FlatModelResource {
 public:
  OtherConfigModel(const dnnl::engine& engine, std::string json)
      : FlatModelResource(engine), json_(std::move(json)) {}
  std::string config_json() const override { return json_; }

 private:
  std::string json_;
};

// What resuming from `checkpoint` says when the model's config is `ours`.
std::string resume_error(const std::filesystem::path& checkpoint, const std::string& ours) {
  RunContext ctx;
  ctx.resume_path = checkpoint;
  ctx.add_resource("model", std::make_shared<OtherConfigModel>(ctx.device().engine(), ours));
  try {
    make_node("optimiser", "{model: model}", ctx);
  } catch (const DataError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("resuming a checkpoint of another model config names the keys that differ, with both values") {
  TempDir dir("otherconfig");
  RunContext ctx;
  ctx.set_out_dir(dir.path());
  ctx.add_resource("model", std::make_shared<OtherConfigModel>(
                                ctx.device().engine(),
                                R"({"model": "unet", "sample_size": 32, "block_out_channels": [32, 64], )"
                                R"("norm": {"groups": 8, "eps": 1e-05}, "dropout": 0.0})"));
  auto node = make_node("optimiser", "{model: model}", ctx);
  node->finish();
  const auto latest = dir.path() / "checkpoints" / "latest.safetensors";

  const std::string message =
      resume_error(latest, R"({"model": "unet", "sample_size": 28, "block_out_channels": [32, 64, 64], )"
                           R"("norm": {"groups": 16, "eps": 1e-05}, "attention": true})");
  CHECK(message.find("written for another model config") != std::string::npos);
  CHECK(message.find("sample_size is 32 in the checkpoint, 28 in this model") != std::string::npos);
  CHECK(message.find("block_out_channels is [32,64] in the checkpoint, [32,64,64] in this model") !=
        std::string::npos);
  CHECK(message.find("norm.groups is 8 in the checkpoint, 16 in this model") != std::string::npos);
  CHECK(message.find("dropout only in the checkpoint (0.0)") != std::string::npos);
  CHECK(message.find("attention only in this model (true)") != std::string::npos);
  // Keys that agree are not listed.
  CHECK(message.find("norm.eps") == std::string::npos);
  CHECK(message.find("\"model\"") == std::string::npos);

  // Text that is not JSON is shown whole.
  const std::string unparsed = resume_error(latest, "not json");
  CHECK(unparsed.find("written for another model config") != std::string::npos);
  CHECK(unparsed.find("this model's is not json") != std::string::npos);
}
