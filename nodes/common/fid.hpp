// The arithmetic of sample-quality scores on classifier features, in double:
// the Frechet distance (FID) between two Gaussians fitted to feature sets,
// the kernel distance (KID) between the sets themselves, and what a
// classifier's class probabilities say about a set (confidence, class
// histogram, its entropy).
//
//   const FeatureStats real = feature_stats(real_features.data(), n_real, dim);   // features [N,D] row-major
//   const FeatureStats fake = feature_stats(fake_features.data(), n_fake, dim);
//   const double fid = frechet_distance(real, fake);
//   const KidScore kid = kernel_distance(fake_features.data(), n_fake, real_features.data(), n_real, dim, {});
//
// FID = |mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr(sqrt(C1 C2)). C1 C2 is not
// symmetric, but it is similar to sqrt(C1) C2 sqrt(C1), which is symmetric
// positive semi-definite with the same eigenvalues; so tr(sqrt(C1 C2)) is the
// sum of the square roots of that matrix's eigenvalues. Both eigen-problems
// are symmetric and solved by cyclic Jacobi rotations (accurate to rounding,
// no complex parts to discard), with negative eigenvalues that rounding
// leaves clamped to 0.
//
// KID is the unbiased estimate of the squared maximum mean discrepancy with
// the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random
// subsets of both sets (Binkowski et al., "Demystifying MMD GANs").
#pragma once

#include <cstdint>
#include <vector>

namespace diffuflow {

// Mean [D] and covariance [D,D] (row-major, divided by N - 1, as numpy.cov)
// of N feature vectors.
struct FeatureStats {
  int64_t count = 0;
  int64_t dim = 0;
  std::vector<double> mean;
  std::vector<double> cov;
};

// `features`: [count, dim] row-major. Needs count >= 2 (std::invalid_argument).
FeatureStats feature_stats(const float* features, int64_t count, int64_t dim);

// Eigen-decomposition of a symmetric [n,n] matrix (row-major; only its
// symmetric part counts): eigenvalues ascending, eigenvectors as the columns
// of `vectors` [n,n] row-major, in the same order.
struct SymmetricEigen {
  std::vector<double> values;
  std::vector<double> vectors;
};
SymmetricEigen symmetric_eigen(const std::vector<double>& matrix, int64_t n);

// The symmetric square root of a symmetric positive semi-definite [n,n]
// matrix (eigenvalues below 0 by rounding count as 0).
std::vector<double> sqrt_psd(const std::vector<double>& matrix, int64_t n);

// tr(sqrt(A B)) for symmetric positive semi-definite A and B [n,n].
double trace_sqrt_product(const std::vector<double>& a, const std::vector<double>& b, int64_t n);

// The Frechet distance between N(a.mean, a.cov) and N(b.mean, b.cov); equal
// dimensions (std::invalid_argument otherwise). Never negative.
double frechet_distance(const FeatureStats& a, const FeatureStats& b);

struct KidOptions {
  int64_t subsets = 100;       // random subset pairs averaged
  int64_t subset_size = 1000;  // capped at the smaller set's size
  uint64_t seed = 0;           // which subsets: the same seed, the same score
};

struct KidScore {
  double mean = 0;         // the average unbiased MMD^2 over the subsets
  double std = 0;          // its standard deviation over the subsets
  int64_t subsets = 0;
  int64_t subset_size = 0;
};

// KID between feature sets x [nx, dim] and y [ny, dim]. Both need at least 2
// rows (std::invalid_argument otherwise).
KidScore kernel_distance(const float* x, int64_t nx, const float* y, int64_t ny, int64_t dim, const KidOptions& options);

// What a classifier's probabilities say about a set of N images.
struct ClassStats {
  double confidence = 0;          // the mean of each image's largest class probability
  std::vector<double> histogram;  // the fraction of images whose most likely class is k
  double entropy = 0;             // of the histogram, in nats: log(K) when the classes are even, 0 for one class
};

// `probabilities`: [count, classes] row-major, each row summing to 1.
ClassStats class_stats(const float* probabilities, int64_t count, int64_t classes);

}  // namespace diffuflow
