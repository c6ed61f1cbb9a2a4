// Teams: every part runs once, on its own thread with its own OpenMP team,
// and a part's failure is reported after every part has finished.
#include "compute/teams.hpp"

#include <doctest/doctest.h>
#include <omp.h>

#include <atomic>
#include <chrono>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace diffuflow;

TEST_CASE("teams run each part once, part 0 on the caller and the others on threads with teams of their own") {
  Teams teams(3, 2);
  CHECK(teams.count() == 3);
  CHECK(teams.threads() == 2);
  for (int parts = 1; parts <= 3; ++parts) {
    CAPTURE(parts);
    std::vector<std::thread::id> ran_on(3);
    std::vector<int> team_size(3, 0), runs(3, 0);
    teams.run(parts, [&](int i) {
      ran_on[static_cast<size_t>(i)] = std::this_thread::get_id();
      ++runs[static_cast<size_t>(i)];
#pragma omp parallel
      {
#pragma omp single
        team_size[static_cast<size_t>(i)] = omp_get_num_threads();
      }
    });
    CHECK((ran_on[0] == std::this_thread::get_id()));
    std::set<std::thread::id> distinct(ran_on.begin(), ran_on.begin() + parts);
    CHECK(distinct.size() == static_cast<size_t>(parts));
    for (int i = 0; i < 3; ++i) CHECK(runs[static_cast<size_t>(i)] == (i < parts ? 1 : 0));
    // The helpers' teams have the threads asked for (the caller's is its own setting).
    for (int i = 1; i < parts; ++i) CHECK(team_size[static_cast<size_t>(i)] == 2);
  }
}

TEST_CASE("the parts of a run run at the same time") {
  // Each part waits until every part has started: parts run one after another would never all start.
  Teams teams(4, 1);
  std::atomic<int> started{0};
  std::atomic<bool> all_seen{true};
  teams.run(4, [&](int) {
    ++started;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (started.load() < 4) {
      if (std::chrono::steady_clock::now() > deadline) {
        all_seen = false;
        return;
      }
      std::this_thread::yield();
    }
  });
  CHECK(all_seen.load());
}

TEST_CASE("a part that throws is rethrown after every part has run; the lowest part's error wins") {
  Teams teams(4, 1);
  std::atomic<int> finished{0};
  try {
    teams.run(4, [&](int i) {
      if (i == 1 || i == 3) throw std::runtime_error("part " + std::to_string(i));
      ++finished;
    });
    FAIL("no exception");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "part 1");
  }
  CHECK(finished == 2);
  // The teams are usable afterwards.
  std::atomic<int> ran{0};
  teams.run(4, [&](int) { ++ran; });
  CHECK(ran == 4);
  CHECK_THROWS_AS(teams.run(5, [](int) {}), std::invalid_argument);
  CHECK_THROWS_AS(teams.run(0, [](int) {}), std::invalid_argument);
  CHECK_THROWS_AS(Teams(0, 1), std::invalid_argument);
}

TEST_CASE("part_range cuts [0, n) into consecutive parts whose lengths differ by at most one") {
  for (int64_t n : {1, 5, 64, 67}) {
    for (int parts : {1, 2, 3, 4, 16}) {
      if (parts > n) continue;
      CAPTURE(n);
      CAPTURE(parts);
      int64_t next = 0, shortest = n, longest = 0;
      for (int i = 0; i < parts; ++i) {
        const PartRange r = part_range(n, parts, i);
        CHECK(r.begin == next);
        next = r.end;
        shortest = std::min(shortest, r.end - r.begin);
        longest = std::max(longest, r.end - r.begin);
      }
      CHECK(next == n);
      CHECK(longest - shortest <= 1);
      CHECK(shortest >= 1);
    }
  }
  CHECK(part_range(5, 2, 0).end == 3);  // the longer parts come first
}
