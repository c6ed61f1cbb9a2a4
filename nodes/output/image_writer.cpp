#include "nodes/output/image_writer.hpp"

#include "graph/atomic_file.hpp"
#include "graph/registry.hpp"
#include "nodes/common/images.hpp"
#include "nodes/common/output_files.hpp"

#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace diffuflow {

namespace fs = std::filesystem;

NodeContract ImageWriter::contract() {
  NodeContract c;
  c.doc = "Writes a tensor field as PNG grids, strips, single images or noising/sampling chains.";
  c.example = "{name: samples, type: image_writer, params: {field: x0, layout: grid, every: 100}}";
  // The rank depends on the layout (4, or 5 for chain): declared as any rank, checked when writing.
  c.inputs = {{"in",
               {},
               "the field named by `field`: [N,C,H,W] (chain: [N,K,C,H,W]) f32 in [-1,1], C = 1 or 3",
               {FieldParam("field", TensorField("", DType::f32, -1, Place::any, "images in [-1, 1]"))}}};
  c.outputs = {};
  return c;
}

ImageWriter::ImageWriter(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  if (params_.prefix.empty()) params_.prefix = enum_name(params_.layout);
  if (params_.field.empty()) throw ConfigError(SourceLocation{}, "node '" + name() + "': field must not be empty");
  check_output_subdir(name(), params_.subdir);
}

fs::path ImageWriter::file_for(int64_t seq) {
  if (ctx().out_dir().empty()) return {};
  return ctx().out_dir() / params_.subdir / (params_.prefix + "_" + step_str(seq) + ".png");
}

void ImageWriter::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  const int64_t seq = packet.seq();
  if (ctx().out_dir().empty() || seq % params_.every != 0) return;

  const Tensor& images = packet.tensor(params_.field);
  const size_t rank = params_.layout == Layout::chain ? 5 : 4;
  if (images.rank() != rank || images.dtype() != DType::f32) {
    throw std::invalid_argument("image_writer: field '" + params_.field + "' must be an f32 " +
                                (rank == 5 ? "[N,K,C,H,W]" : "[N,C,H,W]") + " tensor for layout " +
                                enum_name(params_.layout) + ", got " + dtype_name(images.dtype()) + " " +
                                shape_str(images.shape()));
  }
  const std::vector<float> values = images.to_vector();
  const int64_t n = std::min(images.dim(0), params_.max_images);
  const int scale = static_cast<int>(params_.scale);

  switch (params_.layout) {
    case Layout::grid:
    case Layout::strip: {
      const int nrow = params_.layout == Layout::strip ? static_cast<int>(n) : static_cast<int>(params_.nrow);
      write_png_atomic(tile_images(values.data(), n, images.dim(1), images.dim(2), images.dim(3), nrow, scale,
                                   kImageGap),
                       file_for(seq));
      break;
    }
    case Layout::per_image: {
      const int64_t per_image = images.numel() / images.dim(0);
      const fs::path folder = ctx().out_dir() / params_.subdir;
      for (int64_t i = 0; i < n; ++i) {
        write_png_atomic(tile_images(values.data() + i * per_image, 1, images.dim(1), images.dim(2), images.dim(3),
                                     1, scale, kImageGap),
                         folder / (params_.prefix + "_" + step_str(seq) + "_" + std::to_string(i) + ".png"));
      }
      break;
    }
    case Layout::chain: {
      const int64_t steps = images.dim(1);
      write_png_atomic(tile_images(values.data(), n * steps, images.dim(2), images.dim(3), images.dim(4),
                                   static_cast<int>(steps), scale, kImageGap),
                       file_for(seq));
      break;
    }
  }
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(image_writer, diffuflow::ImageWriter);
