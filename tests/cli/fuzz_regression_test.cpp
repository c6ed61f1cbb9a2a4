// Replays every input of tests/fuzz/corpus/ (fuzzer seeds and the inputs that
// once crashed a loader) through the fuzz targets' checks, without libFuzzer:
// the regular ctest, and the ASan build of scripts/sanitize.sh, guard them.
#include "fuzz/fuzz_entry.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

using namespace diffuflow::test;
namespace fs = std::filesystem;

namespace {

std::vector<fs::path> corpus(const std::string& target) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(test_dir() / "fuzz" / "corpus" / target)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

template <typename Check>
void replay(const std::string& target, Check check) {
  const auto files = corpus(target);
  REQUIRE(!files.empty());
  for (const fs::path& file : files) {
    CAPTURE(file.filename().string());
    const std::string bytes = read_file(file);
    std::string unexpected;
    try {
      check(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    } catch (const std::exception& e) {
      unexpected = e.what();
    } catch (...) {
      unexpected = "a non-std exception";
    }
    CHECK_MESSAGE(unexpected.empty(), "unexpected exception: " << unexpected);
  }
}

}  // namespace

TEST_CASE("fuzz corpus: the pipeline loader returns or throws ConfigErrors on every input") {
  replay("fuzz_pipeline", diffuflow::fuzz::pipeline_input);
}

TEST_CASE("fuzz corpus: the safetensors reader returns or throws DataError on every input") {
  replay("fuzz_safetensors", diffuflow::fuzz::safetensors_input);
}
