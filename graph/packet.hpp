// Packet: what travels on an edge. A sequence number (the step or batch id) and
// named fields. Packets are immutable once sent and shared by pointer; a node
// that changes a field builds a new packet with with(), which shares every
// untouched field with the old one.
//
//   auto out = in->with(kXt, x_t).with(kT, t);   // PacketPtr in, Packet out
//   const Tensor& x0 = in->get(kX0);             // checked against kX0's dtype and rank
//
// Fields are read and written through their declarations (graph/field.hpp);
// the string-keyed calls serve fields named at run time (a writer's `field:`).
#pragma once

#include "graph/field.hpp"
#include "graph/tensor.hpp"

#include <map>
#include <memory>
#include <string>
#include <type_traits>
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

  // The position in the data stream of this packet's first item (sample),
  // counted over the whole run and every process: item i of the packet is at
  // first_item() + i. -1 when the source does not say; item_position() then
  // falls back to seq * count + i. Per-item randomness is keyed by it.
  int64_t first_item() const { return first_item_; }
  Packet& at_item(int64_t first) {
    first_item_ = first;
    return *this;
  }
  int64_t item_position(int64_t i, int64_t count) const {
    return first_item_ >= 0 ? first_item_ + i : seq_ * count + i;
  }

  bool has(const std::string& name) const { return fields_.count(name) != 0; }
  template <typename Field, typename = std::enable_if_t<std::is_base_of_v<FieldSpec, Field>>>
  bool has(const Field& field) const {
    return has(field.name);
  }

  // Typed reads through a field's declaration: a tensor is checked against
  // its dtype and rank (std::invalid_argument naming the field otherwise).
  const Tensor& get(const TensorField& field) const {
    const Tensor& t = tensor(field.name);
    field.check(t);
    return t;
  }
  template <typename T>
  T get(const ScalarField<T>& field) const {
    if constexpr (std::is_same_v<T, double>) return number(field.name);
    else if constexpr (std::is_same_v<T, int64_t>) return integer(field.name);
    else return text(field.name);
  }
  template <typename T>
  std::shared_ptr<const T> get(const PayloadField<T>& field) const {
    return payload<T>(field.name);
  }

  Packet& set(const TensorField& field, Tensor value) {
    field.check(value);
    return set(field.name, std::move(value));
  }
  template <typename T>
  Packet& set(const ScalarField<T>& field, typename ScalarField<T>::value_type value) {
    return set(field.name, FieldValue(std::move(value)));
  }
  template <typename T>
  Packet& set(const PayloadField<T>& field, std::shared_ptr<const T> value) {
    return set(field.name, FieldValue(std::shared_ptr<const Payload>(std::move(value))));
  }
  template <typename Field, typename = std::enable_if_t<std::is_base_of_v<FieldSpec, Field>>>
  Packet& erase(const Field& field) {
    return erase(field.name);
  }

  // A copy of this packet with one declared field set; chain to set several.
  template <typename Field, typename Value, typename = std::enable_if_t<std::is_base_of_v<FieldSpec, Field>>>
  Packet with(const Field& field, Value&& value) const {
    Packet copy = *this;
    copy.set(field, std::forward<Value>(value));
    return copy;
  }
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

  // A copy of this packet with one field, named at run time, set.
  Packet with(const std::string& name, FieldValue value) const {
    Packet copy = *this;
    copy.set(name, std::move(value));
    return copy;
  }

  PacketPtr share() && { return std::make_shared<const Packet>(std::move(*this)); }

 private:
  const FieldValue& get(const std::string& name) const;

  int64_t seq_ = 0;
  int64_t first_item_ = -1;
  std::map<std::string, FieldValue> fields_;
};

}  // namespace diffuflow
