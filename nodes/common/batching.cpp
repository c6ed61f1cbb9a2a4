#include "nodes/common/batching.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace diffuflow {

BatchShard shard_of(const RunContext& ctx) { return BatchShard{ctx.world().rank(), ctx.world().size()}; }

EpochBatcher::EpochBatcher(int64_t count, BatchOptions options, EpochRng epoch_rng, BatchShard shard)
    : count_(count), options_(options), epoch_rng_(std::move(epoch_rng)), shard_(shard) {
  if (count_ < 0) throw std::invalid_argument("EpochBatcher: negative item count");
  if (options_.batch_size < 1) throw std::invalid_argument("EpochBatcher: batch_size must be at least 1");
  if (shard_.size < 1 || shard_.rank < 0 || shard_.rank >= shard_.size) {
    throw std::invalid_argument("EpochBatcher: bad shard");
  }
}

int64_t EpochBatcher::batches_per_epoch() const {
  const int64_t global = global_batch();
  const int64_t full = count_ / global;
  // Several processes: a short global batch cannot be cut into equal parts.
  const bool drop = options_.drop_last || shard_.size > 1;
  return drop || count_ % global == 0 ? full : full + 1;
}

int64_t EpochBatcher::epoch_items() const { return std::min(count_, batches_per_epoch() * global_batch()); }

void EpochBatcher::seek(int64_t batches, int64_t items) {
  const int64_t per_epoch = batches_per_epoch();
  if (per_epoch == 0 || batches <= 0) return;
  int64_t cursor = 0;
  if (items >= 0) {
    epoch_ = items / epoch_items();
    cursor = items % epoch_items();
  } else {
    epoch_ = batches / per_epoch;
    cursor = std::min(count_, (batches % per_epoch) * global_batch());
  }
  started_ = false;
  if (options_.epochs > 0 && epoch_ >= options_.epochs) return;
  start_epoch();
  cursor_ = cursor;
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
  if (started_ && cursor_ >= epoch_items()) {
    ++epoch_;
    started_ = false;
  }
  if (options_.epochs > 0 && epoch_ >= options_.epochs) return false;
  if (!started_) start_epoch();
  const int64_t global_end = std::min(count_, cursor_ + global_batch());
  const int64_t begin = std::min(global_end, cursor_ + shard_.rank * options_.batch_size);
  const int64_t end = std::min(global_end, begin + options_.batch_size);
  indices.assign(order_.begin() + begin, order_.begin() + end);
  first_item_ = epoch_ * count_ + begin;
  cursor_ = global_end;
  return true;
}

bool source_may_emit(const RunContext& ctx, int64_t emitted) {
  if (ctx.stop_requested()) return false;
  if (ctx.stop_at() >= 0 && emitted >= ctx.stop_at()) return false;
  return ctx.max_steps < 0 || emitted < ctx.max_steps;
}

}  // namespace diffuflow
