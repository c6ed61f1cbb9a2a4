// PartGradients: the parameter gradients of a pass split into parts (Teams),
// added up and handed to a GradientObserver while the parts' backward passes
// still run, as one whole pass hands its gradients over as they become final.
//
// Each part's program reports through part(i) the offset above which its
// gradients are final (GradientObserver::ready, falling). Once every part is
// past a chunk of the buffer, the part that got there last claims the chunks
// up to that point, adds them up through `sum` on its own thread (its team),
// outside the lock, and then announces them to the outer observer in offset
// order, so other parts reporting meanwhile do not wait for its sums. Chunks
// are whole 1/32nds of the buffer (at least 4,096 elements) counted from
// offset 0, so `sum` sees two lengths at most: a chunk and the top one.
//
//   PartGradients merge(parts, count, observer, [&](int part, int64_t begin, int64_t length) {
//     // add [begin, begin + length) of every part's buffer into part 0's, on part `part`'s team
//   });
//   observer.begin(part0_buffer, count);
//   teams.run(parts, [&](int i) { program[i].run_backward(stream[i], merge.part(i), nullptr); });
//   merge.finish(0);  // on team 0: whatever no part claimed
//   observer.end();
#pragma once

#include "compute/program.hpp"

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace diffuflow {

class PartGradients {
 public:
  using Sum = std::function<void(int part, int64_t begin, int64_t length)>;

  PartGradients(int parts, int64_t count, GradientObserver& outer, Sum sum);
  PartGradients(const PartGradients&) = delete;
  PartGradients& operator=(const PartGradients&) = delete;

  // The observer to give part i's backward pass; its begin() and end() do nothing.
  GradientObserver* part(int i) { return &parts_[static_cast<size_t>(i)]; }
  // After every part's backward, on `part`'s thread: sums and announces what
  // no part claimed (nothing, when each ran to its end and reported 0).
  void finish(int part);

  int64_t chunk() const { return chunk_; }

 private:
  class Part : public GradientObserver {
   public:
    Part(PartGradients* owner, int index) : owner_(owner), index_(index) {}
    void begin(const dnnl::memory&, int64_t) override {}
    void ready(int64_t from) override { owner_->ready(index_, from); }
    void end() override {}

   private:
    PartGradients* owner_;
    int index_;
  };

  void ready(int part, int64_t from);
  // Claims every whole chunk final in all parts, sums it unlocked, announces it in order.
  void advance(int part, std::unique_lock<std::mutex>& lock);

  const int64_t count_, chunk_;
  GradientObserver& outer_;
  Sum sum_;
  std::vector<Part> parts_;
  std::mutex mutex_;
  std::condition_variable announced_cv_;
  std::vector<int64_t> from_;  // per part: its gradients at offsets >= from_ are final
  int64_t claimed_;            // offsets >= claimed_ are being summed or done
  int64_t announced_;          // offsets >= announced_ are summed and announced
  bool failed_ = false;        // a sum threw: nothing more is announced
};

}  // namespace diffuflow
