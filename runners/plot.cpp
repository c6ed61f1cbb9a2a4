// `diffuflow plot`: columns of a CSV file drawn as lines into a PNG, for
// sweeps measured outside `diffuflow bench` (benchmarks/scaling.sh's thread
// sweep against PyTorch) or several bench CSVs pasted together.
//
//   diffuflow plot scaling.csv --x threads --y diffuflow_f32_forward,torch_f32_forward
//       --out scaling.png [--title T] [--y-label "images/s"] [--categorical]
//
// The CSV has a header row; every other row is numbers (an empty or
// non-numeric cell is a gap in its series; quoted cells are not parsed, so
// text columns cannot be the x axis). A missing file, a missing column, a
// malformed row or an x column without numbers is bad input (exit 2),
// naming file:line where there is one.
#include "graph/errors.hpp"
#include "nodes/common/images.hpp"
#include "nodes/common/plots.hpp"
#include "runners/cli_common.hpp"
#include "runners/command.hpp"

#include <cmath>
#include <fstream>
#include <iostream>
#include <sstream>

namespace diffuflow {

namespace {

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> cells;
  std::string cell;
  std::istringstream in(line);
  while (std::getline(in, cell, ',')) {
    while (!cell.empty() && (cell.back() == '\r' || cell.back() == ' ')) cell.pop_back();
    while (!cell.empty() && cell.front() == ' ') cell.erase(cell.begin());
    cells.push_back(cell);
  }
  if (!line.empty() && line.back() == ',') cells.emplace_back();
  return cells;
}

double number_or_nan(const std::string& cell) {
  if (cell.empty()) return NAN;
  try {
    size_t used = 0;
    const double v = std::stod(cell, &used);
    return used == cell.size() ? v : NAN;
  } catch (const std::exception&) {
    return NAN;
  }
}

struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<double>> rows;
};

Table read_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw DataError(path, "cannot open the CSV file");
  Table t;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty() || line == "\r") continue;
    const auto cells = split_csv_line(line);
    if (t.header.empty()) {
      t.header = cells;
      continue;
    }
    if (cells.size() != t.header.size()) {
      throw DataError(path + ":" + std::to_string(line_no), "row has " + std::to_string(cells.size()) +
                                                                " cells, the header " +
                                                                std::to_string(t.header.size()));
    }
    std::vector<double> row;
    for (const auto& c : cells) row.push_back(number_or_nan(c));
    t.rows.push_back(std::move(row));
  }
  if (t.header.empty()) throw DataError(path, "no header row");
  if (t.rows.empty()) throw DataError(path, "no data rows");
  return t;
}

size_t column(const Table& t, const std::string& name, const std::string& path) {
  for (size_t i = 0; i < t.header.size(); ++i)
    if (t.header[i] == name) return i;
  const std::string near = closest_match(name, t.header);
  throw DataError(path, "no column '" + name + "'" + (near.empty() ? "" : " (did you mean '" + near + "'?)"));
}

std::vector<std::string> split_names(const std::string& text) {
  std::vector<std::string> names;
  std::string name;
  std::istringstream in(text);
  while (std::getline(in, name, ','))
    if (!name.empty()) names.push_back(name);
  return names;
}

OptionTable plot_options() {
  return {OptionSpec::positional("csv", "FILE.csv", "the CSV file (a header row, then numbers)"),
          OptionSpec::text("x", "COLUMN", "the column on the x axis").required(),
          OptionSpec::text("y", "COL1,COL2", "columns to draw, comma-separated (one line each)").required(),
          shared::output().required(),
          OptionSpec::text("title", "T", "the chart's title"),
          OptionSpec::text("y-label", "L", "the y axis name (default: the first y column)"),
          OptionSpec::flag("categorical", "place x values evenly in file order (e.g. 1, 2, 4, 8, 16)")};
}

int run_plot(const ParsedOptions& options) {
  const std::string path = options.text("csv");
  const Table t = read_csv(path);
  const size_t xi = column(t, options.text("x"), path);
  const auto names = split_names(options.text("y"));
  if (names.empty()) throw ConfigError(SourceLocation{"command line", 0, 0, "--y"}, "no column named");
  bool any_x = false;
  for (const auto& row : t.rows) any_x = any_x || std::isfinite(row[xi]);
  if (!any_x) {
    throw DataError(path, "column '" + options.text("x") + "' has no numbers to put on the x axis");
  }
  std::vector<LineSeries> series;
  for (const auto& name : names) {
    const size_t yi = column(t, name, path);
    LineSeries s;
    s.label = name;
    for (const auto& row : t.rows) {
      s.x.push_back(row[xi]);
      s.y.push_back(row[yi]);
    }
    series.push_back(std::move(s));
  }
  LinePlotStyle style;
  style.title = options.has("title") ? options.text("title") : "";
  style.x_label = options.text("x");
  style.y_label = options.has("y-label") && !options.text("y-label").empty() ? options.text("y-label") : names.front();
  style.categorical_x = options.flag("categorical");
  write_png_atomic(draw_line_plot(series, style), options.text("out"));
  std::cout << "wrote " << options.text("out") << " (" << series.size() << " series, " << t.rows.size()
            << " points each)\n";
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(plot, "draw columns of a CSV file as lines (sweeps measured outside bench)", plot_options(),
                           run_plot);

}  // namespace diffuflow
