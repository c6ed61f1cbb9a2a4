#include "nodes/output/rank_gather.hpp"

#include "graph/registry.hpp"

#include <cstring>
#include <iostream>
#include <stdexcept>

namespace diffuflow {

namespace {

constexpr int kTag = 0x6761;  // the gather's messages; an empty one says "no more"

void put(std::string& out, const void* data, size_t n) { out.append(static_cast<const char*>(data), n); }
template <typename T>
void put(std::string& out, T value) {
  put(out, &value, sizeof value);
}
void put_text(std::string& out, const std::string& text) {
  put<uint64_t>(out, text.size());
  out += text;
}

class Reader {
 public:
  explicit Reader(const std::string& bytes) : bytes_(bytes) {}
  void take(void* into, size_t n) {
    if (n > bytes_.size() - at_) throw std::runtime_error("rank_gather: a truncated message");
    std::memcpy(into, bytes_.data() + at_, n);
    at_ += n;
  }
  template <typename T>
  T get() {
    T value{};
    take(&value, sizeof value);
    return value;
  }
  std::string text() {
    const uint64_t n = get<uint64_t>();
    std::string out(n <= bytes_.size() - at_ ? static_cast<size_t>(n) : 0, '\0');
    take(out.data(), static_cast<size_t>(n));
    return out;
  }

 private:
  const std::string& bytes_;
  size_t at_ = 0;
};

// Copies a tensor's bytes to or from the host, whatever its element type.
template <typename T>
void copy_bytes(const Tensor& t, void* host, bool to_host) {
  auto mapped = t.map<T>();
  const size_t n = mapped.size() * sizeof(T);
  if (to_host) {
    std::memcpy(host, mapped.data(), n);
  } else {
    std::memcpy(mapped.data(), host, n);
  }
}
void tensor_bytes(const Tensor& t, void* host, bool to_host) {
  switch (dtype_size(t.dtype())) {
    case 1: return copy_bytes<uint8_t>(t, host, to_host);
    case 2: return copy_bytes<uint16_t>(t, host, to_host);
    case 4: return copy_bytes<uint32_t>(t, host, to_host);
    default: return copy_bytes<uint64_t>(t, host, to_host);
  }
}

enum Kind : uint8_t { kTensor, kDouble, kInt, kText };

}  // namespace

NodeContract RankGather::contract() {
  NodeContract c;
  c.doc = "Brings every process's packets to rank 0 (mpirun), so that writers after it write what a single "
          "process would; lets noise_source split its chains between the processes. One process: passes packets on.";
  c.example = "{name: gather, type: rank_gather}";
  c.inputs = {{"in", {}, "any packet: its tensors and numbers travel to rank 0"}};
  c.outputs = {{"out", {}, "on rank 0: every process's packets; nothing on other ranks"}};
  c.input_policy = InputPolicy::any;
  c.max_concurrency = 1;
  return c;
}

RankGather::RankGather(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {
  if (!ctx.world().distributed()) return;
  world_ = ctx.world().duplicate();
  received_.resize(static_cast<size_t>(world_->size()));
  done_.assign(static_cast<size_t>(world_->size()), false);
  ctx.set_results_gathered(true);
}

std::string RankGather::encode(const Packet& packet) {
  std::string out;
  put<int64_t>(out, packet.seq());
  put<int64_t>(out, packet.first_item());
  uint32_t count = 0;
  for (const auto& [name, value] : packet.fields()) {
    if (!std::holds_alternative<std::shared_ptr<const Payload>>(value)) ++count;
  }
  put<uint32_t>(out, count);
  for (const auto& [name, value] : packet.fields()) {
    if (const auto* t = std::get_if<Tensor>(&value)) {
      put_text(out, name);
      put<uint8_t>(out, kTensor);
      put<uint8_t>(out, static_cast<uint8_t>(t->dtype()));
      put<uint32_t>(out, static_cast<uint32_t>(t->shape().size()));
      for (int64_t d : t->shape()) put<int64_t>(out, d);
      const size_t at = out.size();
      out.resize(at + t->bytes());
      tensor_bytes(*t, out.data() + at, true);
    } else if (const auto* d = std::get_if<double>(&value)) {
      put_text(out, name);
      put<uint8_t>(out, kDouble);
      put<double>(out, *d);
    } else if (const auto* i = std::get_if<int64_t>(&value)) {
      put_text(out, name);
      put<uint8_t>(out, kInt);
      put<int64_t>(out, *i);
    } else if (const auto* s = std::get_if<std::string>(&value)) {
      put_text(out, name);
      put<uint8_t>(out, kText);
      put_text(out, *s);
    }
  }
  return out;
}

Packet RankGather::decode(const std::string& bytes, const dnnl::engine& engine) {
  Reader in(bytes);
  Packet packet(in.get<int64_t>());
  packet.at_item(in.get<int64_t>());
  const uint32_t count = in.get<uint32_t>();
  for (uint32_t f = 0; f < count; ++f) {
    const std::string name = in.text();
    switch (in.get<uint8_t>()) {
      case kTensor: {
        const auto dtype = static_cast<DType>(in.get<uint8_t>());
        Shape shape(in.get<uint32_t>());
        for (auto& d : shape) d = in.get<int64_t>();
        Tensor t(shape, dtype, engine);
        std::string data(t.bytes(), '\0');
        in.take(data.data(), data.size());
        tensor_bytes(t, data.data(), false);
        packet.set(name, t);
        break;
      }
      case kDouble: packet.set(name, in.get<double>()); break;
      case kInt: packet.set(name, in.get<int64_t>()); break;
      case kText: packet.set(name, in.text()); break;
      default: throw std::runtime_error("rank_gather: a message with an unknown field kind");
    }
  }
  return packet;
}

void RankGather::receive_one(Emitter* out) {
  int from = 0;
  const std::string bytes = world_->receive(kTag, &from);
  if (bytes.empty()) {
    done_[static_cast<size_t>(from)] = true;
    return;
  }
  Packet packet = decode(bytes, ctx().device().engine());
  received_[static_cast<size_t>(from)].insert(packet.seq());
  if (out != nullptr) {
    out->emit(std::move(packet));
  } else {
    ++dropped_;
  }
}

void RankGather::process(const NodeInput& in, Emitter& out) {
  if (!world_) {
    out.emit(in.ptr());
    return;
  }
  if (world_->rank() != 0) {
    world_->send(encode(in.packet()), 0, kTag);
    return;
  }
  out.emit(in.ptr());
  // The other ranks' packets of this round (seq round * size + r), or their word that they have no more.
  const int64_t size = world_->size();
  const int64_t round = in.seq() / size;
  for (int r = 1; r < size; ++r) {
    const int64_t seq = round * size + r;
    while (!done_[static_cast<size_t>(r)] && received_[static_cast<size_t>(r)].count(seq) == 0) receive_one(&out);
  }
}

void RankGather::finish() {
  if (!world_) return;
  if (world_->rank() != 0) {
    world_->send(std::string(), 0, kTag);
    return;
  }
  for (int r = 1; r < world_->size(); ++r) {
    while (!done_[static_cast<size_t>(r)]) receive_one(nullptr);
  }
  if (dropped_ > 0) {
    std::cerr << "diffuflow: " << name() << ": " << dropped_
              << " packet(s) from other ranks came after this rank had stopped and were not written\n";
  }
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(rank_gather, diffuflow::RankGather);
