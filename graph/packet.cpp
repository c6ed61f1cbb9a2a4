#include "graph/packet.hpp"

#include <stdexcept>

namespace diffuflow {

const FieldValue& Packet::get(const std::string& name) const {
  auto it = fields_.find(name);
  if (it == fields_.end()) {
    std::string present;
    for (const auto& [key, value] : fields_) present += (present.empty() ? "" : ", ") + key;
    throw std::runtime_error("packet " + std::to_string(seq_) + " has no field '" + name + "' (it has: " +
                             (present.empty() ? "nothing" : present) + ")");
  }
  return it->second;
}

template <typename T>
static const T& typed(const FieldValue& value, const std::string& name, const char* type) {
  if (const T* v = std::get_if<T>(&value)) return *v;
  throw std::runtime_error(std::string("packet field '") + name + "' is not a " + type);
}

const Tensor& Packet::tensor(const std::string& name) const { return typed<Tensor>(get(name), name, "tensor"); }
double Packet::number(const std::string& name) const {
  const auto& v = get(name);
  if (const auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  return typed<double>(v, name, "number");
}
int64_t Packet::integer(const std::string& name) const { return typed<int64_t>(get(name), name, "integer"); }
const std::string& Packet::text(const std::string& name) const {
  return typed<std::string>(get(name), name, "string");
}

}  // namespace diffuflow
