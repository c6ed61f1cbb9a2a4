// Shared helpers for the training-node tests: a tiny hand-made model whose
// flat buffers the tests fill directly (TempDir comes from test_util.hpp).
#pragma once

#include "graph/device.hpp"
#include "graph/run_context.hpp"
#include "nodes/model/model_resource.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace diffuflow::test {

// Two parameters, 17 floats: "layer.weight" [3,4] and "layer.bias" [5].
// With `parts` > 1 its flat work runs in that many slices, one thread each,
// as a model's on several teams does (DenoiserModel::for_flat_slices).
class FlatModel : public DenoiserModel {
 public:
  int parts = 1;
  int flat_parts(int64_t count) override { return static_cast<int>(std::min<int64_t>(parts, count)); }
  void for_flat_slices(int64_t count, const std::function<void(int, int64_t, int64_t)>& job) override {
    const int n = flat_parts(count);
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) threads.emplace_back([&, i] { job(i, count * i / n, count * (i + 1) / n); });
    for (auto& thread : threads) thread.join();
  }

  explicit FlatModel(const dnnl::engine& engine)
      : DenoiserModel({{"layer.weight", {3, 4}, 0}, {"layer.bias", {5}, 0}}, engine) {}
  std::string kind() const override { return "flat"; }
  ForwardResult forward(const Tensor&, const Tensor&, bool) override {
    throw std::logic_error("FlatModel has no forward pass");
  }
  Tensor backward(const ForwardState&, const Tensor&) override {
    throw std::logic_error("FlatModel has no backward pass");
  }
};

class FlatModelResource : public ModelResource {
 public:
  explicit FlatModelResource(const dnnl::engine& engine) : model_(engine) {}
  DenoiserModel& model() override { return model_; }
  FlatModel& flat() { return model_; }
  std::string config_json() const override { return "{\"kind\": \"flat\", \"params\": 17}"; }

 private:
  FlatModel model_;
};

inline std::shared_ptr<FlatModelResource> add_flat_model(RunContext& ctx, const std::string& name = "model") {
  auto resource = std::make_shared<FlatModelResource>(ctx.device().engine());
  ctx.add_resource(name, resource);
  return resource;
}

inline std::vector<float> read_flat(const dnnl::memory& memory) {
  const HostMap<float> host(memory);
  return std::vector<float>(host.begin(), host.end());
}

inline void write_flat(const dnnl::memory& memory, const std::vector<float>& values) {
  HostMap<float> host(memory);
  std::memcpy(host.data(), values.data(), values.size() * sizeof(float));
}

inline std::vector<float> random_values(size_t count, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(count);
  for (auto& v : values) v = normal(rng);
  return values;
}

}  // namespace diffuflow::test
