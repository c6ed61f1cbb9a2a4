// scatter_plot: draws 2-D point sets (toy data, samples, chains of samples) as
// PNG scatter plots in the output folder, on fixed axes so pictures of
// different steps compare at a glance.
//
//   layout: points  field [N,2,1,1] (or [N,2]): one panel. With every = E > 0,
//                   each E-th packet's points -> <prefix>_<seq>.png; points
//                   also accumulate (up to max_points) -> <prefix>.png at the end.
//   layout: chain   field [N,K,2,1,1]: a row of K panels, column k holding
//                   point k of every chain (the forward or the reverse chain)
//                   -> <prefix>_<seq>.png for every E-th packet (E = 0: the
//                   first), and <prefix>.png at the end from the accumulated rows.
//
// Example config:
//   - name: plot
//     type: scatter_plot
//     params: {field: sample, layout: points, every: 0, max_points: 4096, limit: 1.5}
//
// in: <field> f32 on any engine (read on the host). Files are written under a
// temporary name and renamed; with an empty out_dir nothing is written. Host-only.
#pragma once

#include "graph/node.hpp"

#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

namespace diffuflow {

class ScatterPlot : public Node {
 public:
  DIFFUFLOW_NESTED_ENUM(Layout, points, chain);

  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, field, "x0", "the tensor field holding the points");
    DIFFUFLOW_PARAM(Layout, layout, Layout::points, "[N,2,1,1] points or [N,K,2,1,1] chains");
    DIFFUFLOW_PARAM(int64_t, every, 0, "plot every N-th packet on its own (0: only the accumulated plot)",
                    .range(0, 1e9));
    DIFFUFLOW_PARAM(int64_t, max_points, 4096, "points (or chains) kept for the final plot", .range(1, 1e7));
    DIFFUFLOW_PARAM(double, limit, 1.5, "axes span [-limit, limit] in x and y", .range(1e-6, 1e6));
    DIFFUFLOW_PARAM(int64_t, size, 400, "panel size in pixels", .range(64, 4096));
    DIFFUFLOW_PARAM(std::string, prefix, "scatter", "file name prefix inside the output folder");
  };

  static NodeContract contract();
  ScatterPlot(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;
  void finish() override;

  // <out_dir>/<prefix>_<seq>.png, or <out_dir>/<prefix>.png for seq < 0; empty without an out_dir.
  std::filesystem::path file_for(int64_t seq);

 private:
  Params params_;
  std::mutex mutex_;
  std::vector<float> kept_;  // points: x,y pairs; chain: rows of K x,y pairs
  int64_t chain_k_ = 0;
  int64_t seen_ = 0;
};

}  // namespace diffuflow
