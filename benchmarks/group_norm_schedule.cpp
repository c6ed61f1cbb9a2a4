// The native GroupNorm + SiLU kernel under its two schedules (whole tensor:
// each pass over every sample in turn; per sample: both passes over one
// sample before the next, the second reading it from the cache), on unet-s's
// activation shapes at batch 64, nChw16c, f32 and bf16, forward and backward,
// alternated call by call:
//
//   OMP_NUM_THREADS=2 ./build/group_norm_schedule [ROUNDS]
//
// (built with the tests). Prints, per shape and type, the median ms of
// ROUNDS (default 21) calls under each schedule, their ratio, and which
// schedule `by_size` picks at this thread count. dz is restored before each
// backward call (with SiLU the kernel may overwrite it) outside the timing.
#include "nodes/model/group_norm_kernel.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

using namespace diffuflow::group_norm_kernel;

namespace {

double timed_ms(const std::function<void()>& call) {
  const auto start = std::chrono::steady_clock::now();
  call();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

uint16_t to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

struct Case {
  int64_t c, side;
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 21;
  const int64_t n = 64, groups = 8;
  const std::vector<Case> cases = {{32, 28}, {96, 28}, {64, 14}, {128, 14}, {64, 7}, {128, 7}};
  std::printf("%-13s %-5s %8s %8s %6s %8s %8s %6s  %s\n", "shape", "type", "fwd_whole", "fwd_per", "ratio",
              "bwd_whole", "bwd_per", "ratio", "by_size picks (fwd, bwd)");
  for (const Case& cs : cases) {
    for (const DataType type : {DataType::f32, DataType::bf16}) {
      const int64_t spatial = cs.side * cs.side;
      const size_t size = static_cast<size_t>(n * cs.c * spatial);
      std::mt19937 rng(5);
      std::normal_distribution<float> normal(0.2f, 1.0f);
      std::vector<float> x(size), y(size), dz0(size), dz(size), dx(size);
      std::vector<uint16_t> xb(size), yb(size);
      for (size_t i = 0; i < size; ++i) {
        x[i] = normal(rng);
        xb[i] = to_bf16(x[i]);
        dz0[i] = normal(rng);
      }
      std::vector<float> gamma(cs.c, 1.1f), beta(cs.c, 0.1f), mean(n * groups), rstd(n * groups), dgamma(cs.c),
          dbeta(cs.c);
      const bool bf16 = type == DataType::bf16;

      Forward f;
      f.shape = {n, cs.c, spatial, groups, Layout::blocked16};
      f.silu = true;
      f.type = type;
      f.x = bf16 ? static_cast<const void*>(xb.data()) : x.data();
      f.y = bf16 ? static_cast<void*>(yb.data()) : y.data();
      f.gamma = gamma.data();
      f.beta = beta.data();
      f.mean = mean.data();
      f.rstd = rstd.data();
      Backward b;
      b.shape = f.shape;
      b.silu = true;
      b.type = type;
      b.x = f.x;
      b.dz = dz.data();
      b.gamma = gamma.data();
      b.beta = beta.data();
      b.mean = mean.data();
      b.rstd = rstd.data();
      b.dx = dx.data();
      b.dgamma = dgamma.data();
      b.dbeta = dbeta.data();

      std::vector<double> fwd[2], bwd[2];
      const Schedule schedules[2] = {Schedule::whole_tensor, Schedule::per_sample};
      for (int r = -2; r < rounds; ++r) {  // two warm-up rounds
        for (int k = 0; k < 2; ++k) {
          set_schedule(schedules[k]);
          const double tf = timed_ms([&] { forward(f); });
          std::copy(dz0.begin(), dz0.end(), dz.begin());
          const double tb = timed_ms([&] { backward(b); });
          if (r >= 0) {
            fwd[k].push_back(tf);
            bwd[k].push_back(tb);
          }
        }
      }
      set_schedule(Schedule::by_size);
      const auto picks = [&](bool backward) {
        return picks_per_sample(f.shape, type, backward, true) ? "per_sample" : "whole";
      };
      char shape[32];
      std::snprintf(shape, sizeof shape, "%ldx%ldx%ld", static_cast<long>(cs.c), static_cast<long>(cs.side),
                    static_cast<long>(cs.side));
      const double fw = median(fwd[0]), fp = median(fwd[1]), bw = median(bwd[0]), bp = median(bwd[1]);
      std::printf("%-13s %-5s %8.3f %8.3f %6.2f %8.3f %8.3f %6.2f  %s, %s\n", shape, bf16 ? "bf16" : "f32", fw, fp,
                  fw / fp, bw, bp, bw / bp, picks(false), picks(true));
    }
  }
  return 0;
}
