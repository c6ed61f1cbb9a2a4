// The MLP denoiser: shapes, gradients against finite differences, checkpoints,
// and the mlp_model resource as a model of kind "model".
#include "nodes/model/mlp_denoiser.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "graph/safetensors.hpp"
#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <random>

using namespace diffuflow;
using diffuflow::test::make_resource;

namespace {

Tensor random_tensor(const Shape& shape, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (auto& v : values) v = normal(rng);
  return Tensor::from_vector(shape, values);
}

Tensor steps_of(const std::vector<int32_t>& values) {
  Tensor t({static_cast<int64_t>(values.size())}, DType::s32, Device::host()->engine());
  auto m = t.map<int32_t>();
  for (size_t i = 0; i < values.size(); ++i) m[i] = values[i];
  return t;
}

// L = sum(prediction * g), in double.
double weighted_sum(MlpDenoiser& model, const Tensor& x, const Tensor& t, const std::vector<float>& g) {
  const auto out = model.forward(x, t, false).prediction.to_vector();
  double sum = 0;
  for (size_t i = 0; i < out.size(); ++i) sum += double(out[i]) * g[i];
  return sum;
}

}  // namespace

TEST_CASE("the MLP denoiser maps [N,2,1,1] points and timesteps to a [N,2,1,1] prediction") {
  MlpConfig config;
  MlpDenoiser model(config, Device::host()->engine());
  model.init_random(1);
  CHECK(model.kind() == "mlp");
  // time 32*128+128, layers.0 2*128+128, layers.1..2 2*(128*128+128), output 128*2+2
  CHECK(model.param_count() == (32 * 128 + 128) + (2 * 128 + 128) + 2 * (128 * 128 + 128) + (128 * 2 + 2));
  std::mt19937 rng(5);
  const Tensor x = random_tensor({5, 2, 1, 1}, rng);
  const auto a = model.forward(x, steps_of({0, 10, 100, 500, 999}), false).prediction;
  CHECK(a.shape() == Shape{5, 2, 1, 1});
  // The timestep matters, and the same input gives the same output.
  const auto b = model.forward(x, steps_of({999, 10, 100, 500, 0}), false).prediction.to_vector();
  const auto c = model.forward(x, steps_of({0, 10, 100, 500, 999}), false).prediction.to_vector();
  const auto av = a.to_vector();
  CHECK(av == c);
  CHECK(std::fabs(av[0] - b[0]) + std::fabs(av[1] - b[1]) > 1e-4);
  CHECK(av[2] == b[2]);
  CHECK_THROWS_WITH(model.forward(random_tensor({5, 3, 1, 1}, rng), steps_of({0, 1, 2, 3, 4}), false),
                    doctest::Contains("[N, 2, 1, 1]"));
}

TEST_CASE("MLP denoiser gradients for parameters and input match finite differences") {
  MlpConfig config;
  config.dim = 3;
  config.hidden = 8;
  config.layers = 3;
  config.time_embed_dim = 6;
  MlpDenoiser model(config, Device::host()->engine());
  model.init_random(7);
  std::mt19937 rng(11);
  const Tensor x = random_tensor({4, 3, 1, 1}, rng);
  const Tensor t = steps_of({0, 3, 250, 999});
  const Tensor g_tensor = random_tensor({4, 3, 1, 1}, rng);
  const std::vector<float> g = g_tensor.to_vector();

  model.zero_grads();
  auto fwd = model.forward(x, t, true);
  const std::vector<float> grad_x = model.backward(*fwd.state, g_tensor).to_vector();
  std::vector<float> grads(static_cast<size_t>(model.param_count()));
  {
    auto* host = static_cast<const float*>(model.grads().get_data_handle());
    std::copy(host, host + model.param_count(), grads.begin());
  }

  const float eps = 1e-2f;
  auto* params = static_cast<float*>(model.params().get_data_handle());
  std::uniform_int_distribution<int64_t> pick(0, 1 << 30);
  for (const auto& slot : model.param_slots()) {
    for (int s = 0; s < 6; ++s) {
      const int64_t i = slot.offset + pick(rng) % slot.count();
      const float saved = params[i];
      params[i] = saved + eps;
      model.params_written();  // written through a held pointer
      const double up = weighted_sum(model, x, t, g);
      params[i] = saved - eps;
      model.params_written();  // written through a held pointer
      const double down = weighted_sum(model, x, t, g);
      params[i] = saved;
      model.params_written();  // written through a held pointer
      const double numeric = (up - down) / (2.0 * eps);
      INFO(slot.name << "[" << i - slot.offset << "]: analytic " << grads[i] << ", numeric " << numeric);
      CHECK(std::fabs(numeric - grads[i]) <= 1e-2 * std::max(1.0, std::fabs(numeric)) + 2e-3);
    }
  }
  auto xs = x.map<float>();
  for (size_t i = 0; i < xs.size(); ++i) {
    const float saved = xs[i];
    xs[i] = saved + eps;
    const double up = weighted_sum(model, x, t, g);
    xs[i] = saved - eps;
    const double down = weighted_sum(model, x, t, g);
    xs[i] = saved;
    const double numeric = (up - down) / (2.0 * eps);
    INFO("x[" << i << "]: analytic " << grad_x[i] << ", numeric " << numeric);
    CHECK(std::fabs(numeric - grad_x[i]) <= 1e-2 * std::max(1.0, std::fabs(numeric)) + 2e-3);
  }
}

TEST_CASE("a second backward adds to the MLP gradients until they are zeroed") {
  MlpDenoiser model(MlpConfig{2, 16, 2, 8}, Device::host()->engine());
  model.init_random(2);
  std::mt19937 rng(3);
  const Tensor x = random_tensor({6, 2, 1, 1}, rng), g = random_tensor({6, 2, 1, 1}, rng);
  const Tensor t = steps_of({1, 2, 3, 4, 5, 6});
  auto grads_now = [&] {
    auto* host = static_cast<const float*>(model.grads().get_data_handle());
    return std::vector<float>(host, host + model.param_count());
  };
  model.zero_grads();
  model.backward(*model.forward(x, t, true).state, g);
  const auto once = grads_now();
  model.backward(*model.forward(x, t, true).state, g);
  const auto twice = grads_now();
  for (size_t i = 0; i < once.size(); i += 37) CHECK(twice[i] == doctest::Approx(2 * once[i]).epsilon(1e-5));
}

TEST_CASE("MLP weights survive a save and load round trip through a safetensors file") {
  test::TempDir dir;
  MlpConfig config{2, 12, 2, 8};
  MlpDenoiser a(config, Device::host()->engine()), b(config, Device::host()->engine());
  a.init_random(21);
  b.init_random(22);
  SafetensorsFile file;
  a.save_to(file);
  file.write(dir / "mlp.safetensors");
  b.load(SafetensorsFile::read(dir / "mlp.safetensors"));
  std::mt19937 rng(4);
  const Tensor x = random_tensor({3, 2, 1, 1}, rng);
  const Tensor t = steps_of({5, 50, 500});
  CHECK(a.forward(x, t, false).prediction.to_vector() == b.forward(x, t, false).prediction.to_vector());
  CHECK(file.has("time_embedding.linear_1.weight"));
  CHECK(file.has("layers.1.bias"));
  CHECK(file.has("output.weight"));

  // A checkpoint of another width is refused, naming the tensor.
  MlpDenoiser wider(MlpConfig{2, 16, 2, 8}, Device::host()->engine());
  CHECK_THROWS_WITH(wider.load(SafetensorsFile::read(dir / "mlp.safetensors")),
                    doctest::Contains("time_embedding.linear_1.weight"));
}

TEST_CASE("mlp_model is a resource of kind model that loads its weights or draws them from init_seed") {
  const ResourceContract* contract = Registry::instance().resource_contract("mlp_model");
  REQUIRE(contract != nullptr);
  CHECK(contract->kind == "model");
  RunContext ctx;
  auto resource = std::dynamic_pointer_cast<ModelResource>(
      make_resource("mlp_model", "model", "{hidden: 8, layers: 2, time_embed_dim: 4}", ctx));
  REQUIRE(resource != nullptr);
  CHECK(resource->model().kind() == "mlp");
  CHECK(resource->config_json().find("\"hidden\": 8") != std::string::npos);
  CHECK_THROWS_WITH(make_resource("mlp_model", "bad", "{time_embed_dim: 5}", ctx), doctest::Contains("even"));
  CHECK_THROWS_WITH(make_resource("mlp_model", "missing", "{weights: no/such/file.safetensors}", ctx),
                    doctest::Contains("does not exist"));
}

TEST_CASE("mlp_model loads an optimiser checkpoint, preferring its EMA weights") {
  test::TempDir dir;
  MlpConfig config{2, 8, 2, 4};
  MlpDenoiser live(config, Device::host()->engine()), ema(config, Device::host()->engine());
  live.init_random(1);
  ema.init_random(2);
  SafetensorsFile checkpoint;
  live.save_to(checkpoint);
  SafetensorsFile ema_file;
  ema.save_to(ema_file);
  for (const auto& name : ema_file.names()) {
    const auto& e = ema_file.entry(name);
    checkpoint.add("ema." + name, e.dtype, e.shape, e.data);
  }
  const std::vector<float> moments(static_cast<size_t>(live.param_count()), 0.5f);
  checkpoint.add_f32("optimiser.exp_avg", {live.param_count()}, moments.data());
  checkpoint.write(dir / "step.safetensors");

  std::mt19937 rng(9);
  const Tensor x = random_tensor({2, 2, 1, 1}, rng);
  const Tensor t = steps_of({10, 900});
  const std::string params = "{hidden: 8, layers: 2, time_embed_dim: 4, weights: " +
                             (dir / "step.safetensors").string();
  RunContext ctx;
  auto with_ema = std::dynamic_pointer_cast<ModelResource>(make_resource("mlp_model", "a", params + "}", ctx));
  auto without = std::dynamic_pointer_cast<ModelResource>(
      make_resource("mlp_model", "b", params + ", use_ema: false}", ctx));
  CHECK(with_ema->model().forward(x, t, false).prediction.to_vector() ==
        ema.forward(x, t, false).prediction.to_vector());
  CHECK(without->model().forward(x, t, false).prediction.to_vector() ==
        live.forward(x, t, false).prediction.to_vector());
}
