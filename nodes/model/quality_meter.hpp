// QualityMeter: how good a set of generated images is, judged by a trained
// classifier (nodes/model/classifier.hpp): FID and KID between the
// classifier's features of the images and of a real image set, the
// classifier's mean confidence, its class histogram and that histogram's
// entropy (the arithmetic is nodes/common/fid.hpp). Used by the
// sample_quality node during training and by `diffuflow evaluate`.
//
//   QualityMeter meter(classifier, real.images(), {.cache_dir = "~/.cache/diffuflow"});
//   const QualityReport report = meter.measure(samples);   // samples [N,C,H,W] f32 in [-1,1]
//
// The real set's features are computed once and cached in
// <cache_dir>/quality_<key>.safetensors, where the key is a 64-bit FNV-1a
// hash of the classifier's configuration and weights and of the real images'
// shape and pixel values: another classifier or another real set gives
// another file, so a stale cache is never read. A cache that cannot be
// written only costs the time to recompute.
#pragma once

#include "graph/tensor.hpp"
#include "nodes/common/fid.hpp"
#include "nodes/model/classifier.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace diffuflow {

struct QualityOptions {
  int64_t batch = 250;              // images per classifier pass
  KidOptions kid{20, 1000, 0};      // KID subsets, their size, their seed
  std::filesystem::path cache_dir;  // where real-set features are cached; empty: no cache
};

struct QualityReport {
  int64_t count = 0;  // images measured
  double fid = 0;
  KidScore kid;
  ClassStats classes;
  // One JSON object: count, fid, kid, kid_std, confidence, class_entropy, class_histogram.
  std::string to_json() const;
};

// The default folder for cached real-set features: $XDG_CACHE_HOME/diffuflow,
// else $HOME/.cache/diffuflow, else none (empty).
std::filesystem::path default_quality_cache_dir();

// 64-bit FNV-1a over bytes, continued from `hash` (start with kFnvOffset).
constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
uint64_t fnv1a(const void* data, size_t bytes, uint64_t hash = kFnvOffset);

class QualityMeter {
 public:
  // real: [N,C,H,W] f32 in [-1,1] (N >= 2). Computes (or reads from the cache)
  // the real features at once.
  QualityMeter(Classifier& classifier, const Tensor& real, QualityOptions options);

  // images: [M,C,H,W] f32 in [-1,1] with the real set's C, H, W and M >= 2
  // (std::invalid_argument naming both shapes otherwise).
  QualityReport measure(const Tensor& images);

  const FeatureStats& real_stats() const { return real_stats_; }
  int64_t real_count() const { return real_stats_.count; }
  // The cache file of the real features ("" without a cache folder), and
  // whether this meter read it rather than computing the features.
  const std::filesystem::path& cache_file() const { return cache_file_; }
  bool from_cache() const { return from_cache_; }

 private:
  Classifier& classifier_;
  QualityOptions options_;
  Shape image_shape_;                // [C,H,W] of the real images
  std::vector<float> real_features_;  // [N,F]
  FeatureStats real_stats_;
  std::filesystem::path cache_file_;
  bool from_cache_ = false;
};

}  // namespace diffuflow
