// mnist_images: a whole MNIST split in memory as a resource of kind
// "image_set" (nodes/common/image_set.hpp), for nodes that need all of a data
// set at once: a classifier's test accuracy, the real images FID compares with.
//
// Example config (under `resources:`):
//   - name: test_set
//     type: mnist_images
//     params: {path: data/mnist, split: test}
//
// images: [N,1,28,28] f32 in [-1,1] (u8/255*2-1, as mnist_loader); labels: [N] s32.
// The files are read as mnist_loader reads them (read_mnist_split); every
// problem with them is a DataError naming the file.
#pragma once

#include "graph/resource.hpp"
#include "nodes/common/image_set.hpp"
#include "nodes/data/mnist_loader.hpp"

#include <string>

namespace diffuflow {

// An MNIST split as host tensors: images [N,1,rows,cols] f32 in [-1,1] and labels [N] s32.
void mnist_tensors(const IdxDataset& set, Tensor& images, Tensor& labels);

class MnistImages : public ImageSet {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, path, "", "folder holding the IDX files (t10k-images-idx3-ubyte[.gz], ...)",
                    .path().required());
    DIFFUFLOW_PARAM(MnistLoader::Split, split, MnistLoader::Split::test, "train (60000 images) or test (10000)");
    DIFFUFLOW_PARAM(int64_t, limit, 0, "keep only the first N images; 0 = all", .at_least(0));
  };

  static ResourceContract contract();
  MnistImages(const ResourceConfig& config, RunContext& ctx);
};

}  // namespace diffuflow
