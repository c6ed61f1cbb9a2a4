#include "nodes/model/classifier.hpp"

#include "compute/program.hpp"
#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/model/layers.hpp"
#include "nodes/model/pooled_state.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <utility>

namespace diffuflow {

namespace {

using dnnl::algorithm;
using dnnl::prop_kind;

ConfigError config_error(const std::string& key, const std::string& what) {
  return ConfigError(SourceLocation{"", 0, 0, key}, "classifier " + what);
}

std::string stage_prefix(size_t stage, int64_t layer) {
  return "stages." + std::to_string(stage) + "." + std::to_string(layer);
}

// The mean over H, W: x [N,C,H,W] (any layout) -> plain [N,C]. One pooling
// over the whole image into [N,C,1,1] in x's kind of layout, then a copy to
// the plain rows the head's linear layer reads.
ValueId global_avg_pool(Program& p, ValueId x) {
  const dims xs = p.shape(x);
  const auto x_md = p.desc(x);
  const dims ps{xs[0], xs[1], 1, 1};
  const auto pooled_md = p.in_activation_layout(x_md) ? p.activation_desc(ps) : plain_f32(ps);
  const auto rows_as_nchw = plain_f32(ps);
  const dims window{xs[2], xs[3]}, none{0, 0};
  const auto attr = user_scratchpad_attr();
  dnnl::pooling_forward::primitive_desc fwd_pd(
      dnnl::pooling_forward::desc(prop_kind::forward_training, algorithm::pooling_avg_exclude_padding, x_md,
                                  pooled_md, window, window, none, none),
      attr, p.engine());
  const dnnl::memory pooled = p.alloc(pooled_md);
  p.forward(p.make<dnnl::pooling_forward>(fwd_pd), {{DNNL_ARG_SRC, p.data(x)}, {DNNL_ARG_DST, pooled}});
  const ValueId y = p.new_value(plain_f32({xs[0], xs[1]}), true);
  p.copy(pooled, view(p.data(y), rows_as_nchw), false);
  p.on_backward([=](Program& p) {
    if (!p.needs_grad(x)) return;
    const dnnl::memory d_pooled = p.alloc(pooled_md);
    p.copy(view(p.grad(y), rows_as_nchw), d_pooled, true);
    dnnl::pooling_backward::primitive_desc pd(
        dnnl::pooling_backward::desc(algorithm::pooling_avg_exclude_padding, x_md, pooled_md, window, window, none,
                                     none),
        attr, p.engine(), fwd_pd);
    const GradSink s = p.sink(x);
    p.backward(p.make<dnnl::pooling_backward>(pd), {{DNNL_ARG_DIFF_DST, d_pooled}, {DNNL_ARG_DIFF_SRC, s.memory}});
    p.commit(s);
  });
  return y;
}

// A tensor from outside as plain f32 of `shape` on `engine` (a copy, if one
// was needed, lives as long as the returned tensor).
Tensor plain_on(const Tensor& x, const dims& shape, const dnnl::engine& engine) {
  return x.plain_on(engine).reshaped(Shape(shape.begin(), shape.end()));
}

}  // namespace

// --- config -------------------------------------------------------------------

void ClassifierConfig::validate() const {
  if (in_channels < 1) throw config_error("in_channels", "in_channels must be at least 1");
  if (channels.empty()) throw config_error("channels", "channels must list at least one stage");
  if (groups < 1) throw config_error("groups", "groups must be at least 1");
  for (size_t i = 0; i < channels.size(); ++i) {
    if (channels[i] < 1 || channels[i] % groups != 0) {
      throw config_error("channels", "channels[" + std::to_string(i) + "] = " + std::to_string(channels[i]) +
                                         " must be a positive multiple of groups (" + std::to_string(groups) + ")");
    }
  }
  if (depth < 1) throw config_error("depth", "depth must be at least 1");
  if (classes < 2) throw config_error("classes", "classes must be at least 2");
}

std::string ClassifierConfig::to_json() const {
  nlohmann::json j;
  j["model"] = "classifier";
  j["in_channels"] = in_channels;
  j["channels"] = channels;
  j["depth"] = depth;
  j["groups"] = groups;
  j["classes"] = classes;
  return j.dump();
}

ClassifierConfig ClassifierConfig::from_json(const std::string& text, const std::string& source) {
  const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || j.value("model", "") != "classifier") {
    throw ConfigError(SourceLocation{source, 0, 0, "model_config"},
                      "not a classifier configuration (expected a JSON object with \"model\": \"classifier\"): " +
                          text);
  }
  ClassifierConfig c;
  try {
    c.in_channels = j.value("in_channels", c.in_channels);
    c.channels = j.value("channels", c.channels);
    c.depth = j.value("depth", c.depth);
    c.groups = j.value("groups", c.groups);
    c.classes = j.value("classes", c.classes);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(SourceLocation{source, 0, 0, "model_config"}, std::string("classifier configuration: ") + e.what());
  }
  c.validate();
  return c;
}

std::vector<ParamSlot> classifier_param_slots(const ClassifierConfig& c) {
  c.validate();
  std::vector<ParamSlot> slots;
  int64_t in = c.in_channels;
  for (size_t s = 0; s < c.channels.size(); ++s) {
    for (int64_t l = 0; l < c.depth; ++l) {
      const std::string prefix = stage_prefix(s, l);
      const int64_t out = c.channels[s];
      slots.push_back({prefix + ".conv.weight", {out, in, 3, 3}, 0});
      slots.push_back({prefix + ".conv.bias", {out}, 0});
      slots.push_back({prefix + ".norm.weight", {out}, 0});
      slots.push_back({prefix + ".norm.bias", {out}, 0});
      in = out;
    }
  }
  slots.push_back({"head.weight", {c.classes, in}, 0});
  slots.push_back({"head.bias", {c.classes}, 0});
  return slots;
}

// --- the loss -------------------------------------------------------------------

void softmax_rows(const float* logits, int64_t n, int64_t k, float* probabilities) {
  for (int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * k;
    float* out = probabilities + i * k;
    const double top = *std::max_element(row, row + k);
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += std::exp(static_cast<double>(row[j]) - top);
    for (int64_t j = 0; j < k; ++j) out[j] = static_cast<float>(std::exp(static_cast<double>(row[j]) - top) / sum);
  }
}

double softmax_cross_entropy(const float* logits, const int32_t* labels, int64_t n, int64_t k, float* grad,
                             int64_t* correct) {
  if (n < 1 || k < 2) throw std::invalid_argument("cross-entropy needs at least one row of at least two classes");
  double total = 0;
  int64_t right = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t label = labels[i];
    if (label < 0 || label >= k) {
      throw std::invalid_argument("cross-entropy: label " + std::to_string(label) + " of image " + std::to_string(i) +
                                  " is outside [0, " + std::to_string(k) + ")");
    }
    const float* row = logits + i * k;
    const int64_t best = std::max_element(row, row + k) - row;
    if (best == label) ++right;
    // log-sum-exp with the largest logit taken out, so exp never overflows.
    const double top = row[best];
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += std::exp(static_cast<double>(row[j]) - top);
    const double lse = top + std::log(sum);
    total += lse - row[label];
    if (grad) {
      float* g = grad + i * k;
      for (int64_t j = 0; j < k; ++j) {
        const double p = std::exp(static_cast<double>(row[j]) - lse);
        g[j] = static_cast<float>((p - (j == label ? 1.0 : 0.0)) / static_cast<double>(n));
      }
    }
  }
  if (correct) *correct = right;
  return total / static_cast<double>(n);
}

// --- the model ------------------------------------------------------------------

// Programs per (batch size, image height, image width, training).
using ClassifierPoolKey = std::tuple<int64_t, int64_t, int64_t, bool>;

struct Classifier::Workspace {
  ClassifierPoolKey key;
  int64_t batch = 0;
  dims input;
  bool training = false;
  std::unique_ptr<Program> program;
  ValueId x = -1, features = -1, logits = -1;
  int copy_x_in = -1, copy_logits = -1, copy_features = -1, copy_grad_in = -1, copy_grad_x = -1;
  dnnl::stream stream;
};

class Classifier::Pool : public ProgramPool<ClassifierPoolKey, Classifier::Workspace> {};

namespace {
using ClassifierState = PooledState<Classifier::Pool, Classifier::Workspace>;
}  // namespace

Classifier::Classifier(const ClassifierConfig& config, const dnnl::engine& engine)
    : DenoiserModel(classifier_param_slots(config), engine), config_(config), pool_(std::make_shared<Pool>()) {}

Classifier::~Classifier() = default;

Classifier::Output Classifier::classify(const Tensor& x, bool for_training) {
  const int64_t stages = static_cast<int64_t>(config_.channels.size());
  const int64_t smallest = int64_t{1} << (stages - 1);
  if (x.dtype() != DType::f32 || x.rank() != 4 || x.dim(1) != config_.in_channels || x.dim(0) < 1 ||
      x.dim(2) < smallest || x.dim(3) < smallest) {
    throw std::invalid_argument("classifier: x must be f32 [N, " + std::to_string(config_.in_channels) +
                                ", H, W] with H and W at least " + std::to_string(smallest) + ", got " +
                                dtype_name(x.dtype()) + " " + shape_str(x.shape()));
  }
  const int64_t n = x.dim(0), k = config_.classes, f = config_.feature_dim();
  const dims xs{n, x.dim(1), x.dim(2), x.dim(3)};
  const ClassifierPoolKey key{n, xs[2], xs[3], for_training};
  auto ws = pool_->acquire(key, [&](PrimitiveCache& cache) {
    auto made = std::make_unique<Workspace>();
    made->key = key;
    made->batch = n;
    made->input = xs;
    made->training = for_training;
    made->program = std::make_unique<Program>(engine(), cache, params(), for_training ? param_count() : 1,
                                              for_training);
    Program& p = *made->program;
    std::map<std::string, ParamRef> refs;
    for (const auto& s : param_slots()) refs[s.name] = ParamRef{s.offset, s.shape};
    const auto x_md = plain_f32(xs);
    made->x = p.new_value(x_md, for_training);
    ValueId h = made->x;  // [N,C,H,W]
    for (size_t s = 0; s < config_.channels.size(); ++s) {
      for (int64_t l = 0; l < config_.depth; ++l) {
        const std::string prefix = stage_prefix(s, l);
        h = conv2d(p, h, refs.at(prefix + ".conv.weight"), refs.at(prefix + ".conv.bias"), 1, 1);
        h = group_norm_silu(p, h, refs.at(prefix + ".norm.weight"), refs.at(prefix + ".norm.bias"), config_.groups,
                            1e-5f);
      }
      if (s + 1 < config_.channels.size()) h = avg_pool(p, h, 2);  // [N,C_s,H/2,W/2]
    }
    made->features = global_avg_pool(p, h);  // [N,F]
    p.pin(made->features);                   // read from outside after the forward pass
    made->logits = linear(p, made->features, refs.at("head.weight"), refs.at("head.bias"));  // [N,K]
    const auto logits_md = plain_f32({n, k});
    const auto features_md = plain_f32({n, f});
    made->copy_x_in = p.add_io_copy(x_md, x_md);
    made->copy_logits = p.add_io_copy(logits_md, logits_md);
    made->copy_features = p.add_io_copy(features_md, features_md);
    if (for_training) {
      made->copy_grad_in = p.add_io_copy(logits_md, logits_md);
      made->copy_grad_x = p.add_io_copy(x_md, x_md);
    }
    p.finalize(made->logits, for_training);
    made->stream = dnnl::stream(engine());
    return made;
  });
  auto state = std::make_shared<ClassifierState>(pool_, std::move(ws));
  Workspace& space = state->workspace();
  Program& p = *space.program;

  p.run_io_copy(space.copy_x_in, plain_on(x, xs, engine()).memory(), p.data(space.x), space.stream);
  p.prepare(space.stream, params_version());
  p.run_forward(space.stream);
  Output out;
  out.logits = Tensor({n, k}, DType::f32, engine());
  out.features = Tensor({n, f}, DType::f32, engine());
  p.run_io_copy(space.copy_logits, p.data(space.logits), out.logits.memory(), space.stream);
  p.run_io_copy(space.copy_features, p.data(space.features), out.features.memory(), space.stream);
  space.stream.wait();
  if (for_training) out.state = state;
  return out;
}

ForwardResult Classifier::forward(const Tensor& x, const Tensor& /*t*/, bool for_training) {
  Output out = classify(x, for_training);
  ForwardResult result;
  result.prediction = out.logits.reshaped({out.logits.dim(0), config_.classes, 1, 1});
  result.state = std::move(out.state);
  return result;
}

Tensor Classifier::backward(const ForwardState& state, const Tensor& grad_logits) {
  const auto* s = dynamic_cast<const ClassifierState*>(&state);
  if (!s || s->owner() != pool_.get()) throw std::invalid_argument("classifier backward: the state is not from this model");
  Workspace& space = s->workspace();
  if (!space.training) throw std::invalid_argument("classifier backward: the forward pass was not run for training");
  const int64_t n = space.batch, k = config_.classes;
  if (grad_logits.dtype() != DType::f32 || grad_logits.rank() < 2 || grad_logits.dim(0) != n ||
      grad_logits.numel() != n * k) {
    throw std::invalid_argument("classifier backward: grad_logits must be f32 [" + std::to_string(n) + ", " +
                                std::to_string(k) + "], got " + dtype_name(grad_logits.dtype()) + " " +
                                shape_str(grad_logits.shape()));
  }
  Program& p = *space.program;
  p.run_io_copy(space.copy_grad_in, plain_on(grad_logits, {n, k}, engine()).memory(), p.grad(space.logits),
                space.stream);
  p.run_backward(space.stream);
  Tensor grad_x(Shape(space.input.begin(), space.input.end()), DType::f32, engine());
  p.run_io_copy(space.copy_grad_x, p.grad(space.x), grad_x.memory(), space.stream);
  space.stream.wait();
  accumulate_grads(p.grad_staging());
  return grad_x;
}

void Classifier::describe(const Tensor& images, int64_t batch, std::vector<float>* features,
                          std::vector<float>* probabilities) {
  if (images.rank() != 4 || images.dtype() != DType::f32) {
    throw std::invalid_argument("classifier: images must be f32 [N,C,H,W], got " + dtype_name(images.dtype()) + " " +
                                shape_str(images.shape()));
  }
  const int64_t n = images.dim(0), k = config_.classes, f = config_.feature_dim();
  const int64_t per_image = images.numel() / std::max<int64_t>(n, 1);
  if (features) features->resize(static_cast<size_t>(n * f));
  if (probabilities) probabilities->resize(static_cast<size_t>(n * k));
  const Tensor host = images.on_cpu() && images.desc() == plain_f32(images.shape())
                          ? images
                          : images.copy_to(Device::host()->engine());
  const auto all = host.map<float>();
  batch = std::max<int64_t>(1, std::min(batch, n));
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t count = std::min(batch, n - start);
    Tensor chunk({count, images.dim(1), images.dim(2), images.dim(3)}, DType::f32, Device::host()->engine());
    {
      auto dst = chunk.map<float>();
      std::copy(all.data() + start * per_image, all.data() + (start + count) * per_image, dst.data());
    }
    const Output out = classify(chunk, false);
    if (features) {
      const std::vector<float> values = out.features.to_vector();
      std::copy(values.begin(), values.end(), features->begin() + start * f);
    }
    if (probabilities) {
      const std::vector<float> logits = out.logits.to_vector();
      softmax_rows(logits.data(), count, k, probabilities->data() + start * k);
    }
  }
}

ClassifierScore score_classifier(Classifier& model, const Tensor& images, const Tensor& labels, int64_t batch) {
  const int64_t n = images.rank() == 4 ? images.dim(0) : 0;
  if (n < 1 || labels.rank() != 1 || labels.dim(0) != n) {
    throw std::invalid_argument("score_classifier: " + std::to_string(n) + " images need as many labels, got " +
                                shape_str(labels.shape()));
  }
  const int64_t k = model.config().classes;
  std::vector<float> probabilities;
  model.describe(images, batch, nullptr, &probabilities);
  const std::vector<int64_t> truth = labels.to_int64_vector();
  ClassifierScore score;
  score.count = n;
  int64_t right = 0;
  double loss = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = probabilities.data() + i * k;
    const int64_t label = truth[static_cast<size_t>(i)];
    if (label < 0 || label >= k) {
      throw std::invalid_argument("score_classifier: label " + std::to_string(label) + " of image " +
                                  std::to_string(i) + " is outside [0, " + std::to_string(k) + ")");
    }
    if (std::max_element(row, row + k) - row == label) ++right;
    loss -= std::log(std::max(static_cast<double>(row[label]), 1e-30));
  }
  score.accuracy = static_cast<double>(right) / static_cast<double>(n);
  score.loss = loss / static_cast<double>(n);
  return score;
}

// --- the resource -----------------------------------------------------------------

void load_classifier_weights(Classifier& model, const std::string& path, bool prefer_ema) {
  const SafetensorsFile file = SafetensorsFile::read(path);
  try {
    model.load(model_weights_from(file, model.param_slots(), prefer_ema));
  } catch (const DataError& e) {
    // The filtered copy has no path of its own: name the file the user gave.
    std::string what = e.what();
    if (what.rfind(e.path() + ": ", 0) == 0) what = what.substr(e.path().size() + 2);
    throw DataError(path, what);
  }
}

ResourceContract ClassifierResource::contract() {
  ResourceContract c;
  c.kind = kModelResourceKind;
  c.doc = "A small CNN image classifier (conv, GroupNorm, SiLU and average-pool stages, a linear head) whose pooled "
          "last stage is the feature vector of FID and KID; trained by classifier_train and the optimiser.";
  return c;
}

ClassifierConfig ClassifierResource::Params::network() const {
  ClassifierConfig c;
  c.in_channels = in_channels;
  c.channels = channels;
  c.depth = depth;
  c.groups = groups;
  c.classes = classes;
  return c;
}

void ClassifierResource::check(const Params& params) {
  params.network().validate();
  if (!params.weights.empty() && !std::filesystem::is_regular_file(params.weights)) {
    throw ConfigError(SourceLocation{"", 0, 0, "weights"}, "weights file '" + params.weights + "' does not exist");
  }
}

ClassifierResource::ClassifierResource(const ResourceConfig& config, RunContext& ctx) {
  const Params params = config.params_as<Params>();
  model_ = std::make_shared<Classifier>(params.network(), ctx.device().engine());
  weights_ = params.weights;
  if (!weights_.empty()) {
    load_classifier_weights(*model_, weights_, params.use_ema);
  } else {
    model_->init_random(static_cast<uint64_t>(params.init_seed));
  }
}

std::shared_ptr<ClassifierResource> classifier_resource(RunContext& ctx, const std::string& resource,
                                                        const std::string& node, const std::string& param) {
  auto typed = std::dynamic_pointer_cast<ClassifierResource>(ctx.resource(resource));
  if (!typed) {
    throw ConfigError(SourceLocation{"", 0, 0, param}, "node '" + node + "': " + param + " '" + resource +
                                                           "' is not a classifier_model resource");
  }
  return typed;
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_RESOURCE(classifier_model, diffuflow::ClassifierResource);
