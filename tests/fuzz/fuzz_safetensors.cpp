// libFuzzer target: the safetensors reader (graph/safetensors.hpp) on arbitrary bytes.
#include "fuzz_entry.hpp"

#include <cstdio>
#include <cstdlib>
#include <exception>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    diffuflow::fuzz::safetensors_input(data, size);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "the safetensors reader threw an unexpected exception: %s\n", e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "the safetensors reader threw a non-std exception\n");
    std::abort();
  }
  return 0;
}
