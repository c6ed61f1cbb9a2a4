#include "nodes/data/mnist_images.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/images.hpp"

namespace diffuflow {

void mnist_tensors(const IdxDataset& set, Tensor& images, Tensor& labels) {
  const auto& engine = Device::host()->engine();
  images = Tensor({set.count, 1, set.rows, set.cols}, DType::f32, engine);
  labels = Tensor({set.count}, DType::s32, engine);
  auto pixels = images.map<float>();
  const int64_t total = set.count * set.rows * set.cols;
  for (int64_t i = 0; i < total; ++i) pixels[i] = u8_to_signed_unit(set.pixels[static_cast<size_t>(i)]);
  auto values = labels.map<int32_t>();
  for (int64_t i = 0; i < set.count; ++i) values[i] = set.labels[static_cast<size_t>(i)];
}

ResourceContract MnistImages::contract() {
  ResourceContract c;
  c.kind = kImageSetResourceKind;
  c.doc = "A whole MNIST split in memory (images in [-1,1] and labels), for nodes that need all of a data set at "
          "once: test accuracy, the real images of FID.";
  return c;
}

MnistImages::MnistImages(const ResourceConfig& config, RunContext& ctx) {
  const Params params = config.params_as<Params>();
  IdxDataset data = read_mnist_split(params.path, enum_name(params.split));
  if (params.limit > 0 && params.limit < data.count) {
    data.count = params.limit;
    data.pixels.resize(static_cast<size_t>(data.count * data.rows * data.cols));
    data.labels.resize(static_cast<size_t>(data.count));
  }
  if (data.count == 0) throw DataError(params.path, "the " + enum_name(params.split) + " split holds no images");
  Tensor images, labels;
  mnist_tensors(data, images, labels);
  set(images, labels, "MNIST " + enum_name(params.split) + " split");  // no local folder in files that ship
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_RESOURCE(mnist_images, diffuflow::MnistImages);
