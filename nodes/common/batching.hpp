// EpochBatcher: the batching every data source shares. It walks a data set of
// `count` items epoch by epoch, in a fresh seeded permutation per epoch when
// shuffling, and hands out the item indices of one batch at a time. Batches
// never straddle two epochs; a short last batch is dropped with drop_last.
//
//   EpochBatcher batcher(count, params_.batch,
//                        [this](int64_t epoch) { return ctx().rng(name(), epoch); });
//   std::vector<int64_t> indices;
//   while (batcher.next(indices)) { ... }
//
// Data parallel (a world of several processes): batch_size is each process's
// part; every epoch's permutation is the same on all of them (seeded by epoch
// only), each global batch of batch_size x processes items is cut into equal
// consecutive parts in rank order, and a short last global batch is dropped.
// first_item() is the position of a batch's first item in the data stream
// (epoch x count + its place in the epoch's order), the same whichever
// process holds it: per-item randomness is keyed by it.
//
// Also here: the parameters the sources have in common (a parameter group:
// DIFFUFLOW_PARAM_GROUP(BatchOptions, batch, BatchOptions{})) and the step
// budget every source honours.
#pragma once

#include "graph/node.hpp"
#include "graph/params.hpp"
#include "graph/run_context.hpp"

#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace diffuflow {

struct BatchOptions {
  DIFFUFLOW_PARAMS(BatchOptions);
  DIFFUFLOW_PARAM(int64_t, batch_size, 64, "images per batch", .range(1, 65536));
  DIFFUFLOW_PARAM(bool, shuffle, true, "visit the data in a fresh seeded order every epoch");
  DIFFUFLOW_PARAM(int64_t, epochs, 1, "passes over the data; 0 = unbounded", .range(0, 1e9));
  DIFFUFLOW_PARAM(bool, drop_last, true, "drop the last batch of an epoch when it is short");
};

// Which part of each global batch this process takes.
struct BatchShard {
  int rank = 0;
  int size = 1;
};
BatchShard shard_of(const RunContext& ctx);  // from ctx.world()

class EpochBatcher {
 public:
  using EpochRng = std::function<std::mt19937_64(int64_t epoch)>;

  EpochBatcher(int64_t count, BatchOptions options, EpochRng epoch_rng, BatchShard shard = {});

  // Fills `indices` with this process's part of the next global batch; false
  // once every epoch is done.
  bool next(std::vector<int64_t>& indices);
  // The data-stream position of the first item next() returned last.
  int64_t first_item() const { return first_item_; }
  // Continues as if `batches` global batches holding `items` items (-1:
  // unknown, then batches decide) had been taken (resume).
  void seek(int64_t batches, int64_t items);

  int64_t count() const { return count_; }
  int64_t batches_per_epoch() const;
  int64_t global_batch() const { return options_.batch_size * shard_.size; }
  int64_t epoch() const { return epoch_; }  // the epoch the next batch comes from
  const BatchOptions& options() const { return options_; }

 private:
  void start_epoch();
  int64_t epoch_items() const;

  int64_t count_;
  BatchOptions options_;
  EpochRng epoch_rng_;
  BatchShard shard_;
  int64_t first_item_ = -1;
  int64_t epoch_ = 0;
  int64_t cursor_ = 0;
  bool started_ = false;
  std::vector<int64_t> order_;
};

// True while a source may emit another packet: no stop was requested and the
// step budget (ctx.max_steps, -1 = unbounded) is not used up by `emitted` packets.
bool source_may_emit(const RunContext& ctx, int64_t emitted);

}  // namespace diffuflow
