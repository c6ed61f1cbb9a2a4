#include "compute/teams.hpp"

#include <omp.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace diffuflow {

Teams::Teams(int count, int threads) : count_(count), threads_(threads) {
  if (count < 1 || threads < 1) {
    throw std::invalid_argument("teams: " + std::to_string(count) + " teams of " + std::to_string(threads) +
                                " threads (both must be at least 1)");
  }
  helpers_.reserve(static_cast<size_t>(count - 1));
  for (int i = 1; i < count; ++i) helpers_.emplace_back([this, i] { helper(i); });
}

Teams::~Teams() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  start_.notify_all();
  for (auto& thread : helpers_) thread.join();
}

void Teams::helper(int index) {
  omp_set_num_threads(threads_);
  uint64_t seen = 0;
  for (;;) {
    std::unique_lock<std::mutex> lock(mutex_);
    start_.wait(lock, [&] { return closing_ || generation_ != seen; });
    if (closing_) return;
    seen = generation_;
    if (index >= parts_) continue;
    const std::function<void(int)>& job = *job_;
    lock.unlock();
    std::exception_ptr error;
    try {
      job(index);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    errors_[static_cast<size_t>(index)] = error;
    if (--pending_ == 0) done_.notify_one();
  }
}

void Teams::run(int parts, const std::function<void(int)>& job) {
  if (parts < 1 || parts > count_) {
    throw std::invalid_argument("teams: " + std::to_string(parts) + " parts for " + std::to_string(count_) + " teams");
  }
  std::lock_guard<std::mutex> one_run(run_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &job;
    parts_ = parts;
    pending_ = parts - 1;
    errors_.assign(static_cast<size_t>(parts), nullptr);
    ++generation_;
  }
  if (parts > 1) start_.notify_all();
  std::exception_ptr first;
  try {
    job(0);
  } catch (...) {
    first = std::current_exception();
  }
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
  if (first) std::rethrow_exception(first);
  for (const auto& error : errors_)
    if (error) std::rethrow_exception(error);
}

PartRange part_range(int64_t n, int parts, int i) {
  const int64_t base = n / parts, longer = n % parts;
  const int64_t begin = i * base + std::min<int64_t>(i, longer);
  return {begin, begin + base + (i < longer ? 1 : 0)};
}

}  // namespace diffuflow
