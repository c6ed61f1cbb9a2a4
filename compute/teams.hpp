// Teams: the parts of one batch computed at once, each by an OpenMP team of
// its own. R teams of T threads replace one team of R*T: each primitive is
// shared by fewer threads (less waiting at its barriers, less work cut into
// slivers), and one team's host code or serial tail overlaps the others'
// work. Data-parallel ranks do the same across processes; teams do it inside
// one, over the same weights.
//
//   Teams teams(4, 4);                   // 4 teams of 4 OpenMP threads
//   teams.run(4, [&](int part) { ... });  // part 0 on this thread, 1..3 on the helpers
//
// Team 0 is whichever thread calls run(): its own OpenMP setting
// (omp_set_num_threads) should be `threads`, as the helpers' is. A oneDNN CPU
// primitive runs with the thread count it was created with, so a part's
// primitives are created on the team that runs them.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace diffuflow {

class Teams {
 public:
  // Starts count - 1 helper threads, each with an OpenMP team of `threads`.
  Teams(int count, int threads);
  ~Teams();
  Teams(const Teams&) = delete;
  Teams& operator=(const Teams&) = delete;

  int count() const { return count_; }
  int threads() const { return threads_; }

  // Runs job(i) for every i in [0, parts), 1 <= parts <= count(): part 0 on
  // the calling thread, part i on helper i. Returns when every part is done;
  // then rethrows the exception of the lowest part that threw one. One run at
  // a time: a second caller waits for the first.
  void run(int parts, const std::function<void(int)>& job);

 private:
  void helper(int index);

  const int count_, threads_;
  std::mutex run_mutex_;  // one run() at a time
  std::mutex mutex_;
  std::condition_variable start_, done_;
  uint64_t generation_ = 0;
  const std::function<void(int)>* job_ = nullptr;
  int parts_ = 0, pending_ = 0;
  bool closing_ = false;
  std::vector<std::exception_ptr> errors_;
  std::vector<std::thread> helpers_;
};

// The part of [0, n) that part `i` of `parts` covers: [begin, end), the
// first n % parts parts one longer than the rest.
struct PartRange {
  int64_t begin, end;
};
PartRange part_range(int64_t n, int parts, int i);

}  // namespace diffuflow
