#include "nodes/output/scatter_plot.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/images.hpp"
#include "nodes/common/plots.hpp"
#include "nodes/common/output_files.hpp"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace diffuflow {

namespace {

ScatterPlot::Layout parse_layout(const std::string& text) {
  if (text == "points") return ScatterPlot::Layout::points;
  if (text == "chain") return ScatterPlot::Layout::chain;
  throw ConfigError(SourceLocation{"", 0, 0, "layout"}, "scatter_plot layout must be points or chain, got '" + text +
                                                            "'");
}

}  // namespace

NodeContract ScatterPlot::contract() {
  NodeContract c;
  c.doc = "Scatter plots of 2-D points ([N,2,1,1]) or of their chains ([N,K,2,1,1]) as PNGs on fixed axes.";
  c.example = "{name: plot, type: scatter_plot, params: {field: sample, layout: points, every: 0, limit: 1.5}}";
  c.params = {ParamSpec::text("field", "x0", "the tensor field holding the points"),
              ParamSpec::choice("layout", "points", {"points", "chain"}, "[N,2,1,1] points or [N,K,2,1,1] chains"),
              ParamSpec::integer("every", 0, "plot every N-th packet on its own (0: only the accumulated plot)")
                  .range(0, 1e9),
              ParamSpec::integer("max_points", 4096, "points (or chains) kept for the final plot").range(1, 1e7),
              ParamSpec::number("limit", 1.5, "axes span [-limit, limit] in x and y").range(1e-6, 1e6),
              ParamSpec::integer("size", 400, "panel size in pixels").range(64, 4096),
              ParamSpec::text("prefix", "scatter", "file name prefix inside the output folder")};
  c.inputs = {{"in", {}, "<field> [N,2,1,1] f32 (points) or [N,K,2,1,1] f32 (chain)", {"field"}}};
  c.max_concurrency = 1;
  return c;
}

ScatterPlot::ScatterPlot(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {
  params_.field = config.params.text("field");
  params_.layout = parse_layout(config.params.text("layout"));
  params_.every = config.params.integer("every");
  params_.max_points = config.params.integer("max_points");
  params_.limit = config.params.number("limit");
  params_.size = config.params.integer("size");
  params_.prefix = config.params.text("prefix");
}

std::filesystem::path ScatterPlot::file_for(int64_t seq) {
  if (ctx().out_dir().empty()) return {};
  if (seq < 0) return ctx().out_dir() / (params_.prefix + ".png");
  return ctx().out_dir() / (params_.prefix + "_" + step_str(seq) + ".png");
}

void ScatterPlot::process(const NodeInput& in, Emitter& out) {
  const Tensor& points = in.packet().tensor(params_.field);
  const bool chain = params_.layout == Layout::chain;
  const size_t want_rank_dims = chain ? 3 : 2;
  const int64_t k = chain && points.rank() >= 3 ? points.dim(1) : 1;
  const int64_t n = points.rank() >= want_rank_dims ? points.dim(0) : 0;
  if (n == 0 || points.dim(want_rank_dims - 1) != 2 || points.numel() != n * k * 2) {
    throw std::invalid_argument("scatter_plot: field '" + params_.field + "' must be " +
                                (chain ? "[N,K,2,1,1]" : "[N,2,1,1]") + ", got " + shape_str(points.shape()));
  }
  const std::vector<float> values = points.to_vector();
  std::lock_guard<std::mutex> lock(mutex_);
  const float limit = static_cast<float>(params_.limit);
  const int size = static_cast<int>(params_.size);
  const bool write_now = params_.every > 0 ? seen_ % params_.every == 0 : (chain && seen_ == 0);
  ++seen_;
  if (write_now) {
    const auto path = file_for(in.seq());
    if (!path.empty()) {
      write_png_atomic(chain ? draw_scatter_chain(values, n, k, limit, size)
                             : draw_scatter(values, limit, size, params_.field + " " + std::to_string(in.seq())),
                       path);
    }
  }
  if (chain) {
    if (chain_k_ != 0 && chain_k_ != k) throw std::invalid_argument("scatter_plot: chains of different lengths");
    chain_k_ = k;
  }
  const int64_t row_values = 2 * k;
  const int64_t room = params_.max_points - static_cast<int64_t>(kept_.size()) / row_values;
  const int64_t take = std::clamp<int64_t>(room, 0, n);
  kept_.insert(kept_.end(), values.begin(), values.begin() + take * row_values);
}

void ScatterPlot::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto path = file_for(-1);
  if (path.empty() || kept_.empty()) return;
  const float limit = static_cast<float>(params_.limit);
  const int size = static_cast<int>(params_.size);
  if (params_.layout == Layout::chain) {
    const int64_t n = static_cast<int64_t>(kept_.size()) / (2 * chain_k_);
    write_png_atomic(draw_scatter_chain(kept_, n, chain_k_, limit, size), path);
  } else {
    write_png_atomic(draw_scatter(kept_, limit, size, params_.field), path);
  }
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(scatter_plot, diffuflow::ScatterPlot);
