#include "compute/part_gradients.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace diffuflow {

PartGradients::PartGradients(int parts, int64_t count, GradientObserver& outer, Sum sum)
    : count_(count),
      chunk_(std::max<int64_t>(4096, (count + 31) / 32)),
      outer_(outer),
      sum_(std::move(sum)),
      from_(static_cast<size_t>(std::max(parts, 0)), count),
      claimed_(count),
      announced_(count) {
  if (parts < 1 || count < 0) {
    throw std::invalid_argument("part gradients: need parts >= 1 and count >= 0, got " + std::to_string(parts) +
                                " and " + std::to_string(count));
  }
  parts_.reserve(static_cast<size_t>(parts));
  for (int i = 0; i < parts; ++i) parts_.emplace_back(this, i);
}

void PartGradients::ready(int part, int64_t from) {
  std::unique_lock<std::mutex> lock(mutex_);
  from_[static_cast<size_t>(part)] = from;
  advance(part, lock);
}

void PartGradients::finish(int part) {
  std::unique_lock<std::mutex> lock(mutex_);
  std::fill(from_.begin(), from_.end(), 0);
  advance(part, lock);
}

void PartGradients::advance(int part, std::unique_lock<std::mutex>& lock) {
  // Final in every part: above the highest part's offset, rounded up to a chunk edge.
  const int64_t high = *std::max_element(from_.begin(), from_.end());
  const int64_t edge = std::min(count_, (high + chunk_ - 1) / chunk_ * chunk_);
  if (failed_ || claimed_ <= edge) return;
  const int64_t top = claimed_;
  claimed_ = edge;
  lock.unlock();
  try {
    for (int64_t hi = top; hi > edge;) {
      const int64_t lo = (hi - 1) / chunk_ * chunk_;
      sum_(part, lo, hi - lo);
      hi = lo;
    }
  } catch (...) {
    lock.lock();
    failed_ = true;
    announced_cv_.notify_all();
    throw;
  }
  lock.lock();
  // Chunks above this claim may still be summing on another part's thread.
  announced_cv_.wait(lock, [&] { return announced_ == top || failed_; });
  if (failed_) return;
  outer_.ready(edge);
  announced_ = edge;
  announced_cv_.notify_all();
}

}  // namespace diffuflow
