// image_writer: writes a tensor field of the packets it receives as PNG files
// into <out_dir>/<subdir>, every `every`-th step.
//
//   layout: grid       nrow images per row            -> <prefix>_<seq>.png
//   layout: strip      the whole batch in one row     -> <prefix>_<seq>.png
//   layout: per_image  one file per image             -> <prefix>_<seq>_<i>.png
//   layout: chain      field [N,K,C,H,W]: a row per image, its K chain steps
//                      as columns                     -> <prefix>_<seq>.png
//
// Example config:
//   - name: samples
//     type: image_writer
//     params: {field: x0, layout: grid, every: 100, nrow: 8, scale: 2}
//
// in:  <field> [N,C,H,W] (or [N,K,C,H,W] for chain) f32 in [-1,1], C = 1 (grey) or 3 (RGB)
//
// seq is written with 6 digits (grid_000012.png). Pixels map back to bytes as
// round(clamp(x/2+0.5, 0, 1)*255); each image is enlarged `scale` times
// (nearest neighbour) and tiles are kImageGap pixels apart on a grey ground. Files are
// written under a temporary name and renamed, so a reader never sees half a
// PNG. With an empty out_dir (validation, tests) nothing is written.
#pragma once

#include "graph/node.hpp"

#include <filesystem>
#include <string>

namespace diffuflow {

class ImageWriter : public Node {
 public:
  DIFFUFLOW_NESTED_ENUM(Layout, grid, strip, per_image, chain);

  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, field, "x0", "the packet field to write");
    DIFFUFLOW_PARAM(Layout, layout, Layout::grid,
                    "grid | strip (one row) | per_image | chain (field [N,K,C,H,W], a row per image)");
    DIFFUFLOW_PARAM(int64_t, every, 1, "write every N-th step (seq divisible by N)", .range(1, 1e12));
    DIFFUFLOW_PARAM(int64_t, max_images, 64, "write at most this many images (rows for chain)", .range(1, 65536));
    DIFFUFLOW_PARAM(int64_t, nrow, 8, "images per row of a grid", .range(1, 4096));
    DIFFUFLOW_PARAM(std::string, prefix, "", "file name prefix; empty = the layout's name");
    DIFFUFLOW_PARAM(int64_t, scale, 2, "integer enlargement (nearest neighbour)", .range(1, 64));
    DIFFUFLOW_PARAM(std::string, subdir, "samples", "folder inside the run's output folder");
  };

  static NodeContract contract();
  ImageWriter(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;

  // The file a grid, strip or chain of step `seq` goes to (empty without an out_dir).
  std::filesystem::path file_for(int64_t seq);

 private:
  Params params_;
};

}  // namespace diffuflow
