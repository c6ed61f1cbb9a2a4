#include "nodes/model/quality_meter.hpp"

#include "graph/errors.hpp"
#include "graph/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace diffuflow {

namespace fs = std::filesystem;

namespace {

constexpr const char* kCacheFormat = "diffuflow-quality-features";
constexpr const char* kCacheVersion = "1";

std::string hex64(uint64_t v) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(v));
  return text;
}

// What the cached features depend on: the format, the classifier (its
// configuration and every weight) and the real images (shape and values).
uint64_t cache_key(Classifier& classifier, const Shape& shape, const std::vector<float>& pixels) {
  uint64_t h = fnv1a(kCacheFormat, std::char_traits<char>::length(kCacheFormat));
  h = fnv1a(kCacheVersion, 1, h);
  const std::string config = classifier.config().to_json();
  h = fnv1a(config.data(), config.size(), h);
  {
    const HostMap<float> weights(classifier.params(), static_cast<size_t>(classifier.param_count()));
    h = fnv1a(weights.data(), static_cast<size_t>(classifier.param_count()) * sizeof(float), h);
  }
  h = fnv1a(shape.data(), shape.size() * sizeof(int64_t), h);
  return fnv1a(pixels.data(), pixels.size() * sizeof(float), h);
}

}  // namespace

uint64_t fnv1a(const void* data, size_t bytes, uint64_t hash) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    hash ^= p[i];
    hash *= 1099511628211ull;
  }
  return hash;
}

fs::path default_quality_cache_dir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return fs::path(xdg) / "diffuflow";
  if (const char* home = std::getenv("HOME"); home && *home) return fs::path(home) / ".cache" / "diffuflow";
  return {};
}

std::string QualityReport::to_json() const {
  nlohmann::json j;
  j["count"] = count;
  j["fid"] = fid;
  j["kid"] = kid.mean;
  j["kid_std"] = kid.std;
  j["kid_subsets"] = kid.subsets;
  j["kid_subset_size"] = kid.subset_size;
  j["confidence"] = classes.confidence;
  j["class_entropy"] = classes.entropy;
  j["class_histogram"] = classes.histogram;
  return j.dump();
}

QualityMeter::QualityMeter(Classifier& classifier, const Tensor& real, QualityOptions options)
    : classifier_(classifier), options_(std::move(options)) {
  if (real.rank() != 4 || real.dtype() != DType::f32 || real.dim(0) < 2) {
    throw std::invalid_argument("quality: the real images must be f32 [N,C,H,W] with N >= 2, got " +
                                dtype_name(real.dtype()) + " " + shape_str(real.shape()));
  }
  image_shape_ = {real.dim(1), real.dim(2), real.dim(3)};
  const int64_t n = real.dim(0), f = classifier_.config().feature_dim();

  if (!options_.cache_dir.empty()) {
    const std::vector<float> pixels = real.to_vector();
    cache_file_ = options_.cache_dir / ("quality_" + hex64(cache_key(classifier_, real.shape(), pixels)) + ".safetensors");
    std::error_code ec;
    if (fs::is_regular_file(cache_file_, ec)) {
      try {
        const SafetensorsFile file = SafetensorsFile::read(cache_file_);
        real_features_ = file.floats("features", {n, f});
        from_cache_ = true;
      } catch (const std::exception&) {
        real_features_.clear();  // a damaged cache file: recompute and overwrite it
      }
    }
  }
  if (!from_cache_) {
    classifier_.describe(real, options_.batch, &real_features_, nullptr);
    if (!cache_file_.empty()) {
      try {
        std::error_code ec;
        fs::create_directories(options_.cache_dir, ec);
        SafetensorsFile file;
        file.add_f32("features", {n, f}, real_features_.data());
        file.set_metadata("format", kCacheFormat);
        file.set_metadata("format_version", kCacheVersion);
        file.set_metadata("classifier_config", classifier_.config().to_json());
        file.set_metadata("images", shape_str(real.shape()));
        file.write(cache_file_);
      } catch (const std::exception&) {
        // Read-only or full cache folder: the features are in memory; only the next run pays again.
      }
    }
  }
  real_stats_ = feature_stats(real_features_.data(), n, f);
}

QualityReport QualityMeter::measure(const Tensor& images) {
  if (images.rank() != 4 || images.dtype() != DType::f32 || images.dim(0) < 2 ||
      Shape{images.dim(1), images.dim(2), images.dim(3)} != image_shape_) {
    throw std::invalid_argument("quality: the images must be f32 [N, " + std::to_string(image_shape_[0]) + ", " +
                                std::to_string(image_shape_[1]) + ", " + std::to_string(image_shape_[2]) +
                                "] (the real set's image size) with N >= 2, got " + dtype_name(images.dtype()) + " " +
                                shape_str(images.shape()));
  }
  const int64_t n = images.dim(0), f = classifier_.config().feature_dim(), k = classifier_.config().classes;
  std::vector<float> features, probabilities;
  classifier_.describe(images, options_.batch, &features, &probabilities);
  QualityReport report;
  report.count = n;
  report.fid = frechet_distance(feature_stats(features.data(), n, f), real_stats_);
  report.kid = kernel_distance(features.data(), n, real_features_.data(), real_stats_.count, f, options_.kid);
  report.classes = class_stats(probabilities.data(), n, k);
  return report;
}

}  // namespace diffuflow
