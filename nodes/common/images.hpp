// Images: the pixel mapping every loader and writer shares, tiling image
// tensors into one picture, and writing PNG files atomically.
#pragma once

#include "graph/tensor.hpp"

#include <opencv2/core.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace diffuflow {

// Pixel mapping used by every loader and writer: u8 v -> v/255*2-1, and back
// with round(clamp(x/2+0.5, 0, 1)*255).
inline float u8_to_signed_unit(uint8_t v) { return static_cast<float>(v) * (2.0f / 255.0f) - 1.0f; }
uint8_t signed_unit_to_u8(float x);

// Copies an 8-bit image (1 or 3 channels, interleaved, channel order as stored)
// into planar [C,H,W] floats in [-1, 1] starting at `dst`.
void image_to_planar(const cv::Mat& image, float* dst);

constexpr int kImageGap = 2;           // pixels between tiles
constexpr uint8_t kImageGapValue = 128;  // grey, visible against black and white images

// Tiles images [N,C,H,W] f32 in [-1,1] into one 8-bit picture: nrow images per
// row (fewer when N < nrow), each enlarged `scale` times, `gap` pixels apart.
// Returns CV_8UC1 for C = 1 and CV_8UC3 in OpenCV's BGR order for C = 3 (RGB
// in the tensor), ready for cv::imwrite. Throws std::invalid_argument otherwise.
cv::Mat tensor_to_image_grid(const Tensor& images, int nrow, int scale = 1, int gap = kImageGap);

// tensor_to_image_grid written as a PNG at `out` (atomically; parent folders created).
void write_png_grid(const Tensor& images, int nrow, int scale, const std::filesystem::path& out);

// Text stored in a PNG file as tEXt chunks, keyword -> value, the way image
// generators record how an image was made ("parameters" -> "sampler: ddim,
// steps: 50, seed: 0, ..."). Keywords are 1-79 printable Latin-1 characters;
// values are Latin-1 without NUL (std::invalid_argument otherwise).
using PngText = std::vector<std::pair<std::string, std::string>>;

// Encodes `image` as PNG (with `text` as tEXt chunks right after the header)
// into a temporary file next to `out`, then renames it. Throws
// std::runtime_error naming the path when it cannot.
void write_png_atomic(const cv::Mat& image, const std::filesystem::path& out, const PngText& text = {});

// The tEXt chunks of a PNG file, in file order. DataError naming the file when
// it is not a PNG or a chunk is cut short or fails its CRC.
PngText read_png_text(const std::filesystem::path& file);

// Tiles `count` planar images (C,H,W floats each, consecutive in `data`):
// nrow images per row, each enlarged `scale` times, `gap` pixels apart on a
// grey ground. C must be 1 (grey) or 3 (RGB; BGR in the result).
cv::Mat tile_images(const float* data, int64_t count, int64_t channels, int64_t height, int64_t width, int nrow,
                    int scale, int gap);

}  // namespace diffuflow
