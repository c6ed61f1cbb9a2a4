// Programs built once per shape and reused: what a model keeps between passes.
//
// A Workspace is one built program with its values and stream; it has a
// `key` member (batch size, image size, training or not, precision, as the
// model defines it) and a `batch` member. acquire() hands out an idle
// workspace of the key or builds one (its primitives come from one cache per
// key, so a second workspace of a key creates no primitives, only memory);
// release() takes it back.
//
//   using Key = std::pair<int64_t, bool>;
//   struct Workspace { Key key; int64_t batch; std::unique_ptr<Program> program; ... };
//   class Model::Pool : public ProgramPool<Key, Workspace> {};
//   auto ws = pool_->acquire(key, [&](PrimitiveCache& cache) { return build(cache); });
#pragma once

#include "compute/program.hpp"

#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace diffuflow {

template <typename Key, typename Workspace>
class ProgramPool {
 public:
  template <typename Build>
  std::unique_ptr<Workspace> acquire(const Key& key, Build build) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& idle = idle_[key];
    if (!idle.empty()) {
      auto ws = std::move(idle.back());
      idle.pop_back();
      return ws;
    }
    auto& cache = caches_[key];
    if (!cache) cache = std::make_unique<PrimitiveCache>();
    ++built_;
    return build(*cache);
  }

  void release(std::unique_ptr<Workspace> ws) {
    if (!ws) return;
    std::lock_guard<std::mutex> lock(mutex_);
    idle_[ws->key].push_back(std::move(ws));
  }

  // Workspaces built so far (for tests: how many distinct programs were needed).
  size_t built() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return built_;
  }

 private:
  mutable std::mutex mutex_;
  std::map<Key, std::unique_ptr<PrimitiveCache>> caches_;
  std::map<Key, std::vector<std::unique_ptr<Workspace>>> idle_;
  size_t built_ = 0;
};

}  // namespace diffuflow
