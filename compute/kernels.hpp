// Kernels: oneDNN primitives for imperative work outside a recorded program
// (a loss, an optimiser step, per-sample arithmetic on whole tensors, copies
// into strided views), created once per key and run on the memories of each
// call.
//
// A KernelSet<Key> builds a kernel the first time its key is asked for, from
// the primitive descriptor that the caller's `make` returns (made with
// user_scratchpad_attr()), and hands the same kernel to every later lookup,
// from any thread. The kernels of a set share one user-mode scratchpad that
// grows to the largest kernel's need; Kernel::run adds it to the arguments.
// Keys are anything std::map can order: a shape, an (operation, shape) pair,
// an enum of fixed steps.
//
//   enum class Op { add, scale };
//   KernelSet<std::pair<Op, Shape>> kernels_{engine};
//
//   // a [N,M] + b [N,M] -> sum [N,M]
//   const Kernel& add = kernels_.get({Op::add, shape}, [&] {
//     const auto md = plain_f32(shape);
//     return dnnl::binary::primitive_desc(dnnl::binary::desc(dnnl::algorithm::binary_add, md, md, md),
//                                         user_scratchpad_attr(), engine);
//   });
//   add.run(stream, {{DNNL_ARG_SRC_0, a}, {DNNL_ARG_SRC_1, b}, {DNNL_ARG_DST, sum}});
//
// Runs of one set share its scratchpad, so they are serialised: a run holds
// the set's run lock while it hands its work to the stream. The stream orders
// the work itself, so the runs of a set go to one in-order stream (on the
// compute thread, the device's). A scratchpad replaced by a larger one is kept
// until the set goes, since work queued on a device stream may still use it.
#pragma once

#include "compute/memory.hpp"

#include <dnnl.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace diffuflow {

class KernelStore;

// One primitive of a KernelSet.
class Kernel {
 public:
  // Executes on `stream` with `args` and the set's scratchpad (asynchronously
  // where the stream is: wait on it before reading the results on the host).
  void run(dnnl::stream& stream, Args args) const;
  // What this primitive alone needs of the shared scratchpad.
  size_t scratchpad_bytes() const { return scratchpad_bytes_; }

 private:
  friend class KernelStore;
  Kernel(dnnl::primitive primitive, size_t scratchpad_bytes, KernelStore& store)
      : primitive_(std::move(primitive)), scratchpad_bytes_(scratchpad_bytes), store_(&store) {}

  dnnl::primitive primitive_;
  size_t scratchpad_bytes_ = 0;
  KernelStore* store_ = nullptr;
};

// The part of a KernelSet that does not depend on its key: the engine, the
// shared scratchpad and the locks.
class KernelStore {
 public:
  explicit KernelStore(const dnnl::engine& engine);
  KernelStore(const KernelStore&) = delete;
  KernelStore& operator=(const KernelStore&) = delete;

  const dnnl::engine& engine() const { return engine_; }
  // The largest scratchpad any kernel built so far needs (the shared one's size).
  size_t scratchpad_bytes() const;

 protected:
  // A kernel from a primitive descriptor; the scratchpad grows to its need.
  // std::logic_error when the descriptor was made without user_scratchpad_attr().
  std::unique_ptr<Kernel> build(const dnnl::primitive_desc_base& pd);
  mutable std::mutex lookup_mutex_;  // guards the derived set's map

 private:
  friend class Kernel;
  void run(const Kernel& kernel, dnnl::stream& stream, Args& args);

  dnnl::engine engine_;
  mutable std::mutex run_mutex_;  // guards the scratchpad and serialises runs
  size_t scratchpad_bytes_ = 0;
  dnnl::memory scratchpad_;
  std::vector<dnnl::memory> retired_;  // earlier, smaller scratchpads
};

template <typename Key>
class KernelSet : public KernelStore {
 public:
  using KernelStore::KernelStore;

  // The kernel of `key`, built from make() (a primitive descriptor of any
  // kind: binary, reduction, matmul, reorder, ...) on the first lookup only.
  template <typename Make>
  const Kernel& get(const Key& key, Make make) {
    std::lock_guard<std::mutex> lock(lookup_mutex_);
    auto it = kernels_.find(key);
    if (it == kernels_.end()) it = kernels_.emplace(key, build(make())).first;
    return *it->second;
  }

  // Kernels built so far.
  size_t size() const {
    std::lock_guard<std::mutex> lock(lookup_mutex_);
    return kernels_.size();
  }

 private:
  std::map<Key, std::unique_ptr<Kernel>> kernels_;
};

}  // namespace diffuflow
