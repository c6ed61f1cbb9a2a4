// EpochBatcher across processes: the parts of a global batch, in rank order,
// are exactly the batch one process with the whole global batch size takes,
// with the same data-stream positions.
#include "nodes/common/batching.hpp"

#include <doctest/doctest.h>

using namespace diffuflow;

namespace {

EpochBatcher make(int64_t batch, BatchShard shard, int64_t count = 50, bool drop_last = true, int64_t epochs = 3) {
  BatchOptions options;
  options.batch_size = batch;
  options.epochs = epochs;
  options.drop_last = drop_last;
  return EpochBatcher(count, options, [](int64_t epoch) { return std::mt19937_64(100 + epoch); }, shard);
}

}  // namespace

TEST_CASE("two processes with batch 4 take, between them, the batches one process takes with batch 8") {
  EpochBatcher whole = make(8, {0, 1});
  EpochBatcher rank0 = make(4, {0, 2}), rank1 = make(4, {1, 2});
  CHECK(whole.batches_per_epoch() == rank0.batches_per_epoch());
  std::vector<int64_t> all, part0, part1;
  int batches = 0;
  while (whole.next(all)) {
    REQUIRE(rank0.next(part0));
    REQUIRE(rank1.next(part1));
    std::vector<int64_t> joined = part0;
    joined.insert(joined.end(), part1.begin(), part1.end());
    CHECK(joined == all);
    CHECK(rank0.first_item() == whole.first_item());
    CHECK(rank1.first_item() == whole.first_item() + 4);
    ++batches;
  }
  CHECK(batches == 18);  // 6 full global batches of 50 items, 3 epochs
  CHECK_FALSE(rank0.next(part0));
  CHECK_FALSE(rank1.next(part1));
}

TEST_CASE("several processes drop a short last global batch even without drop_last") {
  EpochBatcher rank1 = make(4, {1, 2}, 20, false, 1);
  CHECK(rank1.batches_per_epoch() == 2);
  EpochBatcher single = make(8, {0, 1}, 20, false, 1);
  CHECK(single.batches_per_epoch() == 3);
}

TEST_CASE("seeking by batches or by items continues exactly where taking them would") {
  for (int64_t skip : {0, 1, 5, 6, 7, 13}) {
    CAPTURE(skip);
    EpochBatcher walked = make(4, {1, 2});
    std::vector<int64_t> a, b;
    for (int64_t i = 0; i < skip; ++i) REQUIRE(walked.next(a));
    EpochBatcher by_batches = make(4, {1, 2}), by_items = make(4, {1, 2});
    by_batches.seek(skip, -1);
    // The same data position reached by one process with the global batch of 8.
    by_items.seek(skip, skip * 8);
    while (walked.next(a)) {
      REQUIRE(by_batches.next(b));
      CHECK(a == b);
      CHECK(walked.first_item() == by_batches.first_item());
      REQUIRE(by_items.next(b));
      CHECK(a == b);
    }
    CHECK_FALSE(by_batches.next(b));
  }
}
