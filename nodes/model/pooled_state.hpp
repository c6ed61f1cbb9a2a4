// PooledState: the ForwardState that holds a model's workspace (a built
// program and its activations, compute/program_pool.hpp) while the
// activations travel with a packet to the backward node, and gives it back to
// its pool when the last reference goes.
//
//   auto ws = pool_->acquire(key, [&](PrimitiveCache& cache) { return build(cache); });
//   auto state = std::make_shared<PooledState<Pool, Workspace>>(pool_, std::move(ws));
#pragma once

#include "compute/program_pool.hpp"
#include "nodes/model/denoiser_model.hpp"

#include <memory>

namespace diffuflow {

template <typename Pool, typename Workspace>
class PooledState : public ForwardState {
 public:
  PooledState(std::weak_ptr<Pool> pool, std::unique_ptr<Workspace> ws)
      : pool_(std::move(pool)), owner_(pool_.lock().get()), ws_(std::move(ws)) {}
  ~PooledState() override {
    if (auto pool = pool_.lock()) pool->release(std::move(ws_));
  }
  int64_t batch() const override { return ws_->batch; }
  Workspace& workspace() const { return *ws_; }
  // The pool the workspace came from: a model rejects states of another model.
  const Pool* owner() const { return owner_; }

 private:
  std::weak_ptr<Pool> pool_;
  const Pool* owner_;
  std::unique_ptr<Workspace> ws_;
};

}  // namespace diffuflow
