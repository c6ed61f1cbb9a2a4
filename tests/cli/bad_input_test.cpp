// The corpus of malformed pipelines in tests/bad_pipelines: each file says in
// its first lines what the error must say (`# expect:`), where
// (`# expect-location: :line:column`), and whether validation already finds it
// or only running does (`# stage: run`, for data problems). Both `validate`
// and `run` must exit with code 2 and one clear message, without crashing and
// without leaving an output folder behind.
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <algorithm>
#include <sstream>
#include <vector>

using namespace diffuflow::test;
namespace fs = std::filesystem;

namespace {

struct Expectation {
  std::string message;
  std::string location;
  bool at_run = false;
};

Expectation read_expectation(const fs::path& file) {
  Expectation e;
  std::istringstream in(read_file(file));
  std::string line;
  while (std::getline(in, line) && line.rfind("#", 0) == 0) {
    if (line.rfind("# expect: ", 0) == 0) e.message = line.substr(10);
    if (line.rfind("# expect-location: ", 0) == 0) e.location = line.substr(19);
    if (line == "# stage: run") e.at_run = true;
  }
  return e;
}


}  // namespace

TEST_CASE("every malformed pipeline gets exit code 2 and one clear message, from validate and from run") {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(test_dir() / "bad_pipelines"))
    if (entry.path().extension() == ".yaml") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  CHECK(files.size() >= 40);
  TempDir dir;
  for (const auto& file : files) {
    const Expectation expect = read_expectation(file);
    const std::string relative = fs::relative(file, source_dir()).string();
    CAPTURE(relative);
    REQUIRE(!expect.message.empty());

    const auto validated = run_cli("validate " + relative);
    CAPTURE(validated.output);
    if (expect.at_run) {
      CHECK(validated.exit_code == 0);
    } else {
      CHECK(validated.exit_code == 2);
      CHECK(contains(validated.output, expect.message));
      if (!expect.location.empty()) CHECK(contains(validated.output, relative + expect.location));
    }

    const fs::path out = dir / file.stem().string();
    const auto ran = run_cli("run " + relative + " -q --out " + out.string());
    CAPTURE(ran.output);
    CHECK(ran.exit_code == 2);
    CHECK(contains(ran.output, expect.message));
    CHECK(!contains(ran.output, "Segmentation"));
    CHECK(!fs::exists(out));  // nothing left behind that looks like a result
  }
}
