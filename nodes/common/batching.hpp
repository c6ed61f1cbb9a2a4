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
// Also here: the parameters the sources have in common (a parameter group:
// DIFFUFLOW_PARAM_GROUP(BatchOptions, batch, BatchOptions{})), the step budget
// every source honours, and the u8 <-> [-1, 1] pixel mapping.
#pragma once

#include "graph/node.hpp"
#include "graph/params.hpp"
#include "graph/run_context.hpp"

#include <opencv2/core.hpp>

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

class EpochBatcher {
 public:
  using EpochRng = std::function<std::mt19937_64(int64_t epoch)>;

  EpochBatcher(int64_t count, BatchOptions options, EpochRng epoch_rng);

  // Fills `indices` with the next batch's item indices; false once every epoch is done.
  bool next(std::vector<int64_t>& indices);

  int64_t count() const { return count_; }
  int64_t batches_per_epoch() const;
  int64_t epoch() const { return epoch_; }  // the epoch the next batch comes from
  const BatchOptions& options() const { return options_; }

 private:
  void start_epoch();

  int64_t count_;
  BatchOptions options_;
  EpochRng epoch_rng_;
  int64_t epoch_ = 0;
  int64_t cursor_ = 0;
  bool started_ = false;
  std::vector<int64_t> order_;
};

// True while a source may emit another packet: no stop was requested and the
// step budget (ctx.max_steps, -1 = unbounded) is not used up by `emitted` packets.
bool source_may_emit(const RunContext& ctx, int64_t emitted);

// Pixel mapping used by every loader and writer: u8 v -> v/255*2-1, and back
// with round(clamp(x/2+0.5, 0, 1)*255).
inline float u8_to_signed_unit(uint8_t v) { return static_cast<float>(v) * (2.0f / 255.0f) - 1.0f; }
uint8_t signed_unit_to_u8(float x);

// Copies an 8-bit image (1 or 3 channels, interleaved, channel order as stored)
// into planar [C,H,W] floats in [-1, 1] starting at `dst`.
void image_to_planar(const cv::Mat& image, float* dst);

}  // namespace diffuflow
