// `diffuflow roofline`: the roofline figure of a saved `bench unet
// --breakdown --json` result, for a run that did not draw one (a machine
// without the image libraries, benchmarks/bundle.sh's bundle) or to redraw an
// old one. The memory roof is given (`bench bandwidth` on the result's
// machine); the compute roof is the matmul peak the result measured with its
// median repeat, or --compute-roof.
//
//   diffuflow roofline unet.json --bandwidth 68.6 --out roofline.png [--compute-roof 1056] [--title T]
//
// The title says by default the config, batch, precision, threads and CPU of the result.
//
// A file that is not such a result (not JSON, another bench, no breakdown, a
// sweep) is bad input: one message naming the file, exit 2, nothing written.
#include "graph/errors.hpp"
#include "nodes/common/images.hpp"
#include "runners/bench_measurement.hpp"
#include "runners/bench_roofline.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <vector>

namespace diffuflow {

namespace {

using json = nlohmann::json;

json read_result(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw DataError(path, "cannot open the bench result");
  try {
    return json::parse(in);
  } catch (const json::parse_error& e) {
    throw DataError(path, std::string("not valid JSON: ") + e.what());
  }
}

// The repeat `bench` reported as the median.
const json& median_repeat(const json& repeats) {
  std::vector<double> rates;
  for (const json& r : repeats) rates.push_back(r.at("images_per_s").get<double>());
  return repeats[bench_cli::median_index(rates)];
}

OptionTable roofline_options() {
  return {OptionSpec::positional("result", "RESULT.json", "a `diffuflow bench unet --breakdown --json` result"),
          OptionSpec::number("bandwidth", "GB/s",
                             "the memory roof: `diffuflow bench bandwidth` on the machine that measured the result")
              .range(1e-3, 1e9)
              .required(),
          OptionSpec::number("compute-roof", "GFLOP/s",
                             "the compute roof (default: the matmul peak the result measured with its median repeat)")
              .range(1e-3, 1e12),
          shared::output().required(),
          OptionSpec::text("title", "T", "the chart's title")};
}

int run_roofline(const ParsedOptions& options) {
  const std::string path = options.text("result");
  const std::string out = options.text("out");
  check_png_path(out, "--out");
  const json result = read_result(path);
  json roofline;
  std::string title;
  try {
    if (result.value("bench", "") != "unet") {
      throw DataError(path, "not a `bench unet` result (bench: " + result.value("bench", std::string("none")) + ")");
    }
    const json& rows = result.at("results");
    if (rows.size() != 1) {
      throw DataError(path, "holds " + std::to_string(rows.size()) +
                                " rows (a sweep); a roofline shows one run: measure without --sweep");
    }
    const json& repeats = rows[0].at("repeats");
    if (repeats.empty()) throw DataError(path, "has no repeats");
    const json& repeat = median_repeat(repeats);
    if (!repeat.contains("breakdown") || !repeat.at("breakdown").contains("layers")) {
      throw DataError(path, "has no breakdown: measure with `bench unet --breakdown --json`");
    }
    const double peak = options.has("compute-roof") ? options.number("compute-roof")
                                                    : repeat.at("matmul_peak_gflops_per_s").get<double>();
    if (!(peak > 0)) throw DataError(path, "holds no matmul peak: give one with --compute-roof");
    roofline = unet_roofline(repeat.at("breakdown"), options.number("bandwidth"), peak);
    if (!roofline.contains("forward") && !roofline.contains("forward_backward")) {
      throw DataError(path, "its breakdown timed no pass");
    }
    // A measured intensity or rate is never negative (a layer kind that does
    // no arithmetic has 0): a negative one is a damaged file, not a point.
    for (const char* pass : {"forward", "forward_backward"}) {
      if (!roofline.contains(pass)) continue;
      for (const json& point : roofline.at(pass)) {
        for (const char* key : {"flop_per_byte", "gflops_per_s"}) {
          if (point.at(key).get<double>() < 0) {
            throw DataError(path, std::string("the breakdown's ") + pass + " " + key + " of " +
                                      point.at("name").get<std::string>() + " is negative");
          }
        }
      }
    }
    if (options.has("title")) {
      title = options.text("title");
    } else {
      const json& s = result.at("settings");
      title = roofline_title(s.value("config", std::string("unet-s")), s.at("batch").get<int64_t>(),
                             s.value("precision", std::string("f32")), rows[0].at("threads").get<int64_t>(),
                             result.at("machine").value("cpu_model", std::string("unknown CPU")));
    }
  } catch (const json::exception& e) {
    throw DataError(path, std::string("not a `bench unet` result: ") + e.what());
  }
  print_unet_roofline(roofline, std::cout);
  write_png_atomic(draw_unet_roofline(roofline, title), out);
  std::cout << "wrote " << out << "\n";
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(roofline, "draw the roofline of a saved `bench unet --breakdown --json` result",
                           roofline_options(), run_roofline);

}  // namespace diffuflow
