#include "graph/safetensors.hpp"

#include "graph/atomic_file.hpp"

#include "graph/device.hpp"
#include "graph/errors.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <stdexcept>

namespace diffuflow {

namespace {

// Largest header accepted: real headers are a few hundred KiB at most; a huge
// length is a sign of a garbage or non-safetensors file.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;

size_t element_size(const std::string& dtype) {
  static const std::map<std::string, size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
      {"I16", 2}, {"I8", 1},  {"U64", 8}, {"U32", 4},  {"U16", 2}, {"U8", 1}, {"BOOL", 1}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

uint64_t read_u64_le(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string u64_le(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

}  // namespace

SafetensorsFile SafetensorsFile::read(const std::filesystem::path& path) {
  const std::string where = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(where, "cannot open safetensors file (" + std::string(std::strerror(errno)) + ")");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw DataError(where, "read error");
  SafetensorsFile file = parse(bytes, where);
  file.path_ = path;
  return file;
}

SafetensorsFile SafetensorsFile::parse(const std::string& bytes, const std::string& where) {
  if (bytes.size() < 8) {
    throw DataError(where, "not a safetensors file: " + std::to_string(bytes.size()) +
                               " bytes, shorter than the 8-byte header length");
  }
  const auto* raw = reinterpret_cast<const unsigned char*>(bytes.data());
  const uint64_t header_len = read_u64_le(raw);
  if (header_len > kMaxHeaderBytes || header_len > bytes.size() - 8) {
    throw DataError(where, "header length " + std::to_string(header_len) + " does not fit in a file of " +
                               std::to_string(bytes.size()) + " bytes (truncated or not a safetensors file)");
  }
  const std::string header_text = bytes.substr(8, header_len);
  const size_t data_begin = 8 + header_len;
  const size_t data_size = bytes.size() - data_begin;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_text);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(where, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw DataError(where, "header is not a JSON object");

  SafetensorsFile file;
  file.path_ = where;
  struct Span {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& value = it.value();
    if (name == "__metadata__") {
      if (!value.is_object()) throw DataError(where, "__metadata__ is not an object");
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string()) throw DataError(where, "__metadata__ value '" + m.key() + "' is not a string");
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string what = "tensor '" + name + "': ";
    if (!value.is_object()) throw DataError(where, what + "entry is not an object");
    if (!value.contains("dtype") || !value["dtype"].is_string())
      throw DataError(where, what + "missing or non-string dtype");
    if (!value.contains("shape") || !value["shape"].is_array()) throw DataError(where, what + "missing shape");
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array() || value["data_offsets"].size() != 2)
      throw DataError(where, what + "data_offsets must be [begin, end]");

    SafetensorsEntry entry;
    entry.dtype = value["dtype"].get<std::string>();
    const size_t esize = element_size(entry.dtype);
    if (esize == 0) throw DataError(where, what + "unknown dtype '" + entry.dtype + "'");
    uint64_t count = 1;
    for (const auto& d : value["shape"]) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
        throw DataError(where, what + "shape has a non-integer or negative dimension");
      const uint64_t dim = d.get<uint64_t>();
      // A dimension must fit the int64 of Shape even where an earlier 0 keeps the count at 0.
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (dim != 0 && count > std::numeric_limits<uint64_t>::max() / 8 / dim))
        throw DataError(where, what + "shape is too large");
      count *= dim;
      entry.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& offsets = value["data_offsets"];
    for (const auto& o : offsets) {
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0))
        throw DataError(where, what + "data_offsets must be non-negative integers");
    }
    const uint64_t begin = offsets[0].get<uint64_t>();
    const uint64_t end = offsets[1].get<uint64_t>();
    if (end < begin) throw DataError(where, what + "data_offsets end before begin");
    if (end > data_size) {
      throw DataError(where, what + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                 "] run past the data area of " + std::to_string(data_size) +
                                 " bytes (truncated file?)");
    }
    if (end - begin != count * esize) {
      throw DataError(where, what + "shape " + shape_str(entry.shape) + " of " + entry.dtype + " needs " +
                                 std::to_string(count * esize) + " bytes, data_offsets give " +
                                 std::to_string(end - begin));
    }
    entry.data.assign(raw + data_begin + begin, raw + data_begin + end);
    spans.push_back({begin, end, name});
    file.entries_.emplace(name, std::move(entry));
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].begin < spans[i - 1].end) {
      throw DataError(where, "tensors '" + spans[i - 1].name + "' and '" + spans[i].name + "' overlap");
    }
  }
  return file;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    std::vector<std::string> all = names();
    const std::string near = closest_match(name, all);
    throw DataError(path_.string(), "no tensor named '" + name + "'" +
                                        (near.empty() ? "" : " (did you mean '" + near + "'?)"));
  }
  return it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

std::vector<float> SafetensorsFile::floats(const std::string& name, const Shape& expected) const {
  const SafetensorsEntry& e = entry(name);
  if (!expected.empty() && expected != e.shape) {
    throw DataError(path_.string(), "tensor '" + name + "' has shape " + shape_str(e.shape) + ", expected " +
                                        shape_str(expected));
  }
  const size_t count = static_cast<size_t>(shape_numel(e.shape));
  std::vector<float> out(count);
  // An empty tensor has no data buffer: memcpy must not see its null pointer.
  if (e.dtype == "F32") {
    if (count) std::memcpy(out.data(), e.data.data(), count * sizeof(float));
  } else if (e.dtype == "I64" || e.dtype == "I32") {
    const auto ints_v = ints(name);
    for (size_t i = 0; i < count; ++i) out[i] = static_cast<float>(ints_v[i]);
  } else {
    throw DataError(path_.string(), "tensor '" + name + "' has dtype " + e.dtype + ", expected F32, I64 or I32");
  }
  return out;
}

std::vector<int64_t> SafetensorsFile::ints(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const size_t count = static_cast<size_t>(shape_numel(e.shape));
  std::vector<int64_t> out(count);
  if (e.dtype == "I64") {
    if (count) std::memcpy(out.data(), e.data.data(), count * sizeof(int64_t));
  } else if (e.dtype == "I32") {
    std::vector<int32_t> tmp(count);
    if (count) std::memcpy(tmp.data(), e.data.data(), count * sizeof(int32_t));
    std::copy(tmp.begin(), tmp.end(), out.begin());
  } else {
    throw DataError(path_.string(), "tensor '" + name + "' has dtype " + e.dtype + ", expected I64 or I32");
  }
  return out;
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  Shape shape = e.shape.empty() ? Shape{1} : e.shape;
  return Tensor::from_vector(shape, floats(name));
}

void SafetensorsFile::add(const std::string& name, std::string dtype, Shape shape, std::vector<unsigned char> data) {
  const size_t esize = element_size(dtype);
  if (esize == 0) throw std::invalid_argument("safetensors: unknown dtype '" + dtype + "' for '" + name + "'");
  if (name == "__metadata__") throw std::invalid_argument("safetensors: '__metadata__' is reserved");
  if (static_cast<size_t>(shape_numel(shape)) * esize != data.size()) {
    throw std::invalid_argument("safetensors: tensor '" + name + "' of shape " + shape_str(shape) + " needs " +
                                std::to_string(shape_numel(shape) * esize) + " bytes, got " +
                                std::to_string(data.size()));
  }
  entries_[name] = SafetensorsEntry{std::move(dtype), std::move(shape), std::move(data)};
}

void SafetensorsFile::add_f32(const std::string& name, const Shape& shape, const float* values) {
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * sizeof(float);
  std::vector<unsigned char> data(bytes);
  if (bytes) std::memcpy(data.data(), values, bytes);
  add(name, "F32", shape, std::move(data));
}

void SafetensorsFile::add_f32(const std::string& name, const Tensor& tensor) {
  if (tensor.dtype() != DType::f32) throw std::invalid_argument("safetensors: add_f32 needs an f32 tensor: " + name);
  const std::vector<float> values = tensor.on_cpu() ? tensor.to_vector()
                                                    : tensor.copy_to(Device::host()->engine()).to_vector();
  add_f32(name, tensor.shape(), values.data());
}

void SafetensorsFile::add_i64(const std::string& name, const Shape& shape, const std::vector<int64_t>& values) {
  std::vector<unsigned char> data(values.size() * sizeof(int64_t));
  if (!values.empty()) std::memcpy(data.data(), values.data(), data.size());
  add(name, "I64", shape, std::move(data));
}

void SafetensorsFile::write(const std::filesystem::path& path) const {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata_.empty()) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const auto& [name, e] : entries_) {  // std::map: sorted-name order
    header[name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.data.size()}}};
    offset += e.data.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data starts 8-byte aligned
  std::string bytes = u64_le(text.size());
  bytes.reserve(8 + text.size() + offset);
  bytes += text;
  for (const auto& [name, e] : entries_) bytes.append(reinterpret_cast<const char*>(e.data.data()), e.data.size());
  write_file_atomically(path, bytes);
}

}  // namespace diffuflow
