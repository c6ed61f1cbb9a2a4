#include "nodes/output/image_writer.hpp"

#include "graph/atomic_file.hpp"
#include "graph/registry.hpp"
#include "nodes/common/batching.hpp"
#include "nodes/common/output_files.hpp"

#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace diffuflow {

namespace fs = std::filesystem;

namespace {

const char* layout_name(ImageWriter::Layout layout) {
  switch (layout) {
    case ImageWriter::Layout::grid: return "grid";
    case ImageWriter::Layout::strip: return "strip";
    case ImageWriter::Layout::per_image: return "per_image";
    case ImageWriter::Layout::chain: return "chain";
  }
  return "grid";
}

ImageWriter::Layout parse_layout(const std::string& text) {
  for (auto layout : {ImageWriter::Layout::grid, ImageWriter::Layout::strip, ImageWriter::Layout::per_image,
                      ImageWriter::Layout::chain}) {
    if (text == layout_name(layout)) return layout;
  }
  throw std::invalid_argument("unknown image layout '" + text + "' (valid: grid, strip, per_image, chain)");
}

// Tiles `count` planar images (C,H,W floats each, consecutive in `data`).
cv::Mat tile_images(const float* data, int64_t count, int64_t channels, int64_t height, int64_t width, int nrow,
                    int scale, int gap) {
  if (channels != 1 && channels != 3) {
    throw std::invalid_argument("images need 1 (grey) or 3 (RGB) channels to be written, not " +
                                std::to_string(channels));
  }
  if (count < 1) throw std::invalid_argument("no images to write");
  if (nrow < 1 || scale < 1 || gap < 0) throw std::invalid_argument("nrow and scale must be positive");
  const int64_t columns = std::min<int64_t>(nrow, count);
  const int64_t rows = (count + columns - 1) / columns;
  const int64_t tile_h = height * scale;
  const int64_t tile_w = width * scale;
  const int64_t total_h = rows * tile_h + (rows - 1) * gap;
  const int64_t total_w = columns * tile_w + (columns - 1) * gap;
  if (total_h > 32767 || total_w > 32767) {
    throw std::invalid_argument("the picture would be " + std::to_string(total_w) + "x" + std::to_string(total_h) +
                                " pixels; lower max_images or scale");
  }
  const int cv_type = channels == 1 ? CV_8UC1 : CV_8UC3;
  cv::Mat picture(static_cast<int>(total_h), static_cast<int>(total_w), cv_type, cv::Scalar::all(kImageGapValue));
  const int64_t plane = height * width;
  for (int64_t i = 0; i < count; ++i) {
    const float* image = data + i * channels * plane;
    const int64_t top = (i / columns) * (tile_h + gap);
    const int64_t left = (i % columns) * (tile_w + gap);
    for (int64_t y = 0; y < tile_h; ++y) {
      uint8_t* row = picture.ptr<uint8_t>(static_cast<int>(top + y));
      const int64_t sy = y / scale;
      for (int64_t x = 0; x < tile_w; ++x) {
        const int64_t source = sy * width + x / scale;
        uint8_t* pixel = row + (left + x) * channels;
        if (channels == 1) {
          pixel[0] = signed_unit_to_u8(image[source]);
        } else {  // RGB in the tensor, BGR for OpenCV
          pixel[0] = signed_unit_to_u8(image[2 * plane + source]);
          pixel[1] = signed_unit_to_u8(image[plane + source]);
          pixel[2] = signed_unit_to_u8(image[source]);
        }
      }
    }
  }
  return picture;
}


}  // namespace

cv::Mat tensor_to_image_grid(const Tensor& images, int nrow, int scale, int gap) {
  if (images.rank() != 4 || images.dtype() != DType::f32) {
    throw std::invalid_argument("an image grid needs an f32 [N,C,H,W] tensor, got " + dtype_name(images.dtype()) +
                                " " + shape_str(images.shape()));
  }
  const std::vector<float> values = images.to_vector();
  return tile_images(values.data(), images.dim(0), images.dim(1), images.dim(2), images.dim(3), nrow, scale, gap);
}

void write_png_grid(const Tensor& images, int nrow, int scale, const fs::path& out) {
  write_png_atomic(tensor_to_image_grid(images, nrow, scale), out);
}

void write_png_atomic(const cv::Mat& image, const fs::path& out) {
  std::vector<uint8_t> bytes;
  if (!cv::imencode(".png", image, bytes)) throw std::runtime_error("cannot encode a PNG for " + out.string());
  create_parent_folders(out);
  write_file_atomically(out, std::string(bytes.begin(), bytes.end()));
}

NodeContract ImageWriter::contract() {
  NodeContract c;
  c.doc = "Writes a tensor field as PNG grids, strips, single images or noising/sampling chains.";
  c.example = "{name: samples, type: image_writer, params: {field: x0, layout: grid, every: 100}}";
  c.params = {
      ParamSpec::text("field", "x0", "the packet field to write"),
      ParamSpec::choice("layout", "grid", {"grid", "strip", "per_image", "chain"},
                        "grid | strip (one row) | per_image | chain (field [N,K,C,H,W], a row per image)"),
      ParamSpec::integer("every", 1, "write every N-th step (seq divisible by N)").range(1, 1e12),
      ParamSpec::integer("max_images", 64, "write at most this many images (rows for chain)").range(1, 65536),
      ParamSpec::integer("nrow", 8, "images per row of a grid").range(1, 4096),
      ParamSpec::text("prefix", "", "file name prefix; empty = the layout's name"),
      ParamSpec::integer("scale", 2, "integer enlargement (nearest neighbour)").range(1, 64),
      ParamSpec::text("subdir", "samples", "folder inside the run's output folder"),
  };
  c.inputs = {{"in", {}, "the field named by `field`: [N,C,H,W] (chain: [N,K,C,H,W]) f32 in [-1,1], C = 1 or 3", {"field"}}};
  c.outputs = {};
  return c;
}

ImageWriter::ImageWriter(const NodeConfig& config, RunContext& ctx) : Node(config, ctx) {
  params_.field = config.params.text("field");
  params_.layout = parse_layout(config.params.text("layout"));
  params_.every = config.params.integer("every");
  params_.max_images = config.params.integer("max_images");
  params_.nrow = config.params.integer("nrow");
  params_.prefix = config.params.text("prefix");
  params_.scale = config.params.integer("scale");
  params_.subdir = config.params.text("subdir");
  if (params_.prefix.empty()) params_.prefix = layout_name(params_.layout);
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
                                layout_name(params_.layout) + ", got " + dtype_name(images.dtype()) + " " +
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
