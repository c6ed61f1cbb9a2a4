#include "nodes/model/classifier_train.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "graph/safetensors.hpp"
#include "nodes/common/fields.hpp"

#include <cstdio>
#include <filesystem>

namespace diffuflow {

namespace {

// The optimiser's EMA weights in the model's parameters for as long as it
// lives; the raw weights back (bitwise) when it goes. No EMA: nothing happens.
class WithEmaWeights {
 public:
  WithEmaWeights(DenoiserModel& model, const dnnl::memory* ema) : model_(model) {
    if (!ema) return;
    saved_ = dnnl::memory(model_.params().get_desc(), model_.engine());
    model_.copy_flat(model_.params(), saved_);
    model_.copy_flat(*ema, model_.params());
  }
  ~WithEmaWeights() {
    if (saved_) model_.copy_flat(saved_, model_.params());
  }
  WithEmaWeights(const WithEmaWeights&) = delete;
  WithEmaWeights& operator=(const WithEmaWeights&) = delete;

 private:
  DenoiserModel& model_;
  dnnl::memory saved_;
};

}  // namespace

NodeContract ClassifierTrain::contract() {
  NodeContract c;
  c.doc = "Forward, softmax cross-entropy and backward of a classifier_model on a labelled batch (the optimiser "
          "applies the gradients); test accuracy on a labelled image set; exports the final weights.";
  c.example = "{name: train, type: classifier_train, params: {model: classifier, test_set: test_set, test_every: "
              "1000, export_file: mnist_classifier.safetensors}}";
  c.inputs = {{"in", {fields::kX0, fields::kLabels}, "x0 [N,C,H,W] f32 in [-1,1]; labels [N] s32 (host)"}};
  c.outputs = {{"out", {fields::kGradsReady, fields::kLoss},
                "grads_ready: the model's gradients hold this batch; loss (double): mean cross-entropy"}};
  c.host_only = false;
  c.max_concurrency = 1;  // gradients accumulate into one buffer
  return c;
}

ClassifierTrain::ClassifierTrain(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  resource_ = classifier_resource(ctx, params_.model, name(), "model");
  test_set_ = ctx.resource_as<ImageSet>(params_.test_set);
  if (!test_set_->labelled()) {
    throw ConfigError(SourceLocation{"", 0, 0, "test_set"},
                      "node '" + name() + "': test_set '" + params_.test_set + "' has no labels");
  }
  if (!params_.export_file.empty()) check_relative_file(params_.export_file);
}

void ClassifierTrain::check_relative_file(const std::string& file) const {
  const std::filesystem::path path(file);
  bool escapes = path.is_absolute() || !path.has_filename();
  for (const auto& part : path) escapes = escapes || part == "..";
  if (escapes) {
    throw ConfigError(SourceLocation{"", 0, 0, "export_file"},
                      "node '" + name() + "': export_file must be a file name inside the output folder, got '" + file +
                          "'");
  }
}

void ClassifierTrain::process(const NodeInput& in, Emitter& out) {
  const Packet& packet = in.packet();
  const int64_t step = packet.seq();
  if (params_.test_every > 0 && step > 0 && step % params_.test_every == 0) report(step, test());

  Classifier& model = resource_->classifier();
  const Tensor& x0 = packet.get(fields::kX0);
  const std::vector<int64_t> labels64 = packet.get(fields::kLabels).to_int64_vector();
  const std::vector<int32_t> labels(labels64.begin(), labels64.end());
  const int64_t n = x0.dim(0), k = model.config().classes;
  if (static_cast<int64_t>(labels.size()) != n) {
    throw std::runtime_error("classifier_train: " + std::to_string(n) + " images but " +
                             std::to_string(labels.size()) + " labels");
  }

  Classifier::Output forward = model.classify(x0, /*for_training=*/true);
  const std::vector<float> logits = forward.logits.to_vector();
  Tensor grad({n, k}, DType::f32, Device::host()->engine());
  int64_t right = 0;
  double loss = 0;
  {
    auto g = grad.map<float>();
    loss = softmax_cross_entropy(logits.data(), labels.data(), n, k, g.data(), &right);
  }
  model.backward(*forward.state, grad);
  forward.state.reset();  // the activations go back to the model's pool

  ctx().metrics().log(step, name(), "loss", loss);
  window_right_ += right;
  window_images_ += n;
  if (++window_batches_ == params_.log_every) {
    ctx().metrics().log(step, name(), "train_accuracy",
                        static_cast<double>(window_right_) / static_cast<double>(window_images_));
    window_right_ = window_images_ = window_batches_ = 0;
  }
  ++steps_;
  out.emit(packet.with(fields::kGradsReady, int64_t{1}).with(fields::kLoss, loss));
}

ClassifierScore ClassifierTrain::test() {
  WithEmaWeights ema(resource_->model(), params_.use_ema ? resource_->ema() : nullptr);
  return score_classifier(resource_->classifier(), test_set_->images(), test_set_->labels(), params_.test_batch);
}

void ClassifierTrain::report(int64_t step, const ClassifierScore& score) {
  last_test_ = score;
  ctx().metrics().log(step, name(), "test_accuracy", score.accuracy);
  ctx().metrics().log(step, name(), "test_loss", score.loss);
  char line[256];
  std::snprintf(line, sizeof line, "[%s] step %lld: test accuracy %.2f%% on %lld images, loss %.4f", name().c_str(),
                static_cast<long long>(step), 100.0 * score.accuracy, static_cast<long long>(score.count),
                score.loss);
  ctx().info(line);
}

void ClassifierTrain::finish() {
  if (steps_ == 0) return;
  report(steps_, test());
  if (params_.export_file.empty() || ctx().out_dir().empty()) return;
  SafetensorsFile file;
  {
    WithEmaWeights ema(resource_->model(), params_.use_ema ? resource_->ema() : nullptr);
    resource_->model().save_to(file);
  }
  char accuracy[32];
  std::snprintf(accuracy, sizeof accuracy, "%.4f", last_test_.accuracy);
  file.set_metadata("format", "diffuflow-classifier");
  file.set_metadata("model_config", resource_->config_json());
  file.set_metadata("test_accuracy", accuracy);
  file.set_metadata("test_images", std::to_string(last_test_.count));
  file.set_metadata("test_set", test_set_->description());
  file.set_metadata("steps", std::to_string(steps_));
  const std::filesystem::path path = ctx().out_dir() / params_.export_file;
  file.write(path);
  ctx().info("[" + name() + "] wrote " + path.string());
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(classifier_train, diffuflow::ClassifierTrain);
