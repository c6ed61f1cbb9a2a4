// A second config end to end, the resource, and the model API's contracts.
#include "graph/safetensors.hpp"
#include "node_test_util.hpp"
#include "nodes/model/unet.hpp"
#include "nodes/model/unet_model.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <set>
#include <thread>

using namespace diffuflow;

namespace {

Tensor random_tensor(const Shape& shape, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (auto& v : values) v = normal(rng);
  return Tensor::from_vector(shape, values);
}

Tensor timesteps(const std::vector<int32_t>& values) {
  Tensor t({static_cast<int64_t>(values.size())}, DType::s32, Device::host()->engine());
  auto m = t.map<int32_t>();
  for (size_t i = 0; i < values.size(); ++i) m[i] = values[i];
  return t;
}

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// A randomly initialised unet-tiny with a batch of two inputs, timesteps and
// an output gradient; pass() runs forward (and backward when training) and
// returns the prediction followed by the input gradient.
struct TinyPass {
  std::shared_ptr<UNetModel> model;
  Tensor x, g, t;
  explicit TinyPass(Device& device) : model(make_unet(UNetConfig::named("unet-tiny"), device)) {
    model->init_random(1);
    std::mt19937 rng(5);
    x = random_tensor({2, 1, 16, 16}, rng);
    g = random_tensor({2, 1, 16, 16}, rng);
    t = timesteps({3, 700});
  }
  std::vector<float> pass(bool for_training) {
    model->zero_grads();
    auto fwd = model->forward(x, t, for_training);
    std::vector<float> out = fwd.prediction.to_vector();
    if (for_training) {
      const auto gx = model->backward(*fwd.state, g).to_vector();
      out.insert(out.end(), gx.begin(), gx.end());
    }
    return out;
  }
};

}  // namespace

TEST_CASE("a 3-level U-Net with attention at 8x8 and 4x4 runs forward and backward with correct gradients") {
  UNetConfig c;
  c.in_channels = 2;
  c.out_channels = 3;
  c.sample_size = 16;
  c.block_out_channels = {16, 32, 32};
  c.layers_per_block = 1;
  c.down_block_types = {"DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"};
  c.up_block_types = {"AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"};
  c.norm_num_groups = 8;
  c.attention_head_dim = 8;
  Device device(DeviceSpec{});
  auto model = make_unet(c, device);
  model->init_random(7);
  std::mt19937 rng(11);
  const Tensor x = random_tensor({2, 2, 16, 16}, rng);
  const Tensor t = timesteps({3, 640});
  const Tensor g = random_tensor({2, 3, 16, 16}, rng);

  model->zero_grads();
  auto fwd = model->forward(x, t, true);
  CHECK(fwd.prediction.shape() == Shape{2, 3, 16, 16});
  const Tensor grad_x = model->backward(*fwd.state, g);
  CHECK(grad_x.shape() == Shape{2, 2, 16, 16});
  const auto gx = grad_x.to_vector();
  CHECK(all_finite(fwd.prediction.to_vector()));
  CHECK(all_finite(gx));
  SafetensorsFile grads;
  model->save_grads_to(grads);
  for (const auto& name : grads.names()) {
    INFO(name);
    CHECK(all_finite(grads.floats(name)));
  }

  // Finite-difference spot checks of L = sum(pred * g) for a few parameters and an input entry.
  const auto gv = g.to_vector();
  auto loss = [&](const Tensor& input) { return dot(model->forward(input, t, false).prediction.to_vector(), gv); };
  float* params = static_cast<float*>(model->params().get_data_handle());
  const float eps = 1e-2f;
  const std::vector<std::pair<std::string, int64_t>> probes = {
      {"conv_in.weight", 5},
      {"time_embedding.linear_1.weight", 17},
      {"down_blocks.1.attentions.0.to_q.weight", 40},
      {"down_blocks.2.attentions.0.to_v.bias", 3},
      {"mid_block.attentions.0.group_norm.weight", 2},
      {"up_blocks.0.resnets.1.conv_shortcut.weight", 9},
      {"up_blocks.1.upsamplers.0.conv.bias", 1},
      {"conv_norm_out.bias", 4},
      {"conv_out.weight", 12}};
  for (const auto& [name, index] : probes) {
    const auto& slot = model->slot(name);
    const int64_t i = slot.offset + index;
    const float analytic = grads.floats("grad." + name)[static_cast<size_t>(index)];
    const float saved = params[i];
    params[i] = saved + eps;
    model->params_written();  // written through a held pointer
    const double up = loss(x);
    params[i] = saved - eps;
    model->params_written();  // written through a held pointer
    const double down = loss(x);
    params[i] = saved;
    model->params_written();  // written through a held pointer
    const double numeric = (up - down) / (2 * eps);
    INFO(name << "[" << index << "]: analytic " << analytic << ", numeric " << numeric);
    CHECK(std::fabs(numeric - analytic) <= 2e-2 * std::max(1.0, std::fabs(numeric)) + 2e-3);
  }
  {
    Tensor shifted = x.clone();
    const int64_t i = 300;
    auto m = shifted.map<float>();
    const float saved = m[i];
    m[i] = saved + eps;
    const double up = loss(shifted);
    m[i] = saved - eps;
    const double down = loss(shifted);
    const double numeric = (up - down) / (2 * eps);
    INFO("x[300]: analytic " << gx[i] << ", numeric " << numeric);
    CHECK(std::fabs(numeric - gx[i]) <= 2e-2 * std::max(1.0, std::fabs(numeric)) + 2e-3);
  }
}

TEST_CASE("unet-s runs forward and backward at batch 2 on 28x28 images") {
  Device device(DeviceSpec{});
  auto model = make_unet(UNetConfig::named("unet-s"), device);
  CHECK(model->param_count() == 1623169);
  model->init_random(1);
  std::mt19937 rng(3);
  model->zero_grads();
  auto fwd = model->forward(random_tensor({2, 1, 28, 28}, rng), timesteps({0, 999}), true);
  CHECK(fwd.prediction.shape() == Shape{2, 1, 28, 28});
  const Tensor grad_x = model->backward(*fwd.state, random_tensor({2, 1, 28, 28}, rng));
  CHECK(all_finite(grad_x.to_vector()));
  CHECK(all_finite(fwd.prediction.to_vector()));
}

TEST_CASE("a fractional f32 timestep is embedded as it is; integral f32 values equal the s32 ones bitwise") {
  Device device(DeviceSpec{});
  auto model = make_unet(UNetConfig::named("unet-tiny"), device);
  model->init_random(2);
  std::mt19937 rng(4);
  const Tensor x = random_tensor({2, 1, 16, 16}, rng);
  auto floats = [](const std::vector<float>& values) { return Tensor::from_vector({int64_t(values.size())}, values); };
  const auto ints = model->forward(x, timesteps({947, 3}), false).prediction.to_vector();
  CHECK(model->forward(x, floats({947.0f, 3.0f}), false).prediction.to_vector() == ints);
  const auto between = model->forward(x, floats({947.37f, 3.0f}), false).prediction.to_vector();
  const auto above = model->forward(x, timesteps({948, 3}), false).prediction.to_vector();
  // The first image moves (and lies between its neighbours' predictions nowhere exactly); the second does not.
  const size_t half = ints.size() / 2;
  CHECK(std::vector<float>(between.begin(), between.begin() + half) != std::vector<float>(ints.begin(), ints.begin() + half));
  CHECK(std::vector<float>(between.begin(), between.begin() + half) != std::vector<float>(above.begin(), above.begin() + half));
  CHECK(std::vector<float>(between.begin() + half, between.end()) == std::vector<float>(ints.begin() + half, ints.end()));
  // Other dtypes and shapes are refused.
  CHECK_THROWS_WITH_AS(model->forward(x, Tensor::from_vector({2, 1}, {1.0f, 2.0f}), false),
                       doctest::Contains("t must be"), std::invalid_argument);
}

TEST_CASE("forward rejects inputs of the wrong shape and backward a state from another model") {
  Device device(DeviceSpec{});
  auto model = make_unet(UNetConfig::named("unet-tiny"), device);
  auto other = make_unet(UNetConfig::named("unet-tiny"), device);
  std::mt19937 rng(5);
  CHECK_THROWS_WITH_AS(model->forward(random_tensor({1, 2, 16, 16}, rng), timesteps({1}), false),
                       doctest::Contains("x must be f32 [N, 1, H, W]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(model->forward(random_tensor({1, 1, 15, 16}, rng), timesteps({1}), false),
                       doctest::Contains("multiples of 2"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(model->forward(random_tensor({2, 1, 16, 16}, rng), timesteps({1}), false),
                       doctest::Contains("t must be"), std::invalid_argument);
  auto fwd = model->forward(random_tensor({1, 1, 16, 16}, rng), timesteps({1}), true);
  CHECK_THROWS_WITH_AS(other->backward(*fwd.state, random_tensor({1, 1, 16, 16}, rng)),
                       doctest::Contains("not from this model"), std::invalid_argument);
}

TEST_CASE("loading weights of the wrong shape or with missing tensors names the tensor") {
  Device device(DeviceSpec{});
  auto model = make_unet(UNetConfig::named("unet-tiny"), device);
  test::TempDir dir;
  SafetensorsFile file;
  model->save_to(file);
  SafetensorsFile wrong;
  for (const auto& name : file.names()) {
    const auto& e = file.entry(name);
    if (name == "conv_out.bias")
      wrong.add(name, "F32", {2}, std::vector<unsigned char>(8, 0));
    else if (name != "conv_in.bias")
      wrong.add(name, e.dtype, e.shape, e.data);
  }
  wrong.write(dir / "w.safetensors");
  const auto read = SafetensorsFile::read(dir / "w.safetensors");
  CHECK_THROWS_WITH_AS(model->load(read), doctest::Contains("'conv_in.bias'"), DataError);
  wrong.add("conv_in.bias", "F32", {16}, std::vector<unsigned char>(64, 0));
  wrong.write(dir / "w.safetensors");
  CHECK_THROWS_WITH_AS(model->load(SafetensorsFile::read(dir / "w.safetensors")),
                       doctest::Contains("'conv_out.bias' has shape [2], expected [1]"), DataError);
  wrong.add("conv_out.bias", "F32", {1}, std::vector<unsigned char>(4, 0));
  wrong.add("extra.weight", "F32", {1}, std::vector<unsigned char>(4, 0));
  wrong.write(dir / "w.safetensors");
  CHECK_THROWS_WITH_AS(model->load(SafetensorsFile::read(dir / "w.safetensors")),
                       doctest::Contains("'extra.weight'"), DataError);
}

TEST_CASE("save_to then load restores every parameter exactly") {
  Device device(DeviceSpec{});
  auto a = make_unet(UNetConfig::named("unet-tiny"), device);
  auto b = make_unet(UNetConfig::named("unet-tiny"), device);
  a->init_random(42);
  test::TempDir dir;
  SafetensorsFile file;
  a->save_to(file);
  file.write(dir / "ckpt.safetensors");
  b->load(SafetensorsFile::read(dir / "ckpt.safetensors"));
  const auto* pa = static_cast<const float*>(a->params().get_data_handle());
  const auto* pb = static_cast<const float*>(b->params().get_data_handle());
  CHECK(std::equal(pa, pa + a->param_count(), pb));
}

TEST_CASE("unet_model resource loads the fixture weights and rejects a bad config at validation") {
  RunContext ctx;
  auto resource = test::make_resource(
      "unet_model", "model",
      "{config: unet-tiny, weights: \"" + test::fixture("unet_tiny/weights.safetensors").string() + "\"}", ctx);
  auto& unet = std::dynamic_pointer_cast<UNetModelResource>(resource)->unet();
  CHECK(unet.param_count() == 176849);
  const auto weights = SafetensorsFile::read(test::fixture("unet_tiny/weights.safetensors"));
  const auto& slot = unet.slot("conv_out.weight");
  const auto* p = static_cast<const float*>(unet.params().get_data_handle()) + slot.offset;
  CHECK(std::vector<float>(p, p + slot.count()) == weights.floats("conv_out.weight"));

  CHECK_THROWS_WITH_AS(test::make_resource("unet_model", "m2", "{config: unet-xl}", ctx),
                       doctest::Contains("unknown built-in U-Net config 'unet-xl'"), ConfigError);
  CHECK_THROWS_WITH_AS(test::make_resource("unet_model", "m3", "{config: unet-s, weights: /no/such.safetensors}", ctx),
                       doctest::Contains("does not exist"), ConfigError);

  // Random init: the same seed gives the same parameters.
  auto r1 = test::make_resource("unet_model", "r1", "{config: unet-tiny, init_seed: 9}", ctx);
  auto r2 = test::make_resource("unet_model", "r2", "{config: unet-tiny, init_seed: 9}", ctx);
  auto& m1 = std::dynamic_pointer_cast<UNetModelResource>(r1)->model();
  auto& m2 = std::dynamic_pointer_cast<UNetModelResource>(r2)->model();
  const auto* a = static_cast<const float*>(m1.params().get_data_handle());
  const auto* b = static_cast<const float*>(m2.params().get_data_handle());
  CHECK(std::equal(a, a + m1.param_count(), b));
  CHECK(a[0] != 0.0f);
}

TEST_CASE("unet_model's precision: fastest takes the probe's choice, and a deterministic run refuses it") {
  RunContext ctx;
  auto named = [&](const std::string& name, const std::string& precision) {
    auto resource = test::make_resource("unet_model", name, "{config: unet-tiny, precision: " + precision + "}", ctx);
    return std::dynamic_pointer_cast<UNetModelResource>(resource)->unet().precision();
  };
  CHECK(named("a", "f32") == Precision::f32);
  CHECK(named("b", "bf16") == Precision::bf16);
  CHECK(named("c", "fastest") == probe_precision(ctx.device().engine()).chosen);
  CHECK_THROWS_WITH(test::make_resource("unet_model", "d", "{config: unet-tiny, precision: fastets}", ctx),
                    doctest::Contains("expected one of f32|bf16|fastest (did you mean 'fastest'?)"));

  ctx.deterministic = true;
  CHECK(named("e", "bf16") == Precision::bf16);
  // At validation (the pipeline's check), and by the resource itself.
  CHECK_THROWS_WITH_AS(test::make_resource("unet_model", "f", "{config: unet-tiny, precision: fastest}", ctx),
                       doctest::Contains("precision: fastest chooses by timing"), ConfigError);
  ResourceConfig config{"g", "unet_model", {}};
  config.params = test::resolve_test_params(Registry::instance().resource_contract("unet_model")->params,
                                            "{config: unet-tiny, precision: fastest}");
  CHECK_THROWS_WITH_AS(Registry::instance().create_resource(config, ctx),
                       doctest::Contains("precision: fastest chooses by timing"), ConfigError);
}

TEST_CASE("a profiled pass times every step under its layer kind and gives the same results") {
  Device device(DeviceSpec{});
  TinyPass tiny(device);
  auto& model = tiny.model;
  auto run = [&](bool for_training) { return tiny.pass(for_training); };
  const auto plain_inference = run(false), plain_training = run(true);

  UNetModel::StepProfiles profiles;
  model->profile_steps(&profiles);
  CHECK(run(false) == plain_inference);
  CHECK(run(true) == plain_training);
  model->profile_steps(nullptr);
  run(true);  // no longer profiled
  REQUIRE(profiles.forward.size() == 2);  // one inference, one training forward
  REQUIRE(profiles.backward.size() == 1);

  std::set<std::string> layers, backward_layers;
  for (const auto& pass : {profiles.forward[0], profiles.forward[1], profiles.backward[0]}) {
    CHECK(!pass.empty());
    for (const StepTime& step : pass) {
      CHECK(step.seconds >= 0);
      CHECK(std::string(step.primitive) != "");
      layers.insert(step.layer);
    }
  }
  for (const StepTime& step : profiles.backward[0]) backward_layers.insert(step.layer);
  // unet-tiny has every kind; backward steps carry the kind of the layer that registered them.
  for (const char* kind : {"convolution", "group_norm", "elementwise", "attention", "linear", "other"}) {
    CAPTURE(kind);
    CHECK(layers.count(kind));
  }
  for (const char* kind : {"convolution", "group_norm", "attention", "linear"}) {
    CAPTURE(kind);
    CHECK(backward_layers.count(kind));
  }
  // No pass waits for the engine midway: no host step. On this CPU engine
  // the group norms are native steps (fused kernels that need no wait).
  for (const auto* passes : {&profiles.forward, &profiles.backward})
    for (const PassProfile& pass : *passes)
      for (const StepTime& step : pass) {
        CHECK(std::string(step.primitive) != "host");
        if (std::string(step.layer) == "group_norm") CHECK(std::string(step.primitive) == "native");
      }
}

TEST_CASE("passes after load, init_random or copy_flat into the parameters read the new weights (f32 and bf16)") {
  for (const Precision precision : {Precision::f32, Precision::bf16}) {
    CAPTURE(enum_name(precision));
    Device device(DeviceSpec{});
    auto model = make_unet(UNetConfig::named("unet-tiny"), device);
    auto other = make_unet(UNetConfig::named("unet-tiny"), device);
    model->set_precision(precision);
    other->set_precision(precision);
    model->init_random(1);
    other->init_random(2);
    std::mt19937 rng(5);
    const Tensor x = random_tensor({2, 1, 16, 16}, rng);
    const Tensor t = timesteps({10, 500});
    auto predict = [&](DenoiserModel& m) { return m.forward(x, t, false).prediction.to_vector(); };
    const auto first = predict(*model);
    const auto second = predict(*other);
    REQUIRE(first != second);
    // The same program (pooled per batch size) runs each time: its converted
    // weights must follow every way of writing the parameters.
    SafetensorsFile file;
    other->save_to(file);
    model->load(file);
    CHECK(predict(*model) == second);
    model->init_random(1);
    CHECK(predict(*model) == first);
    model->copy_flat(other->params(), model->params());
    CHECK(predict(*model) == second);
    {
      HostMap<float> host(model->params());  // written through the accessor
      std::fill(host.begin(), host.end(), 0.0f);
    }
    const auto zeros = predict(*model);
    CHECK(std::all_of(zeros.begin(), zeros.end(), [](float v) { return v == 0.0f; }));
  }
}

TEST_CASE("bf16 training with 16 channels in and out (bf16 first and last convolutions): within rounding of f32") {
  // conv_in and conv_out run as bf16 convolutions here, so the output is a
  // bf16 activation read out as f32 and the output gradient comes in as f32.
  UNetConfig c = UNetConfig::named("unet-tiny");
  c.in_channels = 16;
  c.out_channels = 16;
  c.sample_size = 8;
  c.norm_num_groups = 8;
  c.attention_head_dim = 8;
  Device device(DeviceSpec{});
  std::mt19937 rng(3);
  const Tensor x = random_tensor({2, 16, 8, 8}, rng);
  const Tensor t = timesteps({3, 640});
  const Tensor g = random_tensor({2, 16, 8, 8}, rng);
  struct Result {
    std::vector<float> prediction, grad_x;
    SafetensorsFile grads;
  };
  auto run = [&](Precision precision) {
    auto model = make_unet(c, device);
    model->init_random(7);
    model->set_precision(precision);
    model->zero_grads();
    Result r;
    auto fwd = model->forward(x, t, true);
    r.prediction = fwd.prediction.to_vector();
    r.grad_x = model->backward(*fwd.state, g).to_vector();
    model->save_grads_to(r.grads);
    return r;
  };
  const Result bf16 = run(Precision::bf16), f32 = run(Precision::f32);
  auto relative = [](const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
      den += double(want[i]) * want[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
  };
  CHECK(relative(bf16.prediction, f32.prediction) < 2e-2);
  CHECK(relative(bf16.grad_x, f32.grad_x) < 3e-2);
  for (const char* name : {"grad.conv_in.weight", "grad.conv_out.weight", "grad.down_blocks.1.attentions.0.to_q.weight",
                           "grad.up_blocks.1.resnets.0.conv1.weight"}) {
    CAPTURE(name);
    CHECK(relative(bf16.grads.floats(name), f32.grads.floats(name)) < 5e-2);
  }
  if (native_bf16(device.engine())) CHECK(relative(bf16.prediction, f32.prediction) > 1e-5);
}

TEST_CASE("native_kernels off: oneDNN primitives only, the same prediction and gradients within f32 rounding") {
  Device device(DeviceSpec{});
  TinyPass tiny(device);
  auto& model = tiny.model;
  auto run = [&](bool native, std::set<std::string>& primitives) {
    model->set_native_kernels(native);
    UNetModel::StepProfiles profiles;
    model->profile_steps(&profiles);
    const std::vector<float> out = tiny.pass(true);
    model->profile_steps(nullptr);
    for (const auto* passes : {&profiles.forward, &profiles.backward})
      for (const PassProfile& pass : *passes)
        for (const StepTime& step : pass) primitives.insert(step.primitive);
    return out;
  };
  std::set<std::string> with_native, without;
  const auto native = run(true, with_native), primitives = run(false, without);
  CHECK(with_native.count("native"));
  CHECK(!without.count("native"));
  CHECK(!without.count("host"));
  CHECK(model->programs_built() == 2);
  REQUIRE(native.size() == primitives.size());
  float worst = 0;
  for (size_t i = 0; i < native.size(); ++i) worst = std::max(worst, std::fabs(native[i] - primitives[i]));
  CHECK(worst < 1e-4f);
}

namespace {

// Records the gradients an observer is handed, as data-parallel ranks would
// sum them: each range as it is announced final, and the whole buffer at the end.
class RecordingObserver : public GradientObserver {
 public:
  void begin(const dnnl::memory& staging, int64_t count) override {
    staging_ = staging;
    count_ = count;
    ready_.clear();
    announced.assign(static_cast<size_t>(count), std::nanf(""));
  }
  void ready(int64_t from) override {
    const int64_t above = ready_.empty() ? count_ : ready_.back();
    CHECK(from < above);  // falling offsets
    ready_.push_back(from);
    const float* data = static_cast<const float*>(staging_.get_data_handle());
    std::copy(data + from, data + above, announced.begin() + from);
  }
  void end() override {
    const float* data = static_cast<const float*>(staging_.get_data_handle());
    seen.assign(data, data + count_);
  }
  std::vector<float> seen;       // the buffer at end()
  std::vector<float> announced;  // each value as it was when announced final
  std::vector<int64_t> ready_;

 private:
  dnnl::memory staging_;
  int64_t count_ = 0;
};

}  // namespace

TEST_CASE("a batch split among teams gives the whole batch's predictions and gradients, dropout masks included") {
  UNetConfig c = UNetConfig::named("unet-tiny");
  c.dropout = 0.2;
  c.num_class_embeds = 4;
  Device device(DeviceSpec{});
  auto model = make_unet(c, device);
  model->init_random(3);
  std::mt19937 rng(8);
  const Tensor x = random_tensor({5, 1, 16, 16}, rng);
  const Tensor g = random_tensor({5, 1, 16, 16}, rng);
  const Tensor t = timesteps({3, 700, 12, 999, 450});
  Tensor labels({5}, DType::s32, Device::host()->engine());
  {
    auto m = labels.map<int32_t>();
    for (int i = 0; i < 5; ++i) m[i] = (i * 3) % 4;
  }
  ForwardInputs inputs;
  inputs.class_labels = labels;
  inputs.dropout_seed = 77;
  struct Out {
    std::vector<float> prediction, grad_x, grads, observed;
  };
  auto run = [&](int teams, bool observed = true) {
    model->set_teams(teams);
    RecordingObserver observer;
    model->set_gradient_observer(observed ? &observer : nullptr);
    model->zero_grads();
    Out out;
    auto fwd = model->forward(x, t, true, inputs);
    out.prediction = fwd.prediction.to_vector();
    out.grad_x = model->backward(*fwd.state, g).to_vector();
    model->set_gradient_observer(nullptr);
    HostMap<float> grads(model->grads());
    out.grads.assign(grads.begin(), grads.end());
    if (!observed) return out;
    out.observed = observer.seen;
    CHECK(observer.ready_.back() == 0);
    // Every range was final when announced (PartGradients' tests check when).
    CHECK(observer.announced == observer.seen);
    return out;
  };
  auto worst = [](const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    float scale = 0, diff = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      scale = std::max(scale, std::fabs(a[i]));
      diff = std::max(diff, std::fabs(a[i] - b[i]));
    }
    return diff / std::max(scale, 1e-30f);
  };
  const Out whole = run(1);
  CHECK(whole.observed == whole.grads);
  // 2 teams: parts of 3 and 2 samples; 3 teams: 2, 2, 1; 8 teams: one sample each (5 parts).
  for (int teams : {2, 3, 8}) {
    CAPTURE(teams);
    const Out split = run(teams);
    CHECK(worst(split.prediction, whole.prediction) < 1e-5f);
    CHECK(worst(split.grad_x, whole.grad_x) < 1e-5f);
    CHECK(worst(split.grads, whole.grads) < 1e-5f);
    // The observer sees the sum of every part's gradients, as grads() receives it.
    CHECK(split.observed == split.grads);
    // The parts' gradients are summed in part order: a second pass is bitwise the same.
    const Out again = run(teams);
    CHECK(again.prediction == split.prediction);
    CHECK(again.grads == split.grads);
    // Without an observer the teams add up a slice each, after every part:
    // the same sums, bitwise.
    CHECK(run(teams, false).grads == split.grads);
  }
  // Another dropout seed changes the prediction: the masks act in split passes too.
  inputs.dropout_seed = 78;
  model->set_teams(2);
  CHECK(worst(model->forward(x, t, true, inputs).prediction.to_vector(), whole.prediction) > 1e-3f);
  CHECK_THROWS_AS(model->set_teams(0), std::invalid_argument);
}

TEST_CASE("a split pass builds one program per part and reuses them") {
  Device device(DeviceSpec{});
  auto model = make_unet(UNetConfig::named("unet-tiny"), device);
  model->init_random(1);
  std::mt19937 rng(2);
  const Tensor x = random_tensor({4, 1, 16, 16}, rng);
  const Tensor t = timesteps({1, 2, 3, 4});
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  model->set_teams(2);
  model->forward(x, t, false);
  // Two parts of two samples: one program (its key holds the team's one thread), built twice.
  CHECK(model->programs_built() == 2);
  model->forward(x, t, false);
  CHECK(model->programs_built() == 2);
  model->set_teams(1);
  model->forward(x, t, false);  // the whole batch: another program
  CHECK(model->programs_built() == 3);
  omp_set_num_threads(before);
}

TEST_CASE("flat work is cut into one slice per team, part 0 on the calling thread, the others at once elsewhere") {
  Device device(DeviceSpec{});
  auto model = make_unet(UNetConfig::named("unet-tiny"), device);
  for (const int teams : {1, 3}) {
    CAPTURE(teams);
    model->set_teams(teams);
    CHECK(model->flat_parts(10) == teams);
    CHECK(model->flat_parts(2) == std::min(teams, 2));  // never more parts than elements
    std::vector<std::array<int64_t, 2>> slices(static_cast<size_t>(teams));
    std::vector<std::thread::id> ran_on(static_cast<size_t>(teams));
    model->for_flat_slices(10, [&](int part, int64_t begin, int64_t end) {
      slices[static_cast<size_t>(part)] = {begin, end};
      ran_on[static_cast<size_t>(part)] = std::this_thread::get_id();
    });
    int64_t next = 0;
    for (const auto& [begin, end] : slices) {
      CHECK(begin == next);
      CHECK(end > begin);
      next = end;
    }
    CHECK(next == 10);
    CHECK((ran_on[0] == std::this_thread::get_id()));
    CHECK(std::set<std::thread::id>(ran_on.begin(), ran_on.end()).size() == static_cast<size_t>(teams));
  }
  CHECK_THROWS_AS(model->set_teams(1025), std::invalid_argument);
}
