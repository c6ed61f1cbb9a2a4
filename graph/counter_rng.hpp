// CounterRng: a counter-based random generator. Its k-th draw is a hash of
// (key, k), so a stream is fully named by its key: a sample's timestep, noise
// and augmentation are keyed by the sample's position in the data stream
// (RunContext::item_rng), and come out the same whichever process, batch or
// thread draws them.
//
//   CounterRng rng = ctx.item_rng(name(), packet.item_position(i));
//   std::uniform_int_distribution<int32_t>(0, 999)(rng);
//   rng.fill_normal(pixels, 784);
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace diffuflow {

// splitmix64's finaliser over a combined word: the hash behind every seeded stream.
inline uint64_t mix_words(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9e3779b97f4a7c15ULL * (b + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

class CounterRng {
 public:
  using result_type = uint64_t;
  explicit CounterRng(uint64_t key) : key_(key) {}
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return ~result_type{0}; }
  result_type operator()() { return mix_words(key_, counter_++); }

  // A uniform double in (0, 1] from the top 53 bits (never 0, so log() is finite).
  double uniform_open_zero() { return (static_cast<double>((*this)() >> 11) + 1.0) * (1.0 / 9007199254740992.0); }
  // n draws of N(0, scale^2) (Box-Muller, two per pair of uniforms).
  void fill_normal(float* out, size_t n, float scale = 1.0f) {
    constexpr double kTwoPi = 6.283185307179586476925286766559;
    for (size_t i = 0; i < n; i += 2) {
      const double radius = scale * std::sqrt(-2.0 * std::log(uniform_open_zero()));
      const double angle = kTwoPi * uniform_open_zero();
      out[i] = static_cast<float>(radius * std::cos(angle));
      if (i + 1 < n) out[i + 1] = static_cast<float>(radius * std::sin(angle));
    }
  }

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

}  // namespace diffuflow
