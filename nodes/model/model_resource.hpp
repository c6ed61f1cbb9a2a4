// ModelResource: what every model resource (unet_model, mlp_model) is to the
// nodes that use it. Nodes name a model with a parameter of resource kind
// "model", so any denoiser can be dropped into a pipeline:
//
//   DIFFUFLOW_PARAM(std::string, model, "", "the denoiser to run", .resource(kModelResourceKind));
//   auto& model = ctx().resource_as<ModelResource>(params_.model)->model();
#pragma once

#include "graph/resource.hpp"
#include "nodes/common/class_labels.hpp"
#include "nodes/model/denoiser_model.hpp"

#include <memory>
#include <string>

namespace diffuflow {

constexpr const char* kModelResourceKind = "model";

class ModelResource : public Resource, public ClassEmbedding {
 public:
  virtual DenoiserModel& model() = 0;
  int64_t num_class_embeds() override { return model().num_classes(); }
  // The model's configuration as JSON text, stored in checkpoints so a
  // checkpoint names the network it belongs to.
  virtual std::string config_json() const = 0;

  // The exponential moving average of the weights an optimiser keeps (a flat
  // f32 buffer laid out like model().params()), published so that nodes which
  // sample during training can use it. Null when no optimiser keeps one. The
  // buffer belongs to the optimiser, which clears this in its destructor.
  void set_ema(const dnnl::memory* ema) { ema_ = ema; }
  const dnnl::memory* ema() const { return ema_; }

 private:
  const dnnl::memory* ema_ = nullptr;
};

}  // namespace diffuflow
