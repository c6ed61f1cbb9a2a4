#include "graph/tensor.hpp"

#include "graph/device.hpp"

#include <cstring>
#include <sstream>
#include <stdexcept>

namespace diffuflow {

std::string dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::s32: return "s32";
    case DType::s64: return "s64";
    case DType::u8: return "u8";
  }
  return "?";
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::s32: return 4;
    case DType::s64: return 8;
    case DType::u8: return 1;
  }
  return 0;
}

dnnl::memory::data_type to_dnnl(DType dtype) {
  switch (dtype) {
    case DType::f32: return dnnl::memory::data_type::f32;
    case DType::bf16: return dnnl::memory::data_type::bf16;
    case DType::s32: return dnnl::memory::data_type::s32;
    case DType::u8: return dnnl::memory::data_type::u8;
    case DType::s64:
      // oneDNN 2.6 has no s64: s64 tensors (timesteps) are stored as 8-byte
      // opaque elements and only ever read on the host.
      return dnnl::memory::data_type::undef;
  }
  return dnnl::memory::data_type::undef;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

dnnl::memory::format_tag plain_format(size_t rank) {
  using tag = dnnl::memory::format_tag;
  switch (rank) {
    case 1: return tag::a;
    case 2: return tag::ab;
    case 3: return tag::abc;
    case 4: return tag::abcd;
    case 5: return tag::abcde;
    case 6: return tag::abcdef;
    default: throw std::invalid_argument("tensor rank " + std::to_string(rank) + " is not supported");
  }
}

static dnnl::memory::desc plain_desc(const Shape& shape, DType dtype) {
  if (shape.empty()) throw std::invalid_argument("a tensor needs at least one dimension");
  if (dtype == DType::s64) {
    // Opaque 8-byte elements: two s32 words per element in the last dimension.
    Shape doubled = shape;
    doubled.back() *= 2;
    return dnnl::memory::desc(doubled, dnnl::memory::data_type::s32, plain_format(doubled.size()));
  }
  return dnnl::memory::desc(shape, to_dnnl(dtype), plain_format(shape.size()));
}

Tensor::Tensor(Shape shape, DType dtype, const dnnl::engine& engine)
    : shape_(std::move(shape)), dtype_(dtype), memory_(plain_desc(shape_, dtype_), engine) {}

Tensor::Tensor(Shape shape, DType dtype, dnnl::memory memory)
    : shape_(std::move(shape)), dtype_(dtype), memory_(std::move(memory)) {}

Tensor Tensor::from_vector(Shape shape, const std::vector<float>& values) {
  static const dnnl::engine cpu(dnnl::engine::kind::cpu, 0);
  Tensor t(std::move(shape), DType::f32, cpu);
  if (static_cast<int64_t>(values.size()) != t.numel()) {
    throw std::invalid_argument("from_vector: " + std::to_string(values.size()) + " values for shape " +
                                shape_str(t.shape()));
  }
  auto host = t.map<float>();
  std::memcpy(host.data(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, const dnnl::engine& engine) {
  Tensor t(std::move(shape), dtype, engine);
  auto host = t.map<unsigned char>();
  std::memset(host.data(), 0, t.bytes());
  return t;
}

bool Tensor::on_cpu() const { return memory_ && memory_.get_engine().get_kind() == dnnl::engine::kind::cpu; }

Tensor Tensor::reshaped(Shape shape) const {
  if (shape_numel(shape) != numel()) {
    throw std::invalid_argument("cannot reshape " + shape_str(shape_) + " to " + shape_str(shape));
  }
  dnnl::memory view(plain_desc(shape, dtype_), memory_.get_engine(), memory_.get_data_handle());
  Tensor result(std::move(shape), dtype_, view);
  result.owner_ = owner_ ? owner_ : memory_;
  return result;
}

Tensor Tensor::copy_to(const dnnl::engine& target) const {
  Tensor out(shape_, dtype_, target);
  dnnl::memory src = memory_;
  const auto src_kind = memory_.get_engine().get_kind();
  const auto dst_kind = target.get_kind();
  if (src_kind == dnnl::engine::kind::cpu && dst_kind == dnnl::engine::kind::cpu) {
    // Two CPU engine objects: the reorder belongs to the source's engine.
    dnnl::stream stream(memory_.get_engine());
    dnnl::reorder(src, out.memory_).execute(stream, src, out.memory_);
    stream.wait();
    return out;
  }
  const dnnl::engine& gpu = dst_kind == dnnl::engine::kind::gpu ? target : memory_.get_engine();
  dnnl::stream stream(gpu);
  dnnl::reorder(src, out.memory_).execute(stream, src, out.memory_);
  stream.wait();
  return out;
}

Tensor Tensor::plain_on(const dnnl::engine& target) const {
  if (memory_.get_engine().get_kind() == target.get_kind() && desc() == plain_desc(shape_, dtype_)) return *this;
  return copy_to(target);
}

std::vector<float> Tensor::to_vector() const {
  if (dtype_ != DType::f32) throw std::invalid_argument("to_vector needs an f32 tensor");
  const Tensor plain = plain_on(engine());
  auto host = plain.map<float>();
  return std::vector<float>(host.begin(), host.end());
}

std::vector<int64_t> Tensor::to_int64_vector() const {
  if (dtype_ != DType::s32 && dtype_ != DType::s64) {
    throw std::invalid_argument("to_int64_vector needs an s32 or s64 tensor, got " + dtype_name(dtype_));
  }
  const Tensor plain = plain_on(Device::host()->engine());
  if (dtype_ == DType::s32) {
    auto host = plain.map<int32_t>();
    return std::vector<int64_t>(host.begin(), host.end());
  }
  auto host = plain.map<int64_t>();
  return std::vector<int64_t>(host.begin(), host.end());
}

}  // namespace diffuflow
