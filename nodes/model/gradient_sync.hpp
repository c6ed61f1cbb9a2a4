// GradientSync: data-parallel training's communication. During each backward
// pass it sums the parameter gradients over every process of the world and
// divides by their number, bucket by bucket on a communication thread, each
// bucket as soon as the backward pass has finished writing it (the last
// layers' gradients first), so the sums overlap with the earlier layers'
// compute. model_backward owns one when the world has several processes.
//
// Every process then holds the same averaged gradient, and its optimiser
// takes the same step: the weights stay bitwise equal. Every `check_every`
// steps a checksum of the weights is compared across processes, so a
// divergence (a bug, a rank fed other data) is a clear error, not a silent drift.
//
// Stops are agreed: each step the processes exchange whether one of them was
// asked to stop (a signal, --max-time); when one was, all stop after the same
// step, so no process waits in a sum the others never join. The same exchange
// carries the run clock (its maximum over the processes), so that a learning
// rate following the --max-time budget is equal on every process.
//
// The time of each bucket's sum goes to the profile and trace as the span
// track "<node>.allreduce"; the time the backward pass waits for the last
// sums (communication not hidden behind compute) as "<node>.allreduce_wait".
#pragma once

#include "compute/program.hpp"
#include "graph/run_context.hpp"
#include "graph/world.hpp"

#include <dnnl.hpp>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace diffuflow {

class GradientSync : public GradientObserver {
 public:
  struct Options {
    double bucket_mb = 4.0;   // MiB of gradient per bucket
    int64_t check_every = 100;  // steps between weight checksums (0: never)
  };

  // `params`: the model's flat weights [P] f32 (checksummed). CPU engines only.
  GradientSync(RunContext& ctx, std::string name, const dnnl::memory& params, Options options);
  ~GradientSync() override;

  // Called before the backward pass of step `seq` (the training step).
  void set_step(int64_t seq) { seq_ = seq; }

  void begin(const dnnl::memory& staging, int64_t param_count) override;
  void ready(int64_t from) override;
  void end() override;

  int64_t buckets() const { return static_cast<int64_t>(bounds_.size()); }
  double exposed_ms_total() const { return exposed_ns_ * 1e-6; }

  // A cheap checksum of n floats' bit patterns (order-sensitive).
  static uint64_t checksum(const float* values, size_t n);

 private:
  void loop();
  void check_weights();
  void agree_on_stop();

  RunContext& ctx_;
  std::string name_;
  dnnl::memory params_;
  Options options_;
  std::shared_ptr<World> world_;  // a communicator of its own
  float* grads_ = nullptr;
  std::vector<std::pair<int64_t, int64_t>> bounds_;  // buckets [lo, hi), highest offsets first
  size_t next_ = 0;                                  // the next bucket to start
  int64_t seq_ = 0;
  int64_t steps_ = 0;
  int64_t exposed_ns_ = 0;

  std::mutex mutex_;
  std::condition_variable work_, done_;
  std::deque<size_t> queue_;
  size_t finished_ = 0;
  bool closing_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace diffuflow
