// safetensors: the checkpoint and weights format shared with the Python
// ecosystem. Layout: u64 little-endian header length N, N bytes of JSON
// (name -> {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
// "__metadata__" of string -> string), then the raw little-endian data.
//
// The reader validates everything before trusting it: header length against
// the file size, JSON syntax, dtypes, shapes against byte counts, offsets
// inside the data area and not overlapping, the file length. Any problem is a
// DataError naming the file and, where there is one, the tensor.
#pragma once

#include "graph/tensor.hpp"

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace diffuflow {

struct SafetensorsEntry {
  std::string dtype;  // "F32", "I64", "I32", "U8", "BF16", ...
  Shape shape;
  std::vector<unsigned char> data;  // raw little-endian bytes
};

class SafetensorsFile {
 public:
  // Reads and validates the whole file. Throws DataError.
  static SafetensorsFile read(const std::filesystem::path& path);
  // The same from the file's bytes already in memory; `name` stands for the
  // path in messages (and in path()).
  static SafetensorsFile parse(const std::string& bytes, const std::string& name);

  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;  // DataError when absent
  std::vector<std::string> names() const;                         // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return path_; }
  // The file a derived set of tensors came from, named in later errors.
  void set_path(const std::filesystem::path& path) { path_ = path; }

  // As float values: F32 as is; I64/I32 converted. Checks the shape when
  // `expected` is non-empty (DataError naming tensor, expected and actual).
  std::vector<float> floats(const std::string& name, const Shape& expected = {}) const;
  std::vector<int64_t> ints(const std::string& name) const;  // I64 or I32
  // As a host f32 tensor.
  Tensor tensor(const std::string& name) const;

  // Building a file to write.
  void add(const std::string& name, std::string dtype, Shape shape, std::vector<unsigned char> data);
  void add_f32(const std::string& name, const Shape& shape, const float* values);
  void add_f32(const std::string& name, const Tensor& tensor);  // any engine; reordered to plain host data
  void add_i64(const std::string& name, const Shape& shape, const std::vector<int64_t>& values);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  // Writes atomically: a temporary file beside `path`, flushed and fsync'ed,
  // then renamed over it. Throws std::runtime_error naming the path on any
  // I/O failure (disk full, unwritable folder); the old file stays intact.
  void write(const std::filesystem::path& path) const;

 private:
  std::filesystem::path path_;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace diffuflow
