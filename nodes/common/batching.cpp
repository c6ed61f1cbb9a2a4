#include "nodes/common/batching.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace diffuflow {

EpochBatcher::EpochBatcher(int64_t count, BatchOptions options, EpochRng epoch_rng)
    : count_(count), options_(options), epoch_rng_(std::move(epoch_rng)) {
  if (count_ < 0) throw std::invalid_argument("EpochBatcher: negative item count");
  if (options_.batch_size < 1) throw std::invalid_argument("EpochBatcher: batch_size must be at least 1");
}

int64_t EpochBatcher::batches_per_epoch() const {
  const int64_t full = count_ / options_.batch_size;
  return options_.drop_last || count_ % options_.batch_size == 0 ? full : full + 1;
}

void EpochBatcher::start_epoch() {
  order_.resize(static_cast<size_t>(count_));
  std::iota(order_.begin(), order_.end(), int64_t{0});
  if (options_.shuffle) {
    // std::shuffle's algorithm is unspecified; a hand-written Fisher-Yates over
    // raw engine output keeps the order identical across standard libraries.
    std::mt19937_64 rng = epoch_rng_(epoch_);
    for (size_t i = order_.size(); i > 1; --i) {
      const size_t j = static_cast<size_t>(rng() % i);
      std::swap(order_[i - 1], order_[j]);
    }
  }
  cursor_ = 0;
  started_ = true;
}

bool EpochBatcher::next(std::vector<int64_t>& indices) {
  indices.clear();
  if (batches_per_epoch() == 0) return false;
  const int64_t epoch_items = std::min(count_, batches_per_epoch() * options_.batch_size);
  if (started_ && cursor_ >= epoch_items) {
    ++epoch_;
    started_ = false;
  }
  if (options_.epochs > 0 && epoch_ >= options_.epochs) return false;
  if (!started_) start_epoch();
  const int64_t begin = cursor_;
  const int64_t end = std::min(count_, begin + options_.batch_size);
  indices.assign(order_.begin() + begin, order_.begin() + end);
  cursor_ = end;
  return true;
}

bool source_may_emit(const RunContext& ctx, int64_t emitted) {
  if (ctx.stop_requested()) return false;
  return ctx.max_steps < 0 || emitted < ctx.max_steps;
}

}  // namespace diffuflow
