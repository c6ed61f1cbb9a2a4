// PartGradients: a split pass's gradients are summed and announced chunk by
// chunk as soon as every part is past them, in falling order, each range once.
#include "compute/part_gradients.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <vector>

using namespace diffuflow;

namespace {

// The outer observer: records what it is told, checking the contract.
struct Announcements : GradientObserver {
  void begin(const dnnl::memory&, int64_t) override {}
  void ready(int64_t from) override {
    CHECK((froms.empty() || from < froms.back()));
    froms.push_back(from);
  }
  void end() override {}
  std::vector<int64_t> froms;
};

struct SumCall {
  int part;
  int64_t begin, length;
};

}  // namespace

TEST_CASE("chunks are summed and announced as soon as every part has passed them, not at the end") {
  Announcements outer;
  std::vector<SumCall> sums;
  const int64_t count = 100000;  // chunks of 4,096: the top one [98304, 100000)
  PartGradients merge(2, count, outer, [&](int part, int64_t begin, int64_t length) {
    sums.push_back({part, begin, length});
  });
  REQUIRE(merge.chunk() == 4096);
  merge.part(0)->ready(90000);
  CHECK(outer.froms.empty());  // part 1 has reported nothing yet
  merge.part(1)->ready(95000);
  // Final in both parts: offsets >= 95000, whole chunks from 98304; summed on part 1's thread.
  REQUIRE(outer.froms == std::vector<int64_t>{98304});
  REQUIRE(sums.size() == 1);
  CHECK(sums[0].part == 1);
  CHECK(sums[0].begin == 98304);
  CHECK(sums[0].length == 1696);
  merge.part(1)->ready(40000);  // part 0 (at 90000) is now the one behind
  CHECK(outer.froms.back() == 90112);
  merge.part(0)->ready(40960);  // exactly a chunk edge: [40960, 90112) is final in both
  CHECK(outer.froms.back() == 40960);
  CHECK(sums.back().part == 0);
  merge.part(0)->ready(0);
  merge.part(1)->ready(0);
  CHECK(outer.froms.back() == 0);
  const size_t before = sums.size();
  merge.finish(0);  // nothing left
  CHECK(sums.size() == before);
  CHECK(outer.froms.back() == 0);
  // Every offset summed exactly once, in whole chunks but the top one, falling.
  int64_t next = count;
  for (const SumCall& s : sums) {
    CHECK(s.begin + s.length == next);
    CHECK(s.begin % 4096 == 0);
    CHECK((s.length == 4096 || s.begin == 98304));
    next = s.begin;
  }
  CHECK(next == 0);
}

TEST_CASE("finish sums and announces what no part reported") {
  Announcements outer;
  int64_t summed = 0;
  PartGradients merge(3, 10000, outer, [&](int, int64_t, int64_t length) { summed += length; });
  merge.part(0)->ready(5000);
  merge.part(2)->ready(5000);
  CHECK(outer.froms.empty());  // part 1 never reported
  merge.finish(0);
  CHECK(summed == 10000);
  CHECK(outer.froms == std::vector<int64_t>{0});
  CHECK_THROWS_AS(PartGradients(0, 10, outer, [](int, int64_t, int64_t) {}), std::invalid_argument);
}

TEST_CASE("parts reporting at once on their own threads: each range is final in every part when summed, "
          "and announced only after it and everything above it are summed") {
  for (int round = 0; round < 20; ++round) {
    CAPTURE(round);
    const int parts = 4;
    const int64_t count = 1 << 18;
    std::mutex mutex;
    std::vector<int64_t> reported(parts, count);  // each part's latest offset, as the test sees it
    std::vector<char> summed(static_cast<size_t>(count), 0);
    struct Outer : GradientObserver {
      std::mutex* mutex;
      std::vector<char>* summed;
      std::vector<int64_t> froms;
      void begin(const dnnl::memory&, int64_t) override {}
      void ready(int64_t from) override {
        std::lock_guard<std::mutex> lock(*mutex);
        CHECK((froms.empty() || from < froms.back()));
        // Everything announced is summed.
        CHECK(std::all_of(summed->begin() + from, summed->end(), [](char c) { return c == 1; }));
        froms.push_back(from);
      }
      void end() override {}
    } outer;
    outer.mutex = &mutex;
    outer.summed = &summed;
    PartGradients merge(parts, count, outer, [&](int, int64_t begin, int64_t length) {
      // A sum takes a while, so another part's claim below this one can finish first.
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      std::lock_guard<std::mutex> lock(mutex);
      // Final in every part: no part has reported an offset above begin.
      CHECK(*std::max_element(reported.begin(), reported.end()) <= begin);
      const auto first = summed.begin() + begin, last = first + length;
      CHECK(std::all_of(first, last, [](char c) { return c == 0; }));  // once
      std::fill(first, last, 1);
    });
    std::vector<std::thread> threads;
    std::atomic<int> started{0};
    for (int p = 0; p < parts; ++p) {
      threads.emplace_back([&, p] {
        std::mt19937 rng(static_cast<unsigned>(round * parts + p));
        ++started;
        while (started < parts) std::this_thread::yield();  // all parts at once, as in a pass
        int64_t from = count;
        while (from > 0) {
          // A backward step, then its report.
          std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
          from = std::max<int64_t>(0, from - static_cast<int64_t>(rng() % 30000));
          {
            std::lock_guard<std::mutex> lock(mutex);
            reported[static_cast<size_t>(p)] = from;
          }
          merge.part(p)->ready(from);
        }
      });
    }
    for (auto& t : threads) t.join();
    merge.finish(0);
    CHECK(std::all_of(summed.begin(), summed.end(), [](char c) { return c == 1; }));
    REQUIRE(!outer.froms.empty());
    CHECK(outer.froms.back() == 0);
  }
}

TEST_CASE("a sum that throws reaches its part; nothing after it is announced, and no part waits forever") {
  Announcements outer;
  std::atomic<int> calls{0};
  PartGradients merge(2, 50000, outer, [&](int, int64_t, int64_t) {
    if (++calls == 2) throw std::runtime_error("sum failed");
  });
  merge.part(0)->ready(0);
  CHECK_THROWS_AS(merge.part(1)->ready(0), std::runtime_error);
  const size_t announced = outer.froms.size();
  merge.part(1)->ready(0);
  merge.finish(0);
  CHECK(outer.froms.size() == announced);
}
