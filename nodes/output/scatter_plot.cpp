#include "nodes/output/scatter_plot.hpp"

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

NodeContract ScatterPlot::contract() {
  NodeContract c;
  c.doc = "Scatter plots of 2-D points ([N,2,1,1]) or of their chains ([N,K,2,1,1]) as PNGs on fixed axes.";
  c.example = "{name: plot, type: scatter_plot, params: {field: sample, layout: points, every: 0, limit: 1.5}}";
  // The rank depends on the layout ([N,2] or [N,2,1,1]; chain [N,K,2,1,1]): checked when plotting.
  c.inputs = {{"in",
               {},
               "<field> [N,2,1,1] f32 (points) or [N,K,2,1,1] f32 (chain)",
               {FieldParam("field", TensorField("", DType::f32, -1, Place::any, "2-D points"))}}};
  c.max_concurrency = 1;
  return c;
}

ScatterPlot::ScatterPlot(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {}

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
