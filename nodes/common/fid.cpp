#include "nodes/common/fid.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>

namespace diffuflow {

namespace {

// Sweeps of Jacobi rotations at most; a symmetric matrix converges
// quadratically, in well under 20 sweeps for the sizes met here.
constexpr int kMaxSweeps = 60;

// a [n,n] x b [n,n], row-major.
std::vector<double> matmul(const std::vector<double>& a, const std::vector<double>& b, int64_t n) {
  std::vector<double> c(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < n; ++k) {
      const double aik = a[i * n + k];
      if (aik == 0.0) continue;
      const double* brow = &b[k * n];
      double* crow = &c[i * n];
      for (int64_t j = 0; j < n; ++j) crow[j] += aik * brow[j];
    }
  }
  return c;
}

void check_square(const std::vector<double>& m, int64_t n, const char* what) {
  if (n < 1 || static_cast<int64_t>(m.size()) != n * n) {
    throw std::invalid_argument(std::string(what) + ": expected a " + std::to_string(n) + "x" + std::to_string(n) +
                                " matrix, got " + std::to_string(m.size()) + " numbers");
  }
}

}  // namespace

FeatureStats feature_stats(const float* features, int64_t count, int64_t dim) {
  if (count < 2 || dim < 1) {
    throw std::invalid_argument("feature statistics need at least 2 feature vectors of at least 1 number, got " +
                                std::to_string(count) + " of " + std::to_string(dim));
  }
  FeatureStats s;
  s.count = count;
  s.dim = dim;
  s.mean.assign(static_cast<size_t>(dim), 0.0);
  for (int64_t i = 0; i < count; ++i)
    for (int64_t j = 0; j < dim; ++j) s.mean[j] += features[i * dim + j];
  for (auto& m : s.mean) m /= static_cast<double>(count);
  // Upper triangle of the centred cross products, mirrored at the end.
  s.cov.assign(static_cast<size_t>(dim * dim), 0.0);
  std::vector<double> centred(static_cast<size_t>(dim));
  for (int64_t i = 0; i < count; ++i) {
    for (int64_t j = 0; j < dim; ++j) centred[j] = features[i * dim + j] - s.mean[j];
    for (int64_t j = 0; j < dim; ++j) {
      const double cj = centred[j];
      double* row = &s.cov[j * dim];
      for (int64_t k = j; k < dim; ++k) row[k] += cj * centred[k];
    }
  }
  const double scale = 1.0 / static_cast<double>(count - 1);
  for (int64_t j = 0; j < dim; ++j) {
    for (int64_t k = j; k < dim; ++k) {
      s.cov[j * dim + k] *= scale;
      s.cov[k * dim + j] = s.cov[j * dim + k];
    }
  }
  return s;
}

SymmetricEigen symmetric_eigen(const std::vector<double>& matrix, int64_t n) {
  check_square(matrix, n, "symmetric_eigen");
  // a: the symmetric part, rotated towards diagonal; v: the product of the rotations.
  std::vector<double> a(matrix.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) a[i * n + j] = 0.5 * (matrix[i * n + j] + matrix[j * n + i]);
  std::vector<double> v(matrix.size(), 0.0);
  for (int64_t i = 0; i < n; ++i) v[i * n + i] = 1.0;

  double total = 0;
  for (double x : a) total += x * x;
  for (int sweep = 0; sweep < kMaxSweeps; ++sweep) {
    double off = 0;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t q = p + 1; q < n; ++q) off += a[p * n + q] * a[p * n + q];
    if (off <= 1e-30 * total || off == 0.0) break;
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (apq == 0.0) continue;
        // The rotation in the (p, q) plane that zeroes a[p][q]: t = tan(phi),
        // the smaller root of t^2 + 2 theta t - 1 = 0.
        const double theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (int64_t k = 0; k < n; ++k) {  // columns p, q: A J
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (int64_t k = 0; k < n; ++k) {  // rows p, q: J^T (A J)
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        a[p * n + q] = a[q * n + p] = 0.0;
        for (int64_t k = 0; k < n; ++k) {  // V J
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }

  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) { return a[i * n + i] < a[j * n + j]; });
  SymmetricEigen result;
  result.values.resize(static_cast<size_t>(n));
  result.vectors.resize(matrix.size());
  for (int64_t k = 0; k < n; ++k) {
    const int64_t from = order[k];
    result.values[k] = a[from * n + from];
    for (int64_t i = 0; i < n; ++i) result.vectors[i * n + k] = v[i * n + from];
  }
  return result;
}

std::vector<double> sqrt_psd(const std::vector<double>& matrix, int64_t n) {
  const SymmetricEigen e = symmetric_eigen(matrix, n);
  // V diag(sqrt(max(lambda, 0))) V^T
  std::vector<double> root(matrix.size(), 0.0);
  for (int64_t k = 0; k < n; ++k) {
    const double r = std::sqrt(std::max(e.values[k], 0.0));
    if (r == 0.0) continue;
    for (int64_t i = 0; i < n; ++i) {
      const double vik = e.vectors[i * n + k] * r;
      for (int64_t j = 0; j < n; ++j) root[i * n + j] += vik * e.vectors[j * n + k];
    }
  }
  return root;
}

double trace_sqrt_product(const std::vector<double>& a, const std::vector<double>& b, int64_t n) {
  check_square(a, n, "trace_sqrt_product");
  check_square(b, n, "trace_sqrt_product");
  const std::vector<double> root = sqrt_psd(a, n);
  const std::vector<double> m = matmul(matmul(root, b, n), root, n);  // sqrt(A) B sqrt(A), symmetric PSD
  double trace = 0;
  for (double lambda : symmetric_eigen(m, n).values) trace += std::sqrt(std::max(lambda, 0.0));
  return trace;
}

double frechet_distance(const FeatureStats& a, const FeatureStats& b) {
  if (a.dim != b.dim || a.dim < 1) {
    throw std::invalid_argument("frechet_distance: feature sizes differ (" + std::to_string(a.dim) + " and " +
                                std::to_string(b.dim) + ")");
  }
  const int64_t n = a.dim;
  double mean_term = 0, trace_a = 0, trace_b = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = a.mean[i] - b.mean[i];
    mean_term += d * d;
    trace_a += a.cov[i * n + i];
    trace_b += b.cov[i * n + i];
  }
  const double fid = mean_term + trace_a + trace_b - 2.0 * trace_sqrt_product(a.cov, b.cov, n);
  return std::max(fid, 0.0);  // rounding can leave -1e-12 for identical sets
}

KidScore kernel_distance(const float* x, int64_t nx, const float* y, int64_t ny, int64_t dim, const KidOptions& options) {
  if (nx < 2 || ny < 2 || dim < 1) {
    throw std::invalid_argument("kernel_distance needs at least 2 feature vectors in each set, got " +
                                std::to_string(nx) + " and " + std::to_string(ny));
  }
  if (options.subsets < 1 || options.subset_size < 2) {
    throw std::invalid_argument("kernel_distance needs at least 1 subset of at least 2 vectors");
  }
  const int64_t m = std::min({options.subset_size, nx, ny});
  const double inv_dim = 1.0 / static_cast<double>(dim);
  // m of n rows without replacement (the first m of a seeded shuffle), copied
  // out as [m, dim] and transposed [dim, m].
  std::vector<int64_t> order;
  auto pick = [&](const float* set, int64_t n, std::mt19937_64& rng, std::vector<float>& rows,
                  std::vector<float>& columns) {
    order.resize(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    for (int64_t i = 0; i < m; ++i) {
      std::uniform_int_distribution<int64_t> at(i, n - 1);
      std::swap(order[i], order[at(rng)]);
    }
    rows.resize(static_cast<size_t>(m * dim));
    columns.resize(rows.size());
    for (int64_t i = 0; i < m; ++i) {
      const float* from = set + order[i] * dim;
      std::copy(from, from + dim, rows.begin() + i * dim);
      for (int64_t k = 0; k < dim; ++k) columns[k * m + i] = from[k];
    }
  };
  // Sum of k(a_i, b_j) over j (j > i when `upper`, for a set against itself):
  // the dot products of row i against all of b as one contiguous loop over j
  // (vectorised without reordering any sum), the kernel in double.
  std::vector<float> dots(static_cast<size_t>(m));
  auto kernel_sum = [&](const std::vector<float>& a_rows, const std::vector<float>& b_columns, bool upper) {
    double total = 0;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t from = upper ? i + 1 : 0;
      std::fill(dots.begin() + from, dots.end(), 0.0f);
      const float* a = &a_rows[i * dim];
      for (int64_t k = 0; k < dim; ++k) {
        const float ak = a[k];
        const float* b = &b_columns[k * m];
        for (int64_t j = from; j < m; ++j) dots[j] += ak * b[j];
      }
      for (int64_t j = from; j < m; ++j) {
        const double base = static_cast<double>(dots[j]) * inv_dim + 1.0;
        total += base * base * base;
      }
    }
    return total;
  };

  std::mt19937_64 rng(options.seed);
  std::vector<float> x_rows, x_columns, y_rows, y_columns;
  std::vector<double> scores;
  scores.reserve(static_cast<size_t>(options.subsets));
  for (int64_t s = 0; s < options.subsets; ++s) {
    pick(x, nx, rng, x_rows, x_columns);
    pick(y, ny, rng, y_rows, y_columns);
    const double kxx = kernel_sum(x_rows, x_columns, true);  // pairs i < j, each once
    const double kyy = kernel_sum(y_rows, y_columns, true);
    const double kxy = kernel_sum(x_rows, y_columns, false);
    const double md = static_cast<double>(m);
    scores.push_back(2.0 * (kxx + kyy) / (md * (md - 1.0)) - 2.0 * kxy / (md * md));
  }
  KidScore score;
  score.subsets = options.subsets;
  score.subset_size = m;
  for (double v : scores) score.mean += v;
  score.mean /= static_cast<double>(scores.size());
  double var = 0;
  for (double v : scores) var += (v - score.mean) * (v - score.mean);
  score.std = scores.size() > 1 ? std::sqrt(var / static_cast<double>(scores.size() - 1)) : 0.0;
  return score;
}

ClassStats class_stats(const float* probabilities, int64_t count, int64_t classes) {
  if (count < 1 || classes < 1) throw std::invalid_argument("class_stats needs at least one image and one class");
  ClassStats s;
  s.histogram.assign(static_cast<size_t>(classes), 0.0);
  for (int64_t i = 0; i < count; ++i) {
    const float* row = probabilities + i * classes;
    const int64_t best = std::max_element(row, row + classes) - row;
    s.confidence += row[best];
    s.histogram[best] += 1.0;
  }
  s.confidence /= static_cast<double>(count);
  for (auto& h : s.histogram) {
    h /= static_cast<double>(count);
    if (h > 0) s.entropy -= h * std::log(h);
  }
  return s;
}

}  // namespace diffuflow
