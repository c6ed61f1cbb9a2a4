// image_folder_loader: batches from a folder of PNG/JPEG images (read with
// OpenCV), each resized so its shorter side is `size` and centre-cropped to
// size x size.
//
// Example config:
//   - name: data
//     type: image_folder_loader
//     params: {path: data/faces, size: 32, channels: 3, batch_size: 64, on_error: skip}
//
// out: x0     [N,C,size,size] f32 in [-1,1], channels RGB (C=3) or grey (C=1), host
//      labels [N] s32: with class subfolders (every image lies in a subfolder of
//             `path`) the index of its top-level subfolder in sorted order, else 0
//
// All images are decoded, resized and kept as bytes when the node is created,
// so a corrupt file is reported before the run starts: by path, as a warning
// (on_error: skip) or as a DataError (on_error: fail). A folder without images
// is a DataError.
#pragma once

#include "graph/node.hpp"
#include "nodes/common/batching.hpp"
#include "nodes/common/images.hpp"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

// Image files under `root` (extensions png, jpg, jpeg, bmp; any case), sorted by path.
std::vector<std::filesystem::path> list_image_files(const std::filesystem::path& root, bool recursive);

// Resizes so the shorter side is `size` (area filter when shrinking, linear
// when enlarging), then crops the centre size x size.
cv::Mat resize_and_centre_crop(const cv::Mat& image, int size);

class ImageFolderLoader : public Node {
 public:
  DIFFUFLOW_NESTED_ENUM(OnError, skip, fail);

  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, path, "", "folder of images (optionally one subfolder per class)", .path().required());
    DIFFUFLOW_PARAM(bool, recursive, true, "also read images in subfolders");
    DIFFUFLOW_PARAM(int, size, 32, "output side: shorter side resized to it, then a centre crop", .range(1, 4096));
    DIFFUFLOW_PARAM(int, channels, 3, "1 = greyscale, 3 = RGB", .range(1, 3));
    DIFFUFLOW_PARAM_GROUP(BatchOptions, batch, BatchOptions{});
    DIFFUFLOW_PARAM(OnError, on_error, OnError::skip, "an unreadable image: skip it with a warning, or fail the run");
  };

  static NodeContract contract();
  ImageFolderLoader(const NodeConfig& config, RunContext& ctx);
  bool produce(Emitter& out) override;
  bool seek(int64_t packets, int64_t items) override {
    emitted_ = packets;
    batcher_->seek(packets, items);
    return true;
  }

  int64_t size() const { return static_cast<int64_t>(labels_.size()); }
  const std::vector<std::string>& class_names() const { return class_names_; }

 private:
  Params params_;
  std::vector<uint8_t> pixels_;  // size() images of size*size*channels, interleaved (RGB order)
  std::vector<int32_t> labels_;
  std::vector<std::string> class_names_;
  std::unique_ptr<EpochBatcher> batcher_;
  int64_t emitted_ = 0;
};

}  // namespace diffuflow
