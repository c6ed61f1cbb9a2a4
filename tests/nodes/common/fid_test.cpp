// FID and KID arithmetic: against numpy references computed by other methods
// (tests/fixtures/fid_reference.py), against closed forms, and run to run.
#include "nodes/common/fid.hpp"

#include "graph/safetensors.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>

using namespace diffuflow;

namespace {

std::vector<double> f64(const SafetensorsFile& file, const std::string& name) {
  const auto& e = file.entry(name);
  REQUIRE(e.dtype == "F64");
  std::vector<double> values(e.data.size() / sizeof(double));
  std::memcpy(values.data(), e.data.data(), e.data.size());
  return values;
}

std::vector<float> random_features(int64_t n, int64_t d, uint64_t seed, float shift = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> f(static_cast<size_t>(n * d));
  for (auto& v : f) v = normal(rng) + shift;
  return f;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  return worst;
}

}  // namespace

TEST_CASE("feature statistics, the matrix square root and FID match numpy's") {
  const SafetensorsFile ref = SafetensorsFile::read(test::fixture("fid_reference.safetensors"));
  const std::vector<float> x = ref.floats("x", {200, 8}), y = ref.floats("y", {300, 8});
  const FeatureStats sx = feature_stats(x.data(), 200, 8), sy = feature_stats(y.data(), 300, 8);
  CHECK(max_abs_diff(sx.mean, f64(ref, "x.mean")) < 1e-12);
  CHECK(max_abs_diff(sx.cov, f64(ref, "x.cov")) < 1e-12);
  CHECK(max_abs_diff(sy.cov, f64(ref, "y.cov")) < 1e-12);

  // Jacobi's square root against the Denman-Beavers iteration.
  CHECK(max_abs_diff(sqrt_psd(f64(ref, "psd"), 6), f64(ref, "psd.sqrt")) < 1e-10);

  // Through sqrt(C1) C2 sqrt(C1) against the eigenvalues of the non-symmetric C1 C2.
  const double fid = frechet_distance(sx, sy);
  const double expected = f64(ref, "fid_xy").at(0);
  CAPTURE(fid);
  CAPTURE(expected);
  CHECK(fid == doctest::Approx(expected).epsilon(1e-10));
  CHECK(frechet_distance(sy, sx) == doctest::Approx(expected).epsilon(1e-10));
}

TEST_CASE("KID over all rows matches numpy's unbiased MMD^2 with the cubic kernel") {
  const SafetensorsFile ref = SafetensorsFile::read(test::fixture("fid_reference.safetensors"));
  const std::vector<float> x = ref.floats("x", {200, 8}), z = ref.floats("z", {200, 8});
  KidOptions options;
  options.subsets = 3;        // every subset holds all 200 rows: the same value three times
  options.subset_size = 500;  // capped at 200
  const KidScore kid = kernel_distance(x.data(), 200, z.data(), 200, 8, options);
  CHECK(kid.subset_size == 200);
  CHECK(kid.mean == doctest::Approx(f64(ref, "kid_xz").at(0)).epsilon(1e-5));
  CHECK(kid.std < 1e-6 * std::fabs(kid.mean));
}

TEST_CASE("symmetric eigen-decomposition reconstructs the matrix with orthonormal vectors, values ascending") {
  const int64_t n = 12;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  std::vector<double> a(n * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) a[i * n + j] = a[j * n + i] = normal(rng);
  const SymmetricEigen e = symmetric_eigen(a, n);
  for (int64_t k = 1; k < n; ++k) CHECK(e.values[k - 1] <= e.values[k]);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double recon = 0, gram = 0;
      for (int64_t k = 0; k < n; ++k) {
        recon += e.vectors[i * n + k] * e.values[k] * e.vectors[j * n + k];
        gram += e.vectors[k * n + i] * e.vectors[k * n + j];
      }
      CHECK(recon == doctest::Approx(a[i * n + j]).epsilon(1e-12).scale(1.0));
      CHECK(gram == doctest::Approx(i == j ? 1.0 : 0.0).epsilon(1e-12).scale(1.0));
    }
  }
}

TEST_CASE("FID closed forms: identical sets give 0, a shift gives |dmu|^2, diagonal covariances sum (sqrt a - sqrt b)^2") {
  const int64_t n = 400, d = 16;
  const std::vector<float> x = random_features(n, d, 1);
  const FeatureStats sx = feature_stats(x.data(), n, d);
  CHECK(frechet_distance(sx, sx) == doctest::Approx(0.0).scale(1.0).epsilon(1e-9));

  std::vector<float> shifted = x;
  double shift_sq = 0;
  for (int64_t j = 0; j < d; ++j) shift_sq += (0.1 * j) * (0.1 * j);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) shifted[i * d + j] += 0.1f * static_cast<float>(j);
  // float rounding of the shifted features moves the covariance by ~1e-7
  CHECK(frechet_distance(sx, feature_stats(shifted.data(), n, d)) == doctest::Approx(shift_sq).epsilon(1e-5));

  FeatureStats a, b;
  a.count = b.count = 1000;
  a.dim = b.dim = 4;
  a.mean = {0, 0, 0, 0};
  b.mean = {1, 0, 0, 2};
  a.cov.assign(16, 0.0);
  b.cov.assign(16, 0.0);
  const double va[4] = {1.0, 4.0, 0.25, 9.0}, vb[4] = {4.0, 1.0, 0.25, 0.0};
  double expected = 1.0 + 4.0;
  for (int i = 0; i < 4; ++i) {
    a.cov[i * 4 + i] = va[i];
    b.cov[i * 4 + i] = vb[i];
    expected += (std::sqrt(va[i]) - std::sqrt(vb[i])) * (std::sqrt(va[i]) - std::sqrt(vb[i]));
  }
  CHECK(frechet_distance(a, b) == doctest::Approx(expected).epsilon(1e-12));
}

TEST_CASE("FID and KID are deterministic and grow with the distance between the sets") {
  const int64_t d = 32;
  const std::vector<float> real = random_features(600, d, 5);
  const std::vector<float> near = random_features(300, d, 6, 0.05f);
  const std::vector<float> far = random_features(300, d, 7, 0.5f);
  const FeatureStats sr = feature_stats(real.data(), 600, d);
  const double fid_near = frechet_distance(sr, feature_stats(near.data(), 300, d));
  CHECK(fid_near == frechet_distance(sr, feature_stats(near.data(), 300, d)));
  CHECK(frechet_distance(sr, feature_stats(far.data(), 300, d)) > fid_near);

  KidOptions options;
  options.subsets = 20;
  options.subset_size = 100;
  const KidScore a = kernel_distance(near.data(), 300, real.data(), 600, d, options);
  const KidScore b = kernel_distance(near.data(), 300, real.data(), 600, d, options);
  CHECK(a.mean == b.mean);
  CHECK(a.std == b.std);
  CHECK(a.subset_size == 100);
  options.seed = 1;
  CHECK(kernel_distance(near.data(), 300, real.data(), 600, d, options).mean != a.mean);
  CHECK(kernel_distance(far.data(), 300, real.data(), 600, d, options).mean > a.mean + 3 * a.std);
  // Unbiased: two samples of one distribution score about 0, either sign.
  CHECK(std::fabs(a.mean) < 0.5 * kernel_distance(far.data(), 300, real.data(), 600, d, options).mean);

  CHECK_THROWS_WITH(kernel_distance(near.data(), 1, real.data(), 600, d, options), doctest::Contains("at least 2"));
  CHECK_THROWS_WITH(feature_stats(near.data(), 1, d), doctest::Contains("at least 2"));
}

TEST_CASE("class statistics: mean confidence, histogram and its entropy") {
  // Three images: two most likely class 1, one class 0.
  const std::vector<float> p = {0.1f, 0.9f, 0.0f, 0.2f, 0.7f, 0.1f, 0.6f, 0.3f, 0.1f};
  const ClassStats s = class_stats(p.data(), 3, 3);
  CHECK(s.confidence == doctest::Approx((0.9 + 0.7 + 0.6) / 3));
  CHECK(s.histogram == std::vector<double>{1.0 / 3, 2.0 / 3, 0.0});
  CHECK(s.entropy == doctest::Approx(-(1.0 / 3) * std::log(1.0 / 3) - (2.0 / 3) * std::log(2.0 / 3)));

  std::vector<float> even(10 * 10, 0.0f);
  for (int i = 0; i < 10; ++i) even[i * 10 + i] = 1.0f;
  CHECK(class_stats(even.data(), 10, 10).entropy == doctest::Approx(std::log(10.0)));
  CHECK(class_stats(p.data(), 1, 3).entropy == 0.0);
}

TEST_CASE("rank-deficient covariances (fewer images than features): square root and FID stay exact and finite") {
  // A = B B^T with B [8,3]: rank 3 of 8; its square root squares back to A.
  std::mt19937_64 rng(9);
  std::normal_distribution<double> normal;
  const int64_t n = 8, r = 3;
  std::vector<double> b(n * r), a(n * n, 0.0);
  for (auto& v : b) v = normal(rng);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t k = 0; k < r; ++k) a[i * n + j] += b[i * r + k] * b[j * r + k];
  const std::vector<double> root = sqrt_psd(a, n);
  std::vector<double> squared(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t k = 0; k < n; ++k) squared[i * n + j] += root[i * n + k] * root[k * n + j];
  CHECK(max_abs_diff(squared, a) < 1e-9);

  // 20 feature vectors of 64 numbers: both covariances have rank 19.
  const int64_t d = 64;
  const std::vector<float> x = random_features(20, d, 11), y = random_features(20, d, 12, 0.2f);
  const FeatureStats sx = feature_stats(x.data(), 20, d), sy = feature_stats(y.data(), 20, d);
  const double fid = frechet_distance(sx, sy);
  CHECK(std::isfinite(fid));
  CHECK(fid > 0);
  CHECK(frechet_distance(sy, sx) == doctest::Approx(fid).epsilon(1e-9));
  CHECK(frechet_distance(sx, sx) == doctest::Approx(0.0).scale(1.0).epsilon(1e-9));
}
