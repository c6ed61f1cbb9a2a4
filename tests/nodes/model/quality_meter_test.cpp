// QualityMeter with the shipped MNIST classifier on the MNIST subset in
// tests/data: real images score better than blurred, noisy or collapsed
// ones; scores repeat exactly; the real features are cached by content.
#include "nodes/model/quality_meter.hpp"

#include "graph/safetensors.hpp"
#include "nodes/data/mnist_images.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>

using namespace diffuflow;

namespace {

struct Subset {
  Tensor train, test;  // 512 and 128 images of tests/data/mnist
};

const Subset& subset() {
  static const Subset s = [] {
    Subset out;
    Tensor labels;
    mnist_tensors(read_mnist_split(test::test_dir() / "data/mnist", "train"), out.train, labels);
    mnist_tensors(read_mnist_split(test::test_dir() / "data/mnist", "test"), out.test, labels);
    return out;
  }();
  return s;
}

Classifier& shipped_classifier() {
  static const std::unique_ptr<Classifier> model = [] {
    const std::string path = (test::source_dir() / "data/mnist_classifier.safetensors").string();
    const SafetensorsFile file = SafetensorsFile::read(path);
    auto made = std::make_unique<Classifier>(ClassifierConfig::from_json(file.metadata().at("model_config"), path),
                                             Device::host()->engine());
    load_classifier_weights(*made, path, true);
    return made;
  }();
  return *model;
}

// The first n images of x, changed image by image by `change` (on [H,W] float planes).
template <typename F>
Tensor changed(const Tensor& x, int64_t n, F change) {
  std::vector<float> v = x.to_vector();
  v.resize(static_cast<size_t>(n * 784));
  for (int64_t i = 0; i < n; ++i) change(i, v.data() + i * 784);
  return Tensor::from_vector({n, 1, 28, 28}, v);
}

}  // namespace

TEST_CASE("real MNIST scores better than blurred, noisy and mode-collapsed MNIST, and repeats exactly") {
  QualityOptions options;
  options.kid = KidOptions{10, 256, 0};
  QualityMeter meter(shipped_classifier(), subset().train, options);  // 512 real images as the reference
  const int64_t n = 128;
  const Tensor& real = subset().test;  // 128 other real images
  const Tensor blurred = changed(real, n, [](int64_t, float* p) {
    cv::Mat plane(28, 28, CV_32F, p);
    cv::GaussianBlur(plane, plane, cv::Size(0, 0), 1.5, 1.5, cv::BORDER_CONSTANT);
  });
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  const Tensor noisy = changed(real, n, [&](int64_t, float* p) {
    for (int j = 0; j < 784; ++j) p[j] = std::clamp(p[j] + normal(rng), -1.0f, 1.0f);
  });
  const std::vector<float> all = real.to_vector();
  const Tensor collapsed = changed(real, n, [&](int64_t i, float* p) {
    std::copy_n(all.data() + (i % 4) * 784, 784, p);  // four distinct images
  });

  const QualityReport r = meter.measure(real);
  CAPTURE(r.fid);
  CHECK(r.count == n);
  CHECK(r.classes.confidence > 0.9);
  CHECK(r.classes.entropy > 0.9 * std::log(10.0));
  for (const Tensor* worse : {&blurred, &noisy, &collapsed}) {
    const QualityReport w = meter.measure(*worse);
    CAPTURE(w.fid);
    CHECK(w.fid > 2.0 * r.fid);
    CHECK(w.kid.mean > r.kid.mean + 2.0 * w.kid.std);
  }
  const QualityReport c = meter.measure(collapsed);
  CHECK(c.classes.entropy < 0.7 * r.classes.entropy);  // at most four classes

  const QualityReport again = meter.measure(real);
  CHECK(again.fid == r.fid);
  CHECK(again.kid.mean == r.kid.mean);
  CHECK(again.classes.histogram == r.classes.histogram);
  CHECK(again.to_json() == r.to_json());

  CHECK_THROWS_WITH(meter.measure(Tensor::from_vector({2, 1, 14, 14}, std::vector<float>(392, 0.0f))),
                    doctest::Contains("[N, 1, 28, 28]"));
}

TEST_CASE("real features are cached under a key of the classifier and the real images") {
  test::TempDir dir;
  QualityOptions options;
  options.kid = KidOptions{2, 64, 0};
  options.cache_dir = dir.path() / "cache";
  QualityMeter first(shipped_classifier(), subset().test, options);
  CHECK_FALSE(first.from_cache());
  REQUIRE(std::filesystem::is_regular_file(first.cache_file()));
  CHECK(first.cache_file().parent_path() == options.cache_dir);

  QualityMeter second(shipped_classifier(), subset().test, options);
  CHECK(second.from_cache());
  CHECK(second.cache_file() == first.cache_file());
  CHECK(second.real_stats().cov == first.real_stats().cov);
  CHECK(second.measure(subset().train).fid == first.measure(subset().train).fid);

  // Other real images: another key, computed afresh.
  QualityMeter other(shipped_classifier(), subset().train, options);
  CHECK_FALSE(other.from_cache());
  CHECK(other.cache_file() != first.cache_file());

  // A damaged cache file is recomputed, not trusted.
  test::write_file(first.cache_file(), "not a safetensors file");
  QualityMeter repaired(shipped_classifier(), subset().test, options);
  CHECK_FALSE(repaired.from_cache());
  CHECK(repaired.real_stats().mean == first.real_stats().mean);
  CHECK(QualityMeter(shipped_classifier(), subset().test, options).from_cache());
}

TEST_CASE("fnv1a matches the published 64-bit test vectors") {
  CHECK(fnv1a("", 0) == 0xcbf29ce484222325ull);
  CHECK(fnv1a("a", 1) == 0xaf63dc4c8601ec8cull);
  CHECK(fnv1a("foobar", 6) == 0x85944171f73967e8ull);
}
