// synthetic_source: built-in images, so a first run needs no download.
//
//   kind: shapes  one disc, square, triangle or ring per image (labels 0..3),
//                 at a random position, size and rotation
//   kind: digits  digit-like strokes 0..9 (labels = the digit) drawn as
//                 polylines with random thickness, slant, size and offset
//
// Example config:
//   - name: data
//     type: synthetic_source
//     params: {kind: digits, size: 28, channels: 1, batch_size: 64, count: 1024, epochs: 0}
//
// out: x0     [N,C,size,size] f32 in [-1,1] on the host (antialiased, drawn with OpenCV)
//      labels [N] s32, the class of each image
//
// Image i of the set depends only on (pipeline seed, kind, size, channels, i),
// never on the node's name or the visiting order; classes are balanced
// (label = i mod classes). Shuffling (on by default) permutes the set per epoch.
#pragma once

#include "graph/node.hpp"
#include "nodes/common/batching.hpp"
#include "nodes/common/images.hpp"

#include <opencv2/core.hpp>

#include <memory>
#include <random>
#include <string>

namespace diffuflow {

DIFFUFLOW_ENUM(SyntheticKind, shapes, digits);
int synthetic_classes(SyntheticKind kind);                     // 4 | 10

// Draws one 8-bit image (size x size, 1 or 3 channels) of class `label` using `rng`.
cv::Mat draw_synthetic_image(SyntheticKind kind, int label, int size, int channels, std::mt19937_64& rng);

class SyntheticSource : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(SyntheticKind, kind, SyntheticKind::shapes,
                    "shapes: disc/square/triangle/ring (labels 0-3); digits: strokes 0-9");
    DIFFUFLOW_PARAM(int, size, 28, "image side in pixels", .range(8, 1024));
    DIFFUFLOW_PARAM(int, channels, 1, "1 = grey on black, 3 = colour", .range(1, 3));
    DIFFUFLOW_PARAM(int64_t, count, 1024, "images per epoch (the set is fixed by the seed)", .range(1, 1e9));
    DIFFUFLOW_PARAM_GROUP(BatchOptions, batch, BatchOptions{});
  };

  static NodeContract contract();
  SyntheticSource(const NodeConfig& config, RunContext& ctx);
  bool produce(Emitter& out) override;
  bool seek(int64_t packets, int64_t items) override {
    emitted_ = packets;
    batcher_->seek(packets, items);
    return true;
  }

  // Image `index` of the set and its label, exactly as produce() emits it.
  cv::Mat image(int64_t index, int32_t& label);

 private:
  Params params_;
  std::unique_ptr<EpochBatcher> batcher_;
  int64_t emitted_ = 0;
};

}  // namespace diffuflow
