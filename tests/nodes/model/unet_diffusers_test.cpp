// UNet2DModel's options against PyTorch fixtures (the ddpm-cifar10-32 config
// at reduced width, and two configs covering the other options; see
// tests/fixtures/README.md), diffusers model and pipeline folders, and the
// config errors.
#include "graph/safetensors.hpp"
#include "node_test_util.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/model/diffusers_folder.hpp"
#include "nodes/model/model_resource.hpp"
#include "nodes/model/unet.hpp"
#include "nodes/model/unet_model.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

using namespace diffuflow;
namespace fs = std::filesystem;

namespace {

float max_abs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

Tensor int_tensor(const std::vector<int64_t>& values) {
  Tensor t({static_cast<int64_t>(values.size())}, DType::s32, Device::host()->engine());
  auto m = t.map<int32_t>();
  for (size_t i = 0; i < values.size(); ++i) m[i] = static_cast<int32_t>(values[i]);
  return t;
}

// Runs a fixture's forward and backward (with its class labels when it has
// them) and checks eps_out, grad_x and every stored parameter gradient with
// the tolerances of the unet_tiny parity test. Returns how many parameter
// gradients it compared.
int check_fixture(const std::string& name, UNetModel& model) {
  const auto io = SafetensorsFile::read(test::fixture(name + "/io.safetensors"));
  ForwardInputs inputs;
  if (io.has("class_labels")) inputs.class_labels = int_tensor(io.ints("class_labels"));
  model.zero_grads();
  auto fwd = model.forward(io.tensor("x"), int_tensor(io.ints("t")), true, inputs);
  const Tensor grad_x = model.backward(*fwd.state, io.tensor("g_out"));
  SafetensorsFile got;
  model.save_grads_to(got);

  const float eps_diff = max_diff(fwd.prediction.to_vector(), io.floats("eps_out"));
  const float gx_diff = max_diff(grad_x.to_vector(), io.floats("grad_x"));
  INFO(name << ": eps_out max|diff| = " << eps_diff << ", grad_x max|diff| = " << gx_diff);
  CHECK(eps_diff <= 1e-4f);
  CHECK(gx_diff <= 1e-4f);
  int checked = 0;
  float worst = 0;
  for (const auto& n : io.names()) {
    if (n.rfind("grad.", 0) != 0) continue;
    const auto ref = io.floats(n);
    const float diff = max_diff(got.floats(n), ref);
    const float tolerance = ends_with(n, ".to_k.bias") ? 1e-5f : 1e-4f * std::max(1.0f, max_abs(ref));
    INFO(n << " max|diff| = " << diff << " tolerance " << tolerance);
    CHECK(diff <= tolerance);
    worst = std::max(worst, diff / std::max(1.0f, max_abs(ref)));
    ++checked;
  }
  MESSAGE(name << ": eps_out " << eps_diff << ", grad_x " << gx_diff << ", worst weight-grad diff/max(1,|ref|) "
               << worst << " over " << checked << " gradients");
  return checked;
}

std::unique_ptr<UNetModel> fixture_model(const std::string& name, Device& device) {
  auto model = make_unet(UNetConfig::from_file(test::fixture(name + "/config.json")), device);
  const auto weights = SafetensorsFile::read(test::fixture(name + "/weights.safetensors"));
  model->load(unet_weights_from_diffusers(weights, model->param_slots()));
  return model;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string config_error(const std::string& text) {
  try {
    UNetConfig::from_json(text, "config.json");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

// The ddpm fixture's config.json text with `"key": old` replaced by `"key": value`.
std::string ddpm_with(const std::string& key, const std::string& value) {
  std::string text = read_text(test::fixture("unet_ddpm_cifar10/config.json"));
  const std::string quoted = "\"" + key + "\": ";
  const auto at = text.find(quoted);
  REQUIRE(at != std::string::npos);
  const auto start = at + quoted.size();
  size_t end = start;
  int depth = 0;
  while (end < text.size() && !(depth == 0 && (text[end] == ',' || text[end] == '\n'))) {
    if (text[end] == '[') ++depth;
    if (text[end] == ']') --depth;
    ++end;
  }
  return text.substr(0, start) + value + text.substr(end);
}

}  // namespace

TEST_CASE("the ddpm-cifar10-32 config reads with diffusers' meanings") {
  const auto c = UNetConfig::from_file(test::fixture("unet_ddpm_cifar10/config.json"));
  CHECK_FALSE(c.flip_sin_to_cos);
  CHECK(c.freq_shift == 1.0);
  CHECK(c.downsample_padding == 0);
  CHECK_FALSE(c.attention_head_dim.has_value());
  CHECK(c.head_dim(64) == 64);  // null: one head as wide as the block
  CHECK(c.norm_eps == 1e-6);
  CHECK(c.num_classes() == 0);
  // The same keys in another order, and to_json's sorted output, give the same config.
  const auto sorted = UNetConfig::from_json(c.to_json(), "to_json");
  CHECK(sorted == c);
  const auto a = UNetConfig::from_file(test::fixture("unet_options_a/config.json"));
  CHECK(UNetConfig::from_json(a.to_json(), "to_json") == a);
  CHECK(a.time_embed_dim() == 48);
  CHECK(a.num_classes() == 5);
  CHECK(a.mid_attention_groups() == 0);  // scale_shift without attn_norm_num_groups: no GroupNorm
  const auto b = UNetConfig::from_file(test::fixture("unet_options_b/config.json"));
  CHECK_FALSE(b.has_mid_block());
  CHECK(b.sample_size == 8);
  CHECK(b.sample_width == 12);
  CHECK(b.differences(a).size() > 5);
  // A config with only some keys takes diffusers' defaults for the rest.
  const auto minimal = UNetConfig::from_json(R"({"block_out_channels": [32, 64], "norm_num_groups": 8,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]})",
                                             "minimal");
  CHECK(minimal.in_channels == 3);
  CHECK(minimal.attention_head_dim == std::optional<int64_t>(8));
  CHECK(minimal.act_fn == "silu");
}

TEST_CASE("the parameter tables match the fixtures' weights name for name and shape for shape") {
  for (const std::string name : {"unet_ddpm_cifar10", "unet_options_a", "unet_options_b"}) {
    const auto weights = SafetensorsFile::read(test::fixture(name + "/weights.safetensors"));
    const auto slots = unet_param_slots(UNetConfig::from_file(test::fixture(name + "/config.json")));
    INFO(name);
    CHECK(slots.size() == weights.names().size());
    for (const auto& s : slots) {
      INFO(s.name);
      REQUIRE(weights.has(s.name));
      CHECK(weights.entry(s.name).shape == s.shape);
    }
  }
}

TEST_CASE("ddpm-cifar10-32 options (reduced width): forward and gradients match PyTorch") {
  Device device(DeviceSpec{});
  auto model = fixture_model("unet_ddpm_cifar10", device);
  CHECK(model->param_count() == 2245763);
  CHECK(check_fixture("unet_ddpm_cifar10", *model) == 289);
}

TEST_CASE("scale_shift, resnet down/upsampling, gelu, class embedding, center_input_sample, mid scale factor and "
          "time_embedding_dim match PyTorch") {
  Device device(DeviceSpec{});
  auto model = fixture_model("unet_options_a", device);
  CHECK(check_fixture("unet_options_a", *model) == 213);
  // The class embedding's gradient is among them, and not zero.
  SafetensorsFile grads;
  model->save_grads_to(grads);
  CHECK(max_abs(grads.floats("grad.class_embedding.weight")) > 0.0f);
}

TEST_CASE("no mid block, mish, heads of width 4, non-square samples and class labels match PyTorch") {
  Device device(DeviceSpec{});
  auto model = fixture_model("unet_options_b", device);
  CHECK(check_fixture("unet_options_b", *model) == 179);
}

TEST_CASE("class labels are required by, and only by, models with a class embedding") {
  Device device(DeviceSpec{});
  auto with_classes = fixture_model("unet_options_b", device);
  const auto io = SafetensorsFile::read(test::fixture("unet_options_b/io.safetensors"));
  const Tensor x = io.tensor("x");
  const Tensor t = int_tensor(io.ints("t"));
  CHECK_THROWS_WITH_AS(with_classes->forward(x, t, false), doctest::Contains("needs class labels"),
                       std::invalid_argument);
  ForwardInputs bad;
  bad.class_labels = int_tensor({0, 3, 1});
  CHECK_THROWS_WITH_AS(with_classes->forward(x, t, false, bad), doctest::Contains("class label 3 is outside [0, 3)"),
                       std::invalid_argument);
  // Different labels, different predictions.
  ForwardInputs a, b;
  a.class_labels = int_tensor({0, 0, 0});
  b.class_labels = int_tensor({2, 2, 2});
  CHECK(max_diff(with_classes->forward(x, t, false, a).prediction.to_vector(),
                 with_classes->forward(x, t, false, b).prediction.to_vector()) > 1e-3f);

  auto tiny = make_unet(UNetConfig::named("unet-tiny"), device);
  ForwardInputs labels;
  labels.class_labels = int_tensor({0});
  CHECK_THROWS_WITH_AS(tiny->forward(Tensor::from_vector({1, 1, 16, 16}, std::vector<float>(256, 0.5f)),
                                     int_tensor({3}), false, labels),
                       doctest::Contains("takes no class labels"), std::invalid_argument);
}

TEST_CASE("dropout acts in training passes only, with masks that follow the seed") {
  UNetConfig c = UNetConfig::named("unet-tiny");
  Device device(DeviceSpec{});
  auto plain = make_unet(c, device);
  c.dropout = 0.3;
  auto dropping = make_unet(c, device);
  plain->init_random(5);
  dropping->init_random(5);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> values(2 * 256);
  for (auto& v : values) v = normal(rng);
  const Tensor x = Tensor::from_vector({2, 1, 16, 16}, values);
  const Tensor t = int_tensor({10, 700});
  const auto reference = plain->forward(x, t, false).prediction.to_vector();
  CHECK(max_diff(dropping->forward(x, t, false).prediction.to_vector(), reference) == 0.0f);
  ForwardInputs seed1, seed2;
  seed1.dropout_seed = 1;
  seed2.dropout_seed = 2;
  const auto first = dropping->forward(x, t, true, seed1).prediction.to_vector();
  CHECK(max_diff(first, reference) > 1e-3f);
  CHECK(max_diff(dropping->forward(x, t, true, seed1).prediction.to_vector(), first) == 0.0f);
  CHECK(max_diff(dropping->forward(x, t, true, seed2).prediction.to_vector(), first) > 1e-3f);
}

TEST_CASE("malformed U-Net configs give one ConfigError naming the key, the value and what is supported") {
  CHECK(config_error(ddpm_with("norm_eps", "1e-06")).empty());
  // Unknown key, with the closest known one.
  CHECK(config_error(ddpm_with("norm_eps", "1e-06, \"norm_epsilon\": 1")) ==
        "config.json: norm_epsilon: unknown U-Net config key (did you mean 'norm_eps'?)");
  // Unsupported values.
  const std::string mid = config_error(ddpm_with("mid_block_type", "\"UNetMidBlock2DCrossAttn\""));
  CHECK(mid.find("mid_block_type") != std::string::npos);
  CHECK(mid.find("\"UNetMidBlock2DCrossAttn\" is not supported (supported: UNetMidBlock2D") != std::string::npos);
  CHECK(config_error(ddpm_with("resnet_time_scale_shift", "\"spatial\""))
            .find("resnet_time_scale_shift: value \"spatial\" is not supported (supported: default, scale_shift)") !=
        std::string::npos);
  CHECK(config_error(ddpm_with("class_embed_type", "\"timestep\"")).find("class_embed_type: value \"timestep\"") !=
        std::string::npos);
  CHECK(config_error(ddpm_with("time_embedding_type", "\"fourier\""))
            .find("value \"fourier\" is not supported (supported: positional)") != std::string::npos);
  CHECK(config_error(ddpm_with("downsample_padding", "2")).find("downsample_padding: value \"2\"") !=
        std::string::npos);
  CHECK(config_error(ddpm_with("upsample_type", "\"fir\"")).find("supported: conv, resnet") != std::string::npos);
  CHECK(config_error(ddpm_with("act_fn", "\"tanh\"")).find("supported: silu, swish, mish, gelu, relu") !=
        std::string::npos);
  CHECK(config_error(ddpm_with("_class_name", "\"UNet2DConditionModel\"")).find("expected \"UNet2DModel\"") !=
        std::string::npos);
  // Wrong types.
  CHECK(config_error(ddpm_with("norm_eps", "\"small\"")) == "config.json: norm_eps: must be a number, got \"small\"");
  CHECK(config_error(ddpm_with("attention_head_dim", "\"8\"")) ==
        "config.json: attention_head_dim: must be an integer or null, got \"8\"");
  CHECK(config_error(ddpm_with("flip_sin_to_cos", "0")) == "config.json: flip_sin_to_cos: must be true or false, got 0");
  CHECK(config_error(ddpm_with("block_out_channels", "32")).find("must be a list of integers, got 32") !=
        std::string::npos);
  CHECK(config_error(ddpm_with("mid_block_type", "3")).find("must be a string or null, got 3") != std::string::npos);
  // Values that cannot be built.
  CHECK(config_error(ddpm_with("attn_norm_num_groups", "5")).find("attn_norm_num_groups 5 does not divide the 64") !=
        std::string::npos);
  CHECK(config_error(ddpm_with("dropout", "1.0")).find("dropout: must be in [0, 1)") != std::string::npos);
}

TEST_CASE("a diffusers model folder and a pipeline folder load as weights; a contradicting config names the key") {
  test::TempDir dir;
  const fs::path model_dir = dir / "model", pipeline = dir / "pipeline";
  fs::create_directories(model_dir);
  fs::create_directories(pipeline / "unet");
  for (const fs::path& folder : {model_dir, pipeline / "unet"}) {
    fs::copy_file(test::fixture("unet_options_a/config.json"), folder / "config.json");
    fs::copy_file(test::fixture("unet_options_a/weights.safetensors"), folder / "diffusion_pytorch_model.safetensors");
  }
  test::write_file(pipeline / "model_index.json",
                   R"({"_class_name": "DDPMPipeline", "_diffusers_version": "0.31.0",
                       "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]})");
  const auto io = SafetensorsFile::read(test::fixture("unet_options_a/io.safetensors"));
  ForwardInputs inputs;
  inputs.class_labels = int_tensor(io.ints("class_labels"));
  RunContext ctx;
  int made = 0;
  for (const fs::path& folder : {model_dir, pipeline}) {
    for (const std::string config : {std::string(), (model_dir / "config.json").string()}) {
      INFO(folder << " with config '" << config << "'");
      auto resource = test::make_resource("unet_model", "m" + std::to_string(made++),
                                          "{config: \"" + config + "\", weights: \"" + folder.string() + "\"}", ctx);
      auto& unet = std::dynamic_pointer_cast<UNetModelResource>(resource)->unet();
      CHECK(unet.config().num_classes() == 5);
      const auto out = unet.forward(io.tensor("x"), int_tensor(io.ints("t")), false, inputs);
      CHECK(max_diff(out.prediction.to_vector(), io.floats("eps_out")) <= 1e-4f);
    }
  }
  // The folder's config is the model's: a config that disagrees is an error naming the key.
  CHECK_THROWS_WITH_AS(
      test::make_resource("unet_model", "bad", "{config: unet-tiny, weights: \"" + pipeline.string() + "\"}", ctx),
      doctest::Contains("act_fn: \"silu\" vs \"gelu\""), ConfigError);
  // A folder without weights, and one that is neither kind.
  fs::remove(model_dir / "diffusion_pytorch_model.safetensors");
  CHECK_THROWS_WITH_AS(test::make_resource("unet_model", "none", "{weights: \"" + model_dir.string() + "\"}", ctx),
                       doctest::Contains("no diffusion_pytorch_model.safetensors"), ConfigError);
  CHECK_THROWS_WITH_AS(test::make_resource("unet_model", "empty", "{weights: \"" + dir.path().string() + "\"}", ctx),
                       doctest::Contains("not a diffusers model folder"), ConfigError);
  // A config given as the folder itself.
  CHECK(UNetConfig::resolve(pipeline.string()) == UNetConfig::from_file(test::fixture("unet_options_a/config.json")));
}

TEST_CASE("diffuflow unet-io passes class labels and reads float16 weights") {
  test::TempDir dir;
  for (const std::string name : {"unet_options_a", "unet_ddpm_cifar10"}) {
    const std::string args = "unet-io --config \"" + test::fixture(name + "/config.json").string() +
                             "\" --weights \"" + test::fixture(name + "/weights.safetensors").string() +
                             "\" --inputs \"" + test::fixture(name + "/io.safetensors").string() + "\" --out \"" +
                             (dir / "out.safetensors").string() + "\"";
    const auto result = test::run_cli(args);
    INFO(result.output);
    REQUIRE(result.exit_code == 0);
    const auto got = SafetensorsFile::read(dir / "out.safetensors");
    const auto io = SafetensorsFile::read(test::fixture(name + "/io.safetensors"));
    CHECK(max_diff(got.floats("eps_out"), io.floats("eps_out")) <= 1e-4f);
    CHECK(max_diff(got.floats("grad_x"), io.floats("grad_x")) <= 1e-4f);
  }
}

TEST_CASE("model_forward passes the packets' labels to a class-conditioned U-Net and refuses packets without") {
  RunContext ctx;
  test::make_resource("unet_model", "model",
                      "{config: \"" + test::fixture("unet_options_b/config.json").string() + "\", weights: \"" +
                          test::fixture("unet_options_b/weights.safetensors").string() + "\"}",
                      ctx);
  auto node = test::make_node("model_forward", "{model: model, training: false}", ctx);
  const auto io = SafetensorsFile::read(test::fixture("unet_options_b/io.safetensors"));
  const Packet base = Packet(0).with(fields::kXt, io.tensor("x")).with(fields::kT, int_tensor(io.ints("t")));
  test::CollectingEmitter out;
  node->process(test::single_input(base.with(fields::kLabels, int_tensor(io.ints("class_labels"))).share()), out);
  REQUIRE(out.size() == 1);
  CHECK(max_diff(out.packet(0).get(fields::kPrediction).to_vector(), io.floats("eps_out")) <= 1e-4f);
  CHECK_THROWS_WITH_AS(node->process(test::single_input(Packet(base).share()), out), doctest::Contains("'labels'"),
                       std::invalid_argument);
}

TEST_CASE("model_forward embeds a packet's t_exact (a sampler's fractional timesteps) instead of t") {
  RunContext ctx;
  test::make_resource("unet_model", "model", "{config: unet-tiny, init_seed: 3}", ctx);
  auto node = test::make_node("model_forward", "{model: model, training: false}", ctx);
  std::vector<float> pixels(256);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = std::sin(0.37f * float(i));
  const Tensor x = Tensor::from_vector({1, 1, 16, 16}, pixels);
  const Packet base = Packet(0).with(fields::kXt, x).with(fields::kT, int_tensor({947}));
  const Tensor exact = Tensor::from_vector({1}, {947.37f});
  test::CollectingEmitter out;
  node->process(test::single_input(Packet(base).share()), out);
  node->process(test::single_input(base.with(fields::kTExact, exact).share()), out);
  REQUIRE(out.size() == 2);
  DenoiserModel& model = ctx.resource_as<ModelResource>("model")->model();
  const auto direct = model.forward(x, exact, false).prediction.to_vector();
  CHECK(out.packet(1).get(fields::kPrediction).to_vector() == direct);
  CHECK(out.packet(0).get(fields::kPrediction).to_vector() != direct);
}
