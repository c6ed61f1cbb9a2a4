// `diffuflow bench unet` on unet-tiny, batch 2, one thread, one pass of each
// kind and no warm-up, as the bench tests run it.
#pragma once

#include "test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

namespace diffuflow::test {

// Runs it with `extra` options, writing `dir`/u.json; REQUIREs a zero exit
// and returns what it printed (`output`) and the JSON's results (one entry
// per sweep value).
inline nlohmann::json run_tiny_bench_unet(const std::string& extra, const std::filesystem::path& dir,
                                          std::string& output) {
  const auto result = run_cli("bench unet --config unet-tiny --batch 2 --warmup 0 --steps 1 --repeats 1 --threads 1 " +
                              extra + " --json " + (dir / "u.json").string());
  output = result.output;
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  return nlohmann::json::parse(read_file(dir / "u.json"))["results"];
}

}  // namespace diffuflow::test
