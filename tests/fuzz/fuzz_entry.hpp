// The checks behind the fuzz targets, shared with tests/cli/fuzz_regression_test.cpp
// so that every input of tests/fuzz/corpus/ is replayed by the regular ctest too.
//
// Each function feeds one input to a loader and returns normally when the
// loader behaved: it returned a result, or it threw the error type its contract
// names. Any other exception escapes to the caller; a crash, a hang or a
// sanitizer report is caught by the sanitizer or the fuzzer itself.
#pragma once

#include "graph/errors.hpp"
#include "graph/safetensors.hpp"
#include "graph/spec.hpp"

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace diffuflow::fuzz {

// parse_pipeline must return a spec or throw ConfigErrors / ConfigError.
inline void pipeline_input(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const PipelineSpec spec = parse_pipeline(text, "fuzz.yaml");
    (void)spec.resolved_yaml();  // a spec that validated must also print
  } catch (const ConfigErrors&) {
  } catch (const ConfigError&) {
  }
}

// SafetensorsFile::parse must return a valid file or throw DataError; the
// accessors of a valid file must give the values or a DataError.
inline void safetensors_input(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  SafetensorsFile file;
  try {
    file = SafetensorsFile::parse(bytes, "fuzz.safetensors");
  } catch (const DataError&) {
    return;
  }
  for (const std::string& name : file.names()) {
    const SafetensorsEntry& e = file.entry(name);
    // What "valid" promises: dimensions are non-negative and the data holds
    // exactly the elements the shape and dtype call for.
    for (const int64_t d : e.shape) {
      if (d < 0) throw std::logic_error("tensor '" + name + "' accepted with a negative dimension");
    }
    const size_t esize = e.dtype == "F64" || e.dtype == "I64" || e.dtype == "U64"   ? 8
                         : e.dtype == "F32" || e.dtype == "I32" || e.dtype == "U32" ? 4
                         : e.dtype == "F16" || e.dtype == "BF16" || e.dtype == "I16" || e.dtype == "U16" ? 2
                                                                                                        : 1;
    if (static_cast<uint64_t>(shape_numel(e.shape)) * esize != e.data.size()) {
      throw std::logic_error("tensor '" + name + "' accepted with a data size that does not match its shape");
    }
    try {
      (void)file.floats(name);
    } catch (const DataError&) {
    }
    try {
      (void)file.ints(name);
    } catch (const DataError&) {
    }
  }
}

}  // namespace diffuflow::fuzz
