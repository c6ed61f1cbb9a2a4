// libFuzzer target: the pipeline loader (graph/spec.hpp) on arbitrary YAML text.
#include "fuzz_entry.hpp"

#include <cstdio>
#include <cstdlib>
#include <exception>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    diffuflow::fuzz::pipeline_input(data, size);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parse_pipeline threw an unexpected exception: %s\n", e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "parse_pipeline threw a non-std exception\n");
    std::abort();
  }
  return 0;
}
