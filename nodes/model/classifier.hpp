// classifier: a small CNN image classifier whose last hidden layer is the
// feature vector sample-quality scores (FID, KID) are computed on; declared
// in a pipeline as the `classifier_model` resource (kind "model", so the
// optimiser trains it like any other model; classifier_train computes its loss).
//
// Example config:
//   resources:
//     - name: classifier
//       type: classifier_model
//       params: {channels: [32, 64, 128], groups: 8, classes: 10, weights: data/mnist_classifier.safetensors}
//
// Network (x [N,C,H,W] f32 in [-1,1] -> logits [N,K]), stage i = 0 .. S-1:
//   h = SiLU(GroupNorm(conv3x3(h)))  ->  [N,channels[i],H_i,W_i]   (repeated `depth` times)
//   h = avg_pool2x2(h)               (every stage but the last: 28 -> 14 -> 7)
//   features = mean of h over H, W   [N,F], F = channels[S-1]
//   logits   = head(features)        [N,K]
// Parameters: stages.<i>.<j>.conv.{weight,bias}, stages.<i>.<j>.norm.{weight,bias},
// head.{weight,bias}. Forward and backward are oneDNN primitives recorded in a
// Program (compute/program.hpp) from the U-Net's layers plus the two average
// poolings here, built once per (batch size, training) and pooled.
//
// As a DenoiserModel (what the optimiser and model_forward see) the timestep
// is ignored and the prediction is the logits as [N,K,1,1].
#pragma once

#include "graph/param_table.hpp"
#include "graph/safetensors.hpp"
#include "nodes/model/denoiser_model.hpp"
#include "nodes/model/model_resource.hpp"

#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

// The network's shape (the classifier_model resource's first parameters).
struct ClassifierConfig {
  int64_t in_channels = 1;                      // image channels
  std::vector<int64_t> channels = {32, 64, 128};  // of each stage; the last is the feature size
  int64_t depth = 1;                            // convolutions per stage
  int64_t groups = 8;                           // GroupNorm groups, dividing every stage's channels
  int64_t classes = 10;                         // K

  void validate() const;  // ConfigError naming the key
  std::string to_json() const;
  static ClassifierConfig from_json(const std::string& text, const std::string& source);  // ConfigError
  int64_t feature_dim() const { return channels.back(); }
};

std::vector<ParamSlot> classifier_param_slots(const ClassifierConfig& config);

// --- the loss ---------------------------------------------------------------

// Row-wise softmax of logits [n,k] into probabilities [n,k] (max subtracted first).
void softmax_rows(const float* logits, int64_t n, int64_t k, float* probabilities);

// The mean cross-entropy of logits [n,k] against labels [n] in [0, k):
// mean_i (logsumexp(logits_i) - logits_i[label_i]), in double. With `grad`
// [n,k], writes d loss / d logits = (softmax - onehot) / n; with `correct`,
// counts the rows whose largest logit is the label. A label outside [0, k)
// is std::invalid_argument naming it.
double softmax_cross_entropy(const float* logits, const int32_t* labels, int64_t n, int64_t k, float* grad = nullptr,
                             int64_t* correct = nullptr);

// --- the model --------------------------------------------------------------

class Classifier : public DenoiserModel {
 public:
  Classifier(const ClassifierConfig& config, const dnnl::engine& engine);
  ~Classifier() override;

  std::string kind() const override { return "classifier"; }
  const ClassifierConfig& config() const { return config_; }

  struct Output {
    Tensor logits;    // [N,K] f32 on the model's engine
    Tensor features;  // [N,F] f32 on the model's engine
    std::shared_ptr<const ForwardState> state;  // null unless for_training
  };
  // x: [N,C,H,W] f32 (any engine), H and W at least 2^(stages-1).
  Output classify(const Tensor& x, bool for_training);
  // grad_logits: d loss / d logits [N,K] (or [N,K,1,1]). Adds the parameter
  // gradients into grads(); returns d loss / dx [N,C,H,W].
  Tensor backward(const ForwardState& state, const Tensor& grad_logits) override;
  // DenoiserModel: `t` is ignored; the prediction is the logits [N,K,1,1].
  ForwardResult forward(const Tensor& x, const Tensor& t, bool for_training) override;

  // Features [N,F] and class probabilities [N,K] of many images [N,C,H,W]
  // (host or device), `batch` at a time, on the host. Either output may be null.
  void describe(const Tensor& images, int64_t batch, std::vector<float>* features,
                std::vector<float>* probabilities);

  struct Workspace;
  class Pool;

 private:
  ClassifierConfig config_;
  std::shared_ptr<Pool> pool_;
};

// The accuracy (fraction right) and mean cross-entropy of `model` on labelled
// images [N,C,H,W] and labels [N] s32, `batch` images at a time.
struct ClassifierScore {
  double accuracy = 0;
  double loss = 0;
  int64_t count = 0;
};
ClassifierScore score_classifier(Classifier& model, const Tensor& images, const Tensor& labels, int64_t batch);

class ClassifierResource : public ModelResource {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(int64_t, in_channels, 1, "image channels", .range(1, 4096));
    DIFFUFLOW_PARAM(std::vector<int64_t>, channels, (std::vector<int64_t>{32, 64, 128}),
                    "channels of each stage; the last is the feature size", .range(1, 65536));
    DIFFUFLOW_PARAM(int64_t, depth, 1, "convolutions per stage", .range(1, 16));
    DIFFUFLOW_PARAM(int64_t, groups, 8, "GroupNorm groups (dividing every stage's channels)", .range(1, 4096));
    DIFFUFLOW_PARAM(int64_t, classes, 10, "classes K", .range(2, 100000));
    DIFFUFLOW_PARAM(std::string, weights, "",
                    "optional .safetensors weights (an export or an optimiser checkpoint) to load", .path());
    DIFFUFLOW_PARAM(bool, use_ema, true, "from an optimiser checkpoint, load its EMA weights when it has them");
    DIFFUFLOW_PARAM(int64_t, init_seed, 0, "seed of the random init used when no weights are given",
                    .range(0, 9.0e15));

    ClassifierConfig network() const;
  };

  static ResourceContract contract();
  // The network's shape is valid and a given weights file exists (ConfigError naming the key).
  static void check(const Params& params);
  ClassifierResource(const ResourceConfig& config, RunContext& ctx);

  DenoiserModel& model() override { return *model_; }
  std::string config_json() const override { return model_->config().to_json(); }
  Classifier& classifier() { return *model_; }
  // The weights file loaded ("" when initialised at random).
  const std::string& weights() const { return weights_; }

 private:
  std::shared_ptr<Classifier> model_;
  std::string weights_;
};

// Loads classifier weights (an export or an optimiser checkpoint: its EMA
// weights when `prefer_ema` and present) into `model`; a DataError names `path`.
void load_classifier_weights(Classifier& model, const std::string& path, bool prefer_ema);

// The classifier named by a `.resource(kModelResourceKind)` parameter: a
// ConfigError naming the node and the parameter when it is another kind of model.
std::shared_ptr<ClassifierResource> classifier_resource(RunContext& ctx, const std::string& resource,
                                                        const std::string& node, const std::string& param);

}  // namespace diffuflow
