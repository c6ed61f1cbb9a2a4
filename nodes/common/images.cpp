#include "nodes/common/images.hpp"

#include "graph/atomic_file.hpp"
#include "nodes/common/output_files.hpp"

#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffuflow {

namespace fs = std::filesystem;

uint8_t signed_unit_to_u8(float x) {
  float unit = x * 0.5f + 0.5f;
  if (!(unit > 0.0f)) unit = 0.0f;  // also maps NaN to black
  if (unit > 1.0f) unit = 1.0f;
  return static_cast<uint8_t>(std::lround(unit * 255.0f));
}

void image_to_planar(const cv::Mat& image, float* dst) {
  if (image.depth() != CV_8U) throw std::invalid_argument("image_to_planar needs an 8-bit image");
  const int channels = image.channels();
  const size_t plane = static_cast<size_t>(image.rows) * static_cast<size_t>(image.cols);
  for (int y = 0; y < image.rows; ++y) {
    const uint8_t* row = image.ptr<uint8_t>(y);
    for (int x = 0; x < image.cols; ++x) {
      const size_t pixel = static_cast<size_t>(y) * static_cast<size_t>(image.cols) + static_cast<size_t>(x);
      for (int c = 0; c < channels; ++c) dst[c * plane + pixel] = u8_to_signed_unit(row[x * channels + c]);
    }
  }
}

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

}  // namespace diffuflow
