// mnist_loader: batches of MNIST digits from the four standard IDX files
// (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
// t10k-labels-idx1-ubyte), each gzip-compressed (.gz) or raw.
//
// Example config:
//   - name: data
//     type: mnist_loader
//     params: {path: data/mnist, split: train, batch_size: 64, epochs: 0}
//
// out: x0     [N,1,28,28] f32 in [-1,1] (u8/255*2-1) on the host
//      labels [N] s32, the digit of each image
//
// A source: one batch per call, seq = batch index. Every problem with the
// files (missing, wrong magic number, truncated, counts that disagree) is a
// DataError naming the file.
#pragma once

#include "graph/node.hpp"
#include "nodes/common/batching.hpp"
#include "nodes/common/images.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

// The decoded contents of one IDX image file and its label file.
struct IdxDataset {
  int64_t count = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> pixels;  // count * rows * cols, row-major
  std::vector<uint8_t> labels;  // count
};

// Reads and checks an IDX image file / label file (gzip or raw). Throws DataError.
IdxDataset read_idx_images(const std::filesystem::path& file);
std::vector<uint8_t> read_idx_labels(const std::filesystem::path& file);
// Reads a split ("train" or "test") from an MNIST folder; finds each file with
// or without ".gz" and checks that image and label counts agree.
IdxDataset read_mnist_split(const std::filesystem::path& folder, const std::string& split);

class MnistLoader : public Node {
 public:
  DIFFUFLOW_NESTED_ENUM(Split, train, test);

  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, path, "", "folder holding the IDX files (train-images-idx3-ubyte[.gz], ...)",
                    .path().required());
    DIFFUFLOW_PARAM(Split, split, Split::train, "train (60000 images) or test (t10k, 10000 images)");
    DIFFUFLOW_PARAM_GROUP(BatchOptions, batch, BatchOptions{});
    DIFFUFLOW_PARAM(int64_t, limit, 0, "use only the first N images; 0 = all", .at_least(0));
  };

  static NodeContract contract();
  MnistLoader(const NodeConfig& config, RunContext& ctx);
  bool produce(Emitter& out) override;
  bool seek(int64_t packets, int64_t items) override {
    emitted_ = packets;
    batcher_->seek(packets, items);
    return true;
  }

  int64_t size() const { return data_.count; }

 private:
  Params params_;
  IdxDataset data_;
  std::unique_ptr<EpochBatcher> batcher_;
  int64_t emitted_ = 0;
};

}  // namespace diffuflow
