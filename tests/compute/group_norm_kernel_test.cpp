// The host group norm against a double-precision reference written from the
// definition, in every layout it takes; results independent of the thread
// count and of the buffers' alignment.
#include "compute/group_norm_kernel.hpp"

#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

using namespace diffuflow;

namespace {

int64_t offset(const GroupNormGeometry& g, int64_t n, int64_t c, int64_t s) {
  return n * g.channels * g.spatial + (c / g.block) * g.block * g.spatial + s * g.block + c % g.block;
}

double act(NormActivation a, double v) {
  if (a == NormActivation::silu) return v / (1 + std::exp(-v));
  if (a == NormActivation::relu) return v > 0 ? v : 0;
  return v;
}

double act_grad(NormActivation a, double v) {
  if (a == NormActivation::silu) {
    const double s = 1 / (1 + std::exp(-v));
    return s * (1 + v * (1 - s));
  }
  if (a == NormActivation::relu) return v > 0 ? 1 : 0;
  return 1;
}

struct Case {
  GroupNormGeometry g;
  std::vector<float> x, dz, shift, gamma, beta;
  Case(GroupNormGeometry geometry, bool with_shift, uint32_t seed) : g(geometry) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.5f, 2.0f);
    const size_t count = static_cast<size_t>(g.batch * g.channels * g.spatial);
    auto draw = [&](std::vector<float>& v, size_t n) {
      v.resize(n);
      for (auto& e : v) e = normal(rng);
    };
    draw(x, count);
    draw(dz, count);
    draw(gamma, static_cast<size_t>(g.channels));
    draw(beta, static_cast<size_t>(g.channels));
    if (with_shift) draw(shift, static_cast<size_t>(g.batch * g.channels));
  }
  const float* shift_or_null() const { return shift.empty() ? nullptr : shift.data(); }
};

// Forward output, dx, d shift, d gamma, d beta from the definition, in double;
// dx and d shift as added to `dx0` and `dshift0`.
struct Reference {
  std::vector<double> y, dx, dshift, dgamma, dbeta;
  Reference(const Case& k, double dx0, double dshift0) {
    const GroupNormGeometry& g = k.g;
    const int64_t n_all = g.batch, c_all = g.channels, S = g.spatial, cg = c_all / g.groups, M = cg * S;
    y.assign(k.x.size(), 0);
    dx.assign(k.x.size(), dx0);
    dshift.assign(static_cast<size_t>(n_all * c_all), k.shift.empty() ? 0 : dshift0);
    dgamma.assign(static_cast<size_t>(c_all), 0);
    dbeta.assign(static_cast<size_t>(c_all), 0);
    auto input = [&](int64_t n, int64_t c, int64_t s) {
      return static_cast<double>(k.x[offset(g, n, c, s)]) + (k.shift.empty() ? 0.0 : k.shift[n * c_all + c]);
    };
    for (int64_t n = 0; n < n_all; ++n) {
      for (int64_t group = 0; group < g.groups; ++group) {
        const int64_t c0 = group * cg;
        double mean = 0, var = 0;
        for (int64_t c = c0; c < c0 + cg; ++c)
          for (int64_t s = 0; s < S; ++s) mean += input(n, c, s);
        mean /= static_cast<double>(M);
        for (int64_t c = c0; c < c0 + cg; ++c)
          for (int64_t s = 0; s < S; ++s) var += (input(n, c, s) - mean) * (input(n, c, s) - mean);
        var /= static_cast<double>(M);
        const double r = 1 / std::sqrt(var + g.eps);
        double k1 = 0, k2 = 0;
        std::vector<double> xhat(static_cast<size_t>(M)), dy(static_cast<size_t>(M));
        for (int64_t c = c0; c < c0 + cg; ++c) {
          for (int64_t s = 0; s < S; ++s) {
            const size_t j = static_cast<size_t>((c - c0) * S + s);
            xhat[j] = (input(n, c, s) - mean) * r;
            const double pre = k.gamma[c] * xhat[j] + k.beta[c];
            y[offset(g, n, c, s)] = act(g.act, pre);
            dy[j] = k.dz[offset(g, n, c, s)] * act_grad(g.act, pre);
            dgamma[c] += dy[j] * xhat[j];
            dbeta[c] += dy[j];
            k1 += k.gamma[c] * dy[j];
            k2 += k.gamma[c] * dy[j] * xhat[j];
          }
        }
        for (int64_t c = c0; c < c0 + cg; ++c) {
          for (int64_t s = 0; s < S; ++s) {
            const size_t j = static_cast<size_t>((c - c0) * S + s);
            const double d = r * (k.gamma[c] * dy[j] - k1 / M - xhat[j] * k2 / M);
            dx[offset(g, n, c, s)] += d;
            if (!k.shift.empty()) dshift[n * c_all + c] += d;
          }
        }
      }
    }
  }
};

double worst(const std::vector<float>& got, const std::vector<double>& want) {
  double w = 0;
  for (size_t i = 0; i < want.size(); ++i) w = std::max(w, std::fabs(got[i] - want[i]) / (1 + std::fabs(want[i])));
  return w;
}

GroupNormGeometry geometry(int64_t n, int64_t c, int64_t s, int64_t block, int64_t groups, NormActivation a) {
  GroupNormGeometry g;
  g.batch = n;
  g.channels = c;
  g.spatial = s;
  g.block = block;
  g.groups = groups;
  g.eps = 1e-5f;
  g.act = a;
  return g;
}

}  // namespace

TEST_CASE("host group norm: forward and backward match the definition in every layout, activation and shift") {
  // (N, C, S, block, groups): nChw16c with 1, 2, 8 and 16 channels per group
  // and with groups spanning two blocks (32 channels) or one and a half (24);
  // plain NCHW, S a multiple of 16 and not; NHWC with 3 and 16 channels per group.
  const std::vector<std::vector<int64_t>> shapes = {{3, 32, 7, 16, 8},  {2, 32, 5, 16, 1}, {2, 32, 4, 16, 16},
                                                    {4, 64, 49, 16, 32}, {2, 48, 6, 16, 3}, {2, 48, 6, 16, 2}, {2, 6, 9, 1, 3},
                                                    {2, 6, 37, 1, 2},   {2, 12, 4, 12, 4}, {2, 48, 6, 48, 3}};
  uint32_t seed = 1;
  for (const auto& shape : shapes) {
    for (const NormActivation a : {NormActivation::none, NormActivation::silu, NormActivation::relu}) {
      for (const bool with_shift : {false, true}) {
        for (const bool accumulate : {false, true}) {
          const GroupNormGeometry g = geometry(shape[0], shape[1], shape[2], shape[3], shape[4], a);
          CAPTURE(g.channels);
          CAPTURE(g.block);
          CAPTURE(g.groups);
          CAPTURE(static_cast<int>(a));
          CAPTURE(with_shift);
          CAPTURE(accumulate);
          const Case k(g, with_shift, seed++);
          const Reference ref(k, accumulate ? 0.25 : 0.0, accumulate ? -0.5 : 0.0);
          const size_t nc = static_cast<size_t>(g.batch * g.channels);
          std::vector<float> y(k.x.size()), mean(nc), rstd(nc), dx(k.x.size(), accumulate ? 0.25f : 7.0f),
              dshift(nc, accumulate ? -0.5f : 7.0f), dgamma(static_cast<size_t>(g.channels)),
              dbeta(static_cast<size_t>(g.channels)), work(2 * nc);
          group_norm_forward(g, k.x.data(), k.shift_or_null(), k.gamma.data(), k.beta.data(), y.data(), mean.data(),
                             rstd.data());
          group_norm_backward(g, k.x.data(), k.dz.data(), k.gamma.data(), k.beta.data(), mean.data(), rstd.data(),
                              dx.data(), accumulate, with_shift ? dshift.data() : nullptr, accumulate, dgamma.data(),
                              dbeta.data(), work.data());
          CHECK(worst(y, ref.y) < 2e-6);
          CHECK(worst(dx, ref.dx) < 2e-5);
          CHECK(worst(dgamma, ref.dgamma) < 2e-5);
          CHECK(worst(dbeta, ref.dbeta) < 2e-5);
          if (with_shift) CHECK(worst(dshift, ref.dshift) < 2e-5);
        }
      }
    }
  }
}

TEST_CASE("host group norm: d shift alone, without dx, is the sum of the input gradient") {
  const GroupNormGeometry g = geometry(2, 32, 9, 16, 4, NormActivation::silu);
  const Case k(g, true, 99);
  const Reference ref(k, 0.0, 0.0);
  const size_t nc = 64;
  std::vector<float> y(k.x.size()), mean(nc), rstd(nc), dshift(nc), dgamma(32), dbeta(32), work(2 * nc);
  group_norm_forward(g, k.x.data(), k.shift.data(), k.gamma.data(), k.beta.data(), y.data(), mean.data(),
                     rstd.data());
  group_norm_backward(g, k.x.data(), k.dz.data(), k.gamma.data(), k.beta.data(), mean.data(), rstd.data(), nullptr,
                      false, dshift.data(), false, dgamma.data(), dbeta.data(), work.data());
  CHECK(worst(dshift, ref.dshift) < 2e-5);
  CHECK(worst(dgamma, ref.dgamma) < 2e-5);
}

TEST_CASE("host group norm: bitwise the same for any thread count, buffer alignment and saved statistics") {
  // One element of misalignment moves every vector loop's remainder; the
  // results must not move with it.
  for (const int64_t block : {int64_t{1}, int64_t{16}, int64_t{48}}) {
    const GroupNormGeometry g = geometry(4, 48, 29, block, block == 48 ? 6 : 12, NormActivation::silu);
    CAPTURE(block);
    const Case k(g, true, 5);
    const size_t count = k.x.size(), nc = static_cast<size_t>(g.batch * g.channels);
    auto run = [&](int threads, size_t skew, bool keep_stats) {
      std::vector<float> x(count + skew), dz(count + skew), y(count + skew), dx(count + skew);
      std::copy(k.x.begin(), k.x.end(), x.begin() + static_cast<std::ptrdiff_t>(skew));
      std::copy(k.dz.begin(), k.dz.end(), dz.begin() + static_cast<std::ptrdiff_t>(skew));
      std::vector<float> mean(nc), rstd(nc), dshift(nc), dgamma(48), dbeta(48), work(2 * nc);
      const int saved = omp_get_max_threads();
      omp_set_num_threads(threads);
      group_norm_forward(g, x.data() + skew, k.shift.data(), k.gamma.data(), k.beta.data(), y.data() + skew,
                         keep_stats ? mean.data() : nullptr, keep_stats ? rstd.data() : nullptr);
      if (!keep_stats) group_norm_forward(g, x.data() + skew, k.shift.data(), k.gamma.data(), k.beta.data(),
                                          dx.data() + skew, mean.data(), rstd.data());
      group_norm_backward(g, x.data() + skew, dz.data() + skew, k.gamma.data(), k.beta.data(), mean.data(),
                          rstd.data(), dx.data() + skew, false, dshift.data(), false, dgamma.data(), dbeta.data(),
                          work.data());
      omp_set_num_threads(saved);
      std::vector<float> all(y.begin() + static_cast<std::ptrdiff_t>(skew), y.end());
      all.insert(all.end(), dx.begin() + static_cast<std::ptrdiff_t>(skew), dx.end());
      all.insert(all.end(), dshift.begin(), dshift.end());
      all.insert(all.end(), dgamma.begin(), dgamma.end());
      all.insert(all.end(), dbeta.begin(), dbeta.end());
      return all;
    };
    const std::vector<float> first = run(1, 0, true);
    for (const auto& [threads, skew, keep] : {std::tuple{2, size_t{1}, true}, std::tuple{3, size_t{3}, false},
                                              std::tuple{2, size_t{0}, false}}) {
      const std::vector<float> other = run(threads, skew, keep);
      CHECK(std::memcmp(first.data(), other.data(), first.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("host group norm: the bf16 outputs are the f32 output rounded to nearest even") {
  for (const NormOutput out : {NormOutput::bf16, NormOutput::bf16_nhwc}) {
    for (const NormActivation a : {NormActivation::none, NormActivation::silu}) {
      CAPTURE(static_cast<int>(out));
      CAPTURE(static_cast<int>(a));
      GroupNormGeometry g = geometry(3, 48, 11, 16, 6, a);
      const Case k(g, true, 17);
      const size_t count = k.x.size(), nc = static_cast<size_t>(g.batch * g.channels);
      std::vector<float> y(count), mean(nc), rstd(nc), mean_b(nc), rstd_b(nc);
      std::vector<uint16_t> yb(count);
      group_norm_forward(g, k.x.data(), k.shift.data(), k.gamma.data(), k.beta.data(), y.data(), mean.data(),
                         rstd.data());
      g.out = out;
      group_norm_forward(g, k.x.data(), k.shift.data(), k.gamma.data(), k.beta.data(), yb.data(), mean_b.data(),
                         rstd_b.data());
      CHECK(mean == mean_b);
      CHECK(rstd == rstd_b);
      size_t wrong = 0;
      for (int64_t n = 0; n < g.batch; ++n) {
        for (int64_t c = 0; c < g.channels; ++c) {
          for (int64_t s = 0; s < g.spatial; ++s) {
            uint32_t bits;
            std::memcpy(&bits, &y[offset(g, n, c, s)], sizeof bits);
            const uint32_t nearest_even = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
            const int64_t at = out == NormOutput::bf16 ? offset(g, n, c, s) : (n * g.spatial + s) * g.channels + c;
            if (yb[static_cast<size_t>(at)] != nearest_even) ++wrong;
          }
        }
      }
      CHECK(wrong == 0);
    }
  }
  GroupNormGeometry plain = geometry(1, 48, 4, 1, 6, NormActivation::none);
  plain.out = NormOutput::bf16;
  CHECK_FALSE(group_norm_geometry_ok(plain));  // bf16 outputs from nChw16c inputs only
}

TEST_CASE("host group norm: a geometry it cannot take is refused, not computed wrongly") {
  float dummy[64] = {};
  CHECK_THROWS_AS(group_norm_forward(geometry(1, 6, 4, 1, 4, NormActivation::none), dummy, nullptr, dummy, dummy,
                                     dummy, nullptr, nullptr),
                  std::invalid_argument);
  CHECK_THROWS_AS(group_norm_forward(geometry(1, 24, 2, 16, 4, NormActivation::none), dummy, nullptr, dummy, dummy,
                                     dummy, nullptr, nullptr),
                  std::invalid_argument);
  CHECK_FALSE(group_norm_geometry_ok(geometry(0, 16, 4, 16, 4, NormActivation::none)));
  CHECK(group_norm_geometry_ok(geometry(1, 24, 2, 24, 4, NormActivation::none)));
}
