// Packet: what travels on an edge. A sequence number (the step or batch id) and
// named fields. Packets are immutable once sent and shared by pointer; a node
// that changes a field builds a new packet with with(), which shares every
// untouched field with the old one.
//
//   auto out = in->with("x_t", x_t).with("t", t);   // PacketPtr in, Packet out
#pragma once

#include "graph/tensor.hpp"

#include <map>
#include <memory>
#include <string>
#include <variant>

namespace diffuflow {

// Base class for opaque, node-defined payloads (for example the activations a
// model's forward pass saves for its backward pass).
class Payload {
 public:
  virtual ~Payload() = default;
};

using FieldValue = std::variant<Tensor, double, int64_t, std::string, std::shared_ptr<const Payload>>;

class Packet;
using PacketPtr = std::shared_ptr<const Packet>;

class Packet {
 public:
  Packet() = default;
  explicit Packet(int64_t seq) : seq_(seq) {}

  int64_t seq() const { return seq_; }
  Packet& set_seq(int64_t seq) {
    seq_ = seq;
    return *this;
  }

  bool has(const std::string& name) const { return fields_.count(name) != 0; }
  const std::map<std::string, FieldValue>& fields() const { return fields_; }

  // Typed reads; throw std::runtime_error naming the field when absent or of another type.
  const Tensor& tensor(const std::string& name) const;
  double number(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  const std::string& text(const std::string& name) const;
  template <typename T>
  std::shared_ptr<const T> payload(const std::string& name) const {
    auto p = std::dynamic_pointer_cast<const T>(std::get<std::shared_ptr<const Payload>>(get(name)));
    if (!p) throw std::runtime_error("packet field '" + name + "' holds another payload type");
    return p;
  }

  Packet& set(const std::string& name, FieldValue value) {
    fields_[name] = std::move(value);
    return *this;
  }
  Packet& erase(const std::string& name) {
    fields_.erase(name);
    return *this;
  }

  // A copy of this packet with one field set; chain to set several.
  Packet with(const std::string& name, FieldValue value) const {
    Packet copy = *this;
    copy.set(name, std::move(value));
    return copy;
  }

  PacketPtr share() && { return std::make_shared<const Packet>(std::move(*this)); }

 private:
  const FieldValue& get(const std::string& name) const;

  int64_t seq_ = 0;
  std::map<std::string, FieldValue> fields_;
};

}  // namespace diffuflow
