// Packet fields: a field is declared once, as a typed constant that both the
// contract and the processing use, so the name a port promises and the name
// the code reads cannot drift apart, and validation can check what flows
// between two nodes before anything runs.
//
//   inline const TensorField kX0{"x0", DType::f32, 4, Place::any, "[N,C,H,W] images in [-1, 1]"};
//   inline const ScalarField<double> kLoss{"loss", "the batch's mean loss"};
//
//   c.inputs = {{"in", {kX0, kT}, "..."}};        // contract(): what the port reads
//   const Tensor& x0 = packet.get(kX0);           // process(): checked against the declaration
//   out.emit(packet.with(kXt, x_t));
//
// A tensor field declares its dtype, its rank (-1: any) and where it lives:
// Place::host (the node maps it on the host), Place::device (on the
// pipeline's device), Place::any. A reader and a writer of one field must
// agree on kind, dtype and rank; a field read on the host must not be written
// on the device when the pipeline runs on a GPU.
#pragma once

#include "graph/tensor.hpp"

#include <memory>
#include <optional>
#include <string>

namespace diffuflow {

enum class FieldKind { any, tensor, number, integer, text, payload };
enum class Place { any, host, device };

std::string field_kind_name(FieldKind kind);
std::string place_name(Place place);

struct FieldSpec {
  std::string name;
  FieldKind kind = FieldKind::any;
  std::optional<DType> dtype;  // tensors: the element type (empty: any)
  int rank = -1;               // tensors: the number of dimensions (-1: any)
  Place place = Place::any;    // tensors: where the data lives
  std::string doc;

  FieldSpec() = default;
  // A field known only by name: any value (user nodes may declare fields this way).
  FieldSpec(const char* field_name) : name(field_name) {}
  FieldSpec(std::string field_name) : name(std::move(field_name)) {}

  // "f32 tensor of rank 4 on the host", "number", "any value"
  std::string describe() const;
  // Empty when a value written as `writer` may be read as `*this`; else why not.
  std::string mismatch(const FieldSpec& writer, bool device_is_host) const;
};

// A tensor field with a fixed dtype and rank.
struct TensorField : FieldSpec {
  TensorField(std::string field_name, DType field_dtype, int field_rank, Place field_place, std::string field_doc) {
    name = std::move(field_name);
    kind = FieldKind::tensor;
    dtype = field_dtype;
    rank = field_rank;
    place = field_place;
    doc = std::move(field_doc);
  }
  // Throws std::invalid_argument naming the field when `t` does not match the declaration.
  void check(const Tensor& t) const;
};

// A scalar field: double (a number), int64_t (an integer) or std::string (text).
template <typename T>
struct ScalarField : FieldSpec {
  static_assert(std::is_same_v<T, double> || std::is_same_v<T, int64_t> || std::is_same_v<T, std::string>,
                "a scalar field holds a double, an int64_t or a std::string");
  ScalarField(std::string field_name, std::string field_doc) {
    name = std::move(field_name);
    kind = std::is_same_v<T, double> ? FieldKind::number
           : std::is_same_v<T, int64_t> ? FieldKind::integer
                                         : FieldKind::text;
    doc = std::move(field_doc);
  }
  using value_type = T;
};

// A field holding a node-defined payload of type T (derived from Payload).
template <typename T>
struct PayloadField : FieldSpec {
  PayloadField(std::string field_name, std::string field_doc) {
    name = std::move(field_name);
    kind = FieldKind::payload;
    doc = std::move(field_doc);
  }
  using value_type = T;
};

}  // namespace diffuflow
