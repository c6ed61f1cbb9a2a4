// Tensor: a shape, a dtype and a dnnl::memory on an engine.
//
// Copying a Tensor copies a handle: the data is shared by reference, which is how
// tensors travel along graph edges without copies. Packets are immutable once
// sent, so a node that wants to change a tensor makes a new one.
//
// Memory is dense row-major ("plain") unless made with a blocked descriptor by a
// model layer. Host code reads and writes through map<T>(), an RAII mapping
// (HostMap, below) that is a no-op on the CPU engine and a real map/unmap on a
// GPU engine.
#pragma once

#include <dnnl.hpp>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffuflow {

enum class DType { f32, bf16, s32, s64, u8 };

std::string dtype_name(DType dtype);
size_t dtype_size(DType dtype);
dnnl::memory::data_type to_dnnl(DType dtype);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);
int64_t shape_numel(const Shape& shape);

// Row-major format tag for a given rank (a, ab, abc, abcd, ...).
dnnl::memory::format_tag plain_format(size_t rank);

template <typename T>
class HostMap;

class Tensor {
 public:
  Tensor() = default;
  // Allocates a plain tensor on `engine`. Contents are uninitialised.
  Tensor(Shape shape, DType dtype, const dnnl::engine& engine);
  // Wraps existing memory (any layout) with the given logical shape.
  Tensor(Shape shape, DType dtype, dnnl::memory memory);

  // A host tensor filled from values (convenience for tests and small tables).
  static Tensor from_vector(Shape shape, const std::vector<float>& values);
  static Tensor zeros(Shape shape, DType dtype, const dnnl::engine& engine);

  bool empty() const { return !memory_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t rank() const { return shape_.size(); }
  DType dtype() const { return dtype_; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  const dnnl::memory& memory() const { return memory_; }
  dnnl::memory::desc desc() const { return memory_.get_desc(); }
  dnnl::engine engine() const { return memory_.get_engine(); }
  bool on_cpu() const;

  // The same data seen with another shape of equal element count (plain layout
  // only). The view keeps the original memory alive.
  Tensor reshaped(Shape shape) const;

  // A deep copy on `engine` (a reorder), plain layout. Waits for completion.
  Tensor copy_to(const dnnl::engine& engine) const;
  // This tensor in plain layout on an engine of `engine`'s kind: itself when
  // it already is (no copy; any CPU engine's memory is the host's), else
  // copy_to(engine).
  Tensor plain_on(const dnnl::engine& engine) const;
  Tensor clone() const { return copy_to(engine()); }

  // Host access. The mapping is released when the HostMap goes out of scope.
  template <typename T>
  HostMap<T> map() const;

  // Copies all elements to a host vector (converting to float for f32 tensors).
  std::vector<float> to_vector() const;
  // Copies all elements of an s32 or s64 tensor, on any engine, to a host vector.
  std::vector<int64_t> to_int64_vector() const;

 private:
  Shape shape_;
  DType dtype_ = DType::f32;
  dnnl::memory memory_;
  dnnl::memory owner_;  // for views: the memory that owns the data
};

// Host access to a dnnl::memory for as long as the HostMap lives: a no-op on
// the CPU engine, a real map/unmap (a transfer) on a GPU engine. The one way
// host code touches oneDNN memory, so no mapping outlives an exception.
//
//   HostMap<float> stats(buffer);            // the whole memory: size() from its descriptor
//   stats[0] = 1.0f;
//   std::vector<float> copy(stats.begin(), stats.end());
template <typename T>
class HostMap {
 public:
  // The whole memory: as many T as its descriptor has bytes. Maps whole
  // buffers only (a descriptor with an offset has no size of its own: map the
  // buffer it views).
  explicit HostMap(const dnnl::memory& memory) : HostMap(memory, whole_count(memory)) {}
  // The first `count` elements.
  HostMap(const dnnl::memory& memory, size_t count) : memory_(memory), count_(count) {
    data_ = static_cast<T*>(memory_.map_data());
  }
  ~HostMap() {
    if (data_) memory_.unmap_data(data_);
  }
  HostMap(const HostMap&) = delete;
  HostMap& operator=(const HostMap&) = delete;
  HostMap(HostMap&& other) noexcept : memory_(other.memory_), data_(other.data_), count_(other.count_) {
    other.data_ = nullptr;
  }

  T* data() const { return data_; }
  size_t size() const { return count_; }
  T& operator[](size_t i) const { return data_[i]; }
  T* begin() const { return data_; }
  T* end() const { return data_ + count_; }
  void fill(const T& value) const { std::fill(begin(), end(), value); }

 private:
  static size_t whole_count(const dnnl::memory& memory) {
    const dnnl::memory::desc desc = memory.get_desc();
    if (desc.data.offset0 != 0) throw std::invalid_argument("HostMap: map the whole buffer, not an offset view of it");
    return desc.get_size() / sizeof(T);
  }

  dnnl::memory memory_;
  T* data_ = nullptr;
  size_t count_ = 0;
};

template <typename T>
HostMap<T> Tensor::map() const {
  return HostMap<T>(memory_, static_cast<size_t>(numel()));
}

}  // namespace diffuflow
