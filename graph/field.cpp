#include "graph/field.hpp"

#include <stdexcept>

namespace diffuflow {

std::string field_kind_name(FieldKind kind) {
  switch (kind) {
    case FieldKind::any: return "any value";
    case FieldKind::tensor: return "tensor";
    case FieldKind::number: return "number";
    case FieldKind::integer: return "integer";
    case FieldKind::text: return "string";
    case FieldKind::payload: return "payload";
  }
  return "?";
}

std::string place_name(Place place) {
  switch (place) {
    case Place::any: return "anywhere";
    case Place::host: return "on the host";
    case Place::device: return "on the device";
  }
  return "?";
}

std::string FieldSpec::describe() const {
  if (kind != FieldKind::tensor) return field_kind_name(kind);
  std::string text = dtype ? dtype_name(*dtype) + " tensor" : "tensor";
  if (rank >= 0) text += " of rank " + std::to_string(rank);
  if (place != Place::any) text += " " + place_name(place);
  return text;
}

std::string FieldSpec::mismatch(const FieldSpec& writer, bool device_is_host) const {
  if (kind == FieldKind::any || writer.kind == FieldKind::any) return "";
  const bool as_number = kind == FieldKind::number && writer.kind == FieldKind::integer;  // integers read as numbers
  if (kind != writer.kind && !as_number) return "read as " + describe() + ", written as " + writer.describe();
  if (kind != FieldKind::tensor) return "";
  if (dtype && writer.dtype && *dtype != *writer.dtype)
    return "read as " + dtype_name(*dtype) + ", written as " + dtype_name(*writer.dtype);
  if (rank >= 0 && writer.rank >= 0 && rank != writer.rank)
    return "read with rank " + std::to_string(rank) + ", written with rank " + std::to_string(writer.rank);
  if (!device_is_host && place == Place::host && writer.place == Place::device)
    return "read on the host, written on the device";
  return "";
}

void TensorField::check(const Tensor& t) const {
  const bool dtype_ok = !dtype || t.dtype() == *dtype;
  const bool rank_ok = rank < 0 || static_cast<int>(t.rank()) == rank;
  if (dtype_ok && rank_ok) return;
  throw std::invalid_argument("field '" + name + "'" + (doc.empty() ? "" : " (" + doc + ")") + ": expected " +
                              describe() + ", got " + dtype_name(t.dtype()) + " " + shape_str(t.shape()));
}

}  // namespace diffuflow
