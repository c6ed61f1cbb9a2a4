// ImageSet: a whole set of images held in memory, declared once under
// `resources:`, for nodes that look at a data set all at once rather than
// batch by batch: a classifier's test accuracy, the real images that sample
// quality is measured against. Resources of kind "image_set" derive from it
// (mnist_images in nodes/data), so a node names one with
//
//   DIFFUFLOW_PARAM(std::string, reference, "", "the real images", .resource(kImageSetResourceKind));
//   const ImageSet& set = *ctx.resource_as<ImageSet>(params_.reference);
#pragma once

#include "graph/resource.hpp"
#include "graph/tensor.hpp"

#include <string>
#include <utility>

namespace diffuflow {

constexpr const char* kImageSetResourceKind = "image_set";

class ImageSet : public Resource {
 public:
  // [N,C,H,W] f32 in [-1, 1] on the host.
  const Tensor& images() const { return images_; }
  // [N] s32 on the host, the class of each image; empty for an unlabelled set.
  const Tensor& labels() const { return labels_; }
  bool labelled() const { return !labels_.empty(); }
  int64_t size() const { return images_.empty() ? 0 : images_.dim(0); }
  // Where the images came from, in words ("MNIST test split").
  const std::string& description() const { return description_; }

 protected:
  void set(Tensor images, Tensor labels, std::string description) {
    images_ = std::move(images);
    labels_ = std::move(labels);
    description_ = std::move(description);
  }

 private:
  Tensor images_;
  Tensor labels_;
  std::string description_;
};

}  // namespace diffuflow
