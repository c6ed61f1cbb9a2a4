#include "nodes/common/images.hpp"

#include "graph/atomic_file.hpp"
#include "graph/errors.hpp"
#include "nodes/common/output_files.hpp"

#include <opencv2/imgcodecs.hpp>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
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

namespace {

// A PNG file: the 8-byte signature, then chunks of length (4 bytes, big
// endian), type (4), data, and a CRC-32 of type and data (4).
constexpr char kPngSignature[] = "\x89PNG\r\n\x1a\n";
constexpr size_t kSignatureBytes = 8;

void put_u32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

uint32_t get_u32(const std::string& in, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(in[at + i]);
  return v;
}

uint32_t chunk_crc(const std::string& type_and_data) {
  return static_cast<uint32_t>(
      crc32(0L, reinterpret_cast<const Bytef*>(type_and_data.data()), static_cast<uInt>(type_and_data.size())));
}

std::string text_chunk(const std::string& keyword, const std::string& value) {
  const bool keyword_ok = !keyword.empty() && keyword.size() <= 79 &&
                          std::all_of(keyword.begin(), keyword.end(), [](char c) {
                            const auto u = static_cast<unsigned char>(c);
                            return (u >= 32 && u <= 126) || u >= 161;
                          });
  if (!keyword_ok) throw std::invalid_argument("a PNG text keyword has 1-79 printable characters, got '" + keyword + "'");
  if (value.find('\0') != std::string::npos) throw std::invalid_argument("a PNG text value holds no NUL character");
  std::string body = "tEXt" + keyword;
  body.push_back('\0');
  body += value;
  std::string chunk;
  put_u32(chunk, static_cast<uint32_t>(body.size() - 4));
  chunk += body;
  put_u32(chunk, chunk_crc(body));
  return chunk;
}

}  // namespace

void write_png_atomic(const cv::Mat& image, const fs::path& out, const PngText& text) {
  std::vector<uint8_t> encoded;
  if (!cv::imencode(".png", image, encoded)) throw std::runtime_error("cannot encode a PNG for " + out.string());
  std::string bytes(encoded.begin(), encoded.end());
  if (!text.empty()) {
    // After the signature and the IHDR chunk, which a PNG must start with.
    const size_t after_header = kSignatureBytes + 12 + get_u32(bytes, kSignatureBytes);
    std::string chunks;
    for (const auto& [keyword, value] : text) chunks += text_chunk(keyword, value);
    bytes.insert(after_header, chunks);
  }
  create_parent_folders(out);
  write_file_atomically(out, bytes);
}

PngText read_png_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw DataError(file.string(), "cannot open the file");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.compare(0, kSignatureBytes, std::string(kPngSignature, kSignatureBytes)) != 0)
    throw DataError(file.string(), "not a PNG file (no PNG signature)");
  PngText text;
  for (size_t at = kSignatureBytes; at < bytes.size();) {
    if (bytes.size() - at < 12) throw DataError(file.string(), "a PNG chunk is cut short at byte " + std::to_string(at));
    const uint32_t length = get_u32(bytes, at);
    if (bytes.size() - at - 12 < length)
      throw DataError(file.string(), "a PNG chunk is cut short at byte " + std::to_string(at));
    const std::string body = bytes.substr(at + 4, 4 + static_cast<size_t>(length));
    if (chunk_crc(body) != get_u32(bytes, at + 8 + length))
      throw DataError(file.string(), "the PNG chunk at byte " + std::to_string(at) + " fails its CRC");
    if (body.compare(0, 4, "tEXt") == 0) {
      const size_t nul = body.find('\0', 4);
      if (nul == std::string::npos) throw DataError(file.string(), "a PNG text chunk has no keyword separator");
      text.emplace_back(body.substr(4, nul - 4), body.substr(nul + 1));
    }
    if (body.compare(0, 4, "IEND") == 0) break;
    at += 12 + length;
  }
  return text;
}

}  // namespace diffuflow
