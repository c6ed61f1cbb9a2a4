// The CNN classifier: shapes, gradients against finite differences, the
// cross-entropy loss, weights files, the classifier_model resource, the
// classifier_train node, and the weights that ship with the repository.
#include "nodes/model/classifier.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "graph/safetensors.hpp"
#include "nodes/common/fields.hpp"
#include "nodes/common/image_set.hpp"
#include "nodes/model/classifier_train.hpp"
#include "node_test_util.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <random>

using namespace diffuflow;
using diffuflow::test::CollectingEmitter;
using diffuflow::test::make_node;
using diffuflow::test::make_resource;
using diffuflow::test::single_input;

namespace {

Tensor random_tensor(const Shape& shape, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (auto& v : values) v = normal(rng);
  return Tensor::from_vector(shape, values);
}

// L = sum(logits * g), in double.
double weighted_sum(Classifier& model, const Tensor& x, const std::vector<float>& g) {
  const auto out = model.classify(x, false).logits.to_vector();
  double sum = 0;
  for (size_t i = 0; i < out.size(); ++i) sum += double(out[i]) * g[i];
  return sum;
}

void check_gradients(const ClassifierConfig& config, const Shape& x_shape) {
  Classifier model(config, Device::host()->engine());
  model.init_random(7);
  // Norm weights and biases away from 1 and 0, so their gradients are exercised.
  {
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> jitter(-0.4f, 0.4f);
    auto* params = static_cast<float*>(model.params().get_data_handle());
    for (const auto& slot : model.param_slots())
      for (int64_t i = 0; i < slot.count(); ++i) params[slot.offset + i] += jitter(rng);
  }
  std::mt19937 rng(11);
  const Tensor x = random_tensor(x_shape, rng);
  const Tensor g_tensor = random_tensor({x_shape[0], config.classes}, rng);
  const std::vector<float> g = g_tensor.to_vector();

  model.zero_grads();
  auto out = model.classify(x, true);
  const std::vector<float> grad_x = model.backward(*out.state, g_tensor).to_vector();
  out.state.reset();
  std::vector<float> grads(static_cast<size_t>(model.param_count()));
  {
    auto* host = static_cast<const float*>(model.grads().get_data_handle());
    std::copy(host, host + model.param_count(), grads.begin());
  }
  const float eps = 1e-2f;
  auto numeric_at = [&](float* data, int64_t i) {
    const float saved = data[i];
    data[i] = saved + eps;
    model.params_written();  // written through a held pointer
    const double up = weighted_sum(model, x, g);
    data[i] = saved - eps;
    model.params_written();  // written through a held pointer
    const double down = weighted_sum(model, x, g);
    data[i] = saved;
    model.params_written();  // written through a held pointer
    return (up - down) / (2.0 * eps);
  };
  auto* params = static_cast<float*>(model.params().get_data_handle());
  std::uniform_int_distribution<int64_t> pick(0, 1 << 30);
  for (const auto& slot : model.param_slots()) {
    for (int s = 0; s < 5; ++s) {
      const int64_t i = slot.offset + pick(rng) % slot.count();
      const double numeric = numeric_at(params, i);
      INFO(slot.name << "[" << i - slot.offset << "]: analytic " << grads[i] << ", numeric " << numeric);
      CHECK(std::fabs(numeric - grads[i]) <= 1e-2 * std::max(1.0, std::fabs(numeric)) + 2e-3);
    }
  }
  auto xs = x.map<float>();
  for (int s = 0; s < 24; ++s) {
    const int64_t i = pick(rng) % static_cast<int64_t>(xs.size());
    const double numeric = numeric_at(xs.data(), i);
    INFO("x[" << i << "]: analytic " << grad_x[i] << ", numeric " << numeric);
    CHECK(std::fabs(numeric - grad_x[i]) <= 1e-2 * std::max(1.0, std::fabs(numeric)) + 2e-3);
  }
}

// A labelled image set made in the test.
class TestImages : public ImageSet {
 public:
  TestImages(Tensor images, Tensor labels) { set(std::move(images), std::move(labels), "test images"); }
};

Tensor labels_of(const std::vector<int32_t>& values) {
  Tensor t({static_cast<int64_t>(values.size())}, DType::s32, Device::host()->engine());
  auto m = t.map<int32_t>();
  for (size_t i = 0; i < values.size(); ++i) m[i] = values[i];
  return t;
}

}  // namespace

TEST_CASE("the classifier maps [N,1,28,28] images to [N,10] logits and [N,128] features") {
  Classifier model(ClassifierConfig{}, Device::host()->engine());
  model.init_random(1);
  CHECK(model.kind() == "classifier");
  // stages 1->32, 32->64, 64->128 (conv 3x3 + bias, norm weight + bias), head 128->10
  CHECK(model.param_count() == (32 * 9 + 32 + 64) + (64 * 32 * 9 + 64 + 128) + (128 * 64 * 9 + 128 + 256) +
                                   (10 * 128 + 10));
  std::mt19937 rng(5);
  const Tensor x = random_tensor({3, 1, 28, 28}, rng);
  const auto out = model.classify(x, false);
  CHECK(out.logits.shape() == Shape{3, 10});
  CHECK(out.features.shape() == Shape{3, 128});
  CHECK(out.state == nullptr);
  // A batch of one image gives that image's row of the batch of three.
  Tensor first({1, 1, 28, 28}, DType::f32, Device::host()->engine());
  {
    auto all = x.map<float>();
    auto one = first.map<float>();
    std::copy(all.data(), all.data() + 784, one.data());
  }
  const auto alone = model.classify(first, false).logits.to_vector();
  const auto batch = out.logits.to_vector();
  for (int j = 0; j < 10; ++j) CHECK(alone[j] == doctest::Approx(batch[j]).epsilon(1e-4));
  // As a DenoiserModel: the logits as [N,K,1,1], whatever the timestep.
  const auto prediction = model.forward(x, Tensor(), false).prediction;
  CHECK(prediction.shape() == Shape{3, 10, 1, 1});
  CHECK(prediction.to_vector() == batch);
  CHECK_THROWS_WITH(model.classify(random_tensor({2, 3, 28, 28}, rng), false), doctest::Contains("[N, 1, H, W]"));
}

TEST_CASE("classifier gradients for parameters and input match finite differences (blocked channels)") {
  ClassifierConfig config;
  config.channels = {16, 32};
  config.groups = 4;
  config.classes = 5;
  check_gradients(config, {3, 1, 8, 8});
}

TEST_CASE("classifier gradients match finite differences with plain channels, two convolutions per stage") {
  ClassifierConfig config;
  config.in_channels = 2;
  config.channels = {4, 8, 12};
  config.depth = 2;
  config.groups = 2;
  config.classes = 3;
  check_gradients(config, {2, 2, 9, 8});
}

TEST_CASE("softmax cross-entropy: value, gradient, stability and bad labels") {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 0.0f, 3.0f};
  const std::vector<int32_t> labels = {1, 0};
  std::vector<float> grad(6);
  int64_t right = -1;
  const double loss = softmax_cross_entropy(logits.data(), labels.data(), 2, 3, grad.data(), &right);
  const double lse0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(0.5));
  const double lse1 = std::log(std::exp(-1.0) + std::exp(0.0) + std::exp(3.0));
  CHECK(loss == doctest::Approx(((lse0 - 2.0) + (lse1 + 1.0)) / 2));
  CHECK(right == 1);  // row 0 is right (class 1), row 1 is not (class 2 wins)
  CHECK(grad[1] == doctest::Approx((std::exp(2.0 - lse0) - 1.0) / 2));
  CHECK(grad[5] == doctest::Approx(std::exp(3.0 - lse1) / 2));
  // Finite differences of the loss.
  for (size_t i = 0; i < logits.size(); ++i) {
    std::vector<float> up = logits, down = logits;
    up[i] += 1e-3f;
    down[i] -= 1e-3f;
    const double numeric = (softmax_cross_entropy(up.data(), labels.data(), 2, 3) -
                            softmax_cross_entropy(down.data(), labels.data(), 2, 3)) /
                           2e-3;
    CHECK(grad[i] == doctest::Approx(numeric).epsilon(2e-3).scale(1.0));
  }
  // Logits far beyond exp's range stay finite: log-sum-exp.
  const std::vector<float> huge = {1000.0f, 990.0f, -1000.0f};
  const int32_t zero = 0;
  const double small = softmax_cross_entropy(huge.data(), &zero, 1, 3);
  CHECK(std::isfinite(small));
  CHECK(small == doctest::Approx(std::log1p(std::exp(-10.0))));
  std::vector<float> probabilities(3);
  softmax_rows(huge.data(), 1, 3, probabilities.data());
  CHECK(probabilities[0] + probabilities[1] + probabilities[2] == doctest::Approx(1.0));
  const int32_t bad = 3;
  CHECK_THROWS_WITH(softmax_cross_entropy(huge.data(), &bad, 1, 3), doctest::Contains("label 3"));
}

TEST_CASE("classifier_model is a resource of kind model; its weights round-trip and its config is JSON") {
  RunContext ctx;
  auto resource = std::dynamic_pointer_cast<ClassifierResource>(
      make_resource("classifier_model", "classifier", "{channels: [16, 32], groups: 4, init_seed: 3}", ctx));
  REQUIRE(resource);
  CHECK(Registry::instance().resource_contract("classifier_model")->kind == kModelResourceKind);
  const ClassifierConfig parsed = ClassifierConfig::from_json(resource->config_json(), "test");
  CHECK(parsed.channels == std::vector<int64_t>{16, 32});
  CHECK(parsed.groups == 4);

  test::TempDir dir;
  SafetensorsFile file;
  resource->model().save_to(file);
  file.write(dir / "w.safetensors");
  RunContext ctx2;
  auto loaded = std::dynamic_pointer_cast<ClassifierResource>(make_resource(
      "classifier_model", "classifier",
      "{channels: [16, 32], groups: 4, weights: " + (dir / "w.safetensors").string() + "}", ctx2));
  std::mt19937 rng(2);
  const Tensor x = random_tensor({2, 1, 12, 12}, rng);
  CHECK(loaded->classifier().classify(x, false).logits.to_vector() ==
        resource->classifier().classify(x, false).logits.to_vector());

  // Another shape: the loader names the tensor and the file.
  RunContext ctx3;
  CHECK_THROWS_WITH(make_resource("classifier_model", "classifier",
                                  "{channels: [16, 48], groups: 4, weights: " + (dir / "w.safetensors").string() + "}",
                                  ctx3),
                    doctest::Contains("w.safetensors"));
  CHECK_THROWS_WITH(make_resource("classifier_model", "classifier", "{channels: [16, 30], groups: 4}", ctx3),
                    doctest::Contains("multiple of groups"));
  CHECK_THROWS_AS(ClassifierConfig::from_json("{\"model\": \"unet\"}", "x.json"), ConfigError);
}

TEST_CASE("classifier_train computes the cross-entropy, fills the gradients, and scores the test set") {
  RunContext ctx;
  auto resource = std::dynamic_pointer_cast<ClassifierResource>(
      make_resource("classifier_model", "classifier", "{channels: [16, 32], groups: 4, classes: 3}", ctx));
  std::mt19937 rng(4);
  const Tensor images = random_tensor({6, 1, 8, 8}, rng);
  const Tensor labels = labels_of({0, 1, 2, 2, 1, 0});
  ctx.add_resource("test_set", std::make_shared<TestImages>(images, labels));
  auto node = make_node("classifier_train", "{model: classifier, test_set: test_set, test_batch: 4}", ctx, "train");

  resource->model().zero_grads();
  CollectingEmitter out;
  node->process(single_input(Packet(0).with(fields::kX0, images).with(fields::kLabels, labels).share()), out);
  REQUIRE(out.size() == 1);
  const double loss = out.packet(0).get(fields::kLoss);
  CHECK(out.packet(0).get(fields::kGradsReady) == 1);
  // The packet's loss is the cross-entropy of the model's logits.
  const std::vector<float> logits = resource->classifier().classify(images, false).logits.to_vector();
  const std::vector<int32_t> truth = {0, 1, 2, 2, 1, 0};
  CHECK(loss == doctest::Approx(softmax_cross_entropy(logits.data(), truth.data(), 6, 3)).epsilon(1e-5));
  CHECK(ctx.metrics().latest("loss") == doctest::Approx(loss));
  double norm = 0;
  {
    const HostMap<float> grads(resource->model().grads());
    for (float g : grads) norm += double(g) * g;
  }
  CHECK(norm > 0);

  auto* train = dynamic_cast<ClassifierTrain*>(node.get());
  REQUIRE(train);
  const ClassifierScore score = train->test();
  CHECK(score.count == 6);
  CHECK(score.loss == doctest::Approx(softmax_cross_entropy(logits.data(), truth.data(), 6, 3)).epsilon(1e-5));

  // The test set must carry labels.
  ctx.add_resource("unlabelled", std::make_shared<TestImages>(images, Tensor()));
  CHECK_THROWS_WITH(make_node("classifier_train", "{model: classifier, test_set: unlabelled}", ctx),
                    doctest::Contains("has no labels"));
  CHECK_THROWS_WITH(
      make_node("classifier_train", "{model: classifier, test_set: test_set, export_file: ../w.safetensors}", ctx),
      doctest::Contains("inside the output folder"));
}

TEST_CASE("the shipped MNIST classifier classifies the test subset") {
  RunContext ctx;
  auto resource = std::dynamic_pointer_cast<ClassifierResource>(make_resource(
      "classifier_model", "classifier", "{weights: " + (test::source_dir() / "data/mnist_classifier.safetensors").string() + "}",
      ctx));
  auto set = make_resource("mnist_images", "test_set", "{path: " + (test::test_dir() / "data/mnist").string() + "}", ctx);
  const auto& images = std::dynamic_pointer_cast<ImageSet>(set);
  REQUIRE(images);
  CHECK(images->size() == 128);
  const ClassifierScore score = score_classifier(resource->classifier(), images->images(), images->labels(), 64);
  CAPTURE(score.accuracy);
  CHECK(score.accuracy >= 0.97);
  const SafetensorsFile file = SafetensorsFile::read((test::source_dir() / "data/mnist_classifier.safetensors"));
  CHECK(file.metadata().at("format") == "diffuflow-classifier");
  CHECK(std::stod(file.metadata().at("test_accuracy")) >= 0.98);
  CHECK(std::stoll(file.metadata().at("test_images")) == 10000);
}
