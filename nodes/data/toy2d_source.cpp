#include "nodes/data/toy2d_source.hpp"

#include "graph/errors.hpp"
#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <cmath>
#include <stdexcept>

namespace diffuflow {

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kGaussianRadius = 0.75;

}  // namespace

std::vector<float> sample_toy2d(const std::string& kind, int n, std::mt19937_64& rng, float noise,
                                std::vector<int32_t>* labels) {
  if (kind != "moons" && kind != "swiss_roll" && kind != "gaussians8") {
    throw std::invalid_argument("unknown toy 2-D set '" + kind + "' (valid: moons, swiss_roll, gaussians8)");
  }
  if (n < 0) throw std::invalid_argument("sample_toy2d: negative point count");
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::normal_distribution<double> gauss(0.0, 1.0);
  std::vector<float> points(static_cast<size_t>(n) * 2);
  if (labels) labels->assign(static_cast<size_t>(n), 0);
  for (int i = 0; i < n; ++i) {
    double x = 0.0;
    double y = 0.0;
    int32_t label = 0;
    if (kind == "moons") {
      // The two half circles of scikit-learn's make_moons, centred and scaled
      // from x in [-1, 2] to [-1, 1].
      label = unit(rng) < 0.5 ? 0 : 1;
      const double t = kPi * unit(rng);
      x = label == 0 ? std::cos(t) : 1.0 - std::cos(t);
      y = label == 0 ? std::sin(t) : 0.5 - std::sin(t);
      x = (x - 0.5) / 1.5;
      y = (y - 0.25) / 1.5;
    } else if (kind == "swiss_roll") {
      const double t = 1.5 * kPi * (1.0 + 2.0 * unit(rng));  // radius grows from 1.5 pi to 4.5 pi
      x = t * std::cos(t) / (4.5 * kPi);
      y = t * std::sin(t) / (4.5 * kPi);
    } else {
      label = static_cast<int32_t>(unit(rng) * 8.0) % 8;
      const double angle = 2.0 * kPi * label / 8.0;
      x = kGaussianRadius * std::cos(angle);
      y = kGaussianRadius * std::sin(angle);
    }
    x += noise * gauss(rng);
    y += noise * gauss(rng);
    points[2 * i] = static_cast<float>(x);
    points[2 * i + 1] = static_cast<float>(y);
    if (labels) (*labels)[i] = label;
  }
  return points;
}

NodeContract Toy2dSource::contract() {
  NodeContract c;
  c.doc = "2-D toy data (two moons, swiss roll, 8 gaussians) as [N,2,1,1] \"2-pixel images\" in about [-1,1].";
  c.example = "{name: data, type: toy2d_source, params: {kind: moons, batch_size: 256, count: 8192}}";
  c.outputs = {{"out", {fields::kX0, fields::kLabels}, "x0 [N,2,1,1] f32 (x, y as channels); labels [N] s32 (host)"}};
  c.max_concurrency = 1;
  return c;
}

Toy2dSource::Toy2dSource(const NodeConfig& config, RunContext& ctx)
    : Node(config, ctx), params_(config.params_as<Params>()) {
  if (params_.count > (int64_t{1} << 30)) {
    throw ConfigError(SourceLocation{}, "node '" + name() + "': count " + std::to_string(params_.count) +
                                            " points do not fit in memory; use at most 2^30");
  }
  const std::string kind = enum_name(params_.kind);
  auto rng = ctx.rng("toy2d_source/" + kind, 0);
  points_ = sample_toy2d(kind, static_cast<int>(params_.count), rng, static_cast<float>(params_.noise), &labels_);
  batcher_ = std::make_unique<EpochBatcher>(params_.count, params_.batch,
                                            [this](int64_t epoch) { return this->ctx().rng(name(), epoch); },
                                            shard_of(ctx));
  if (batcher_->batches_per_epoch() == 0) {
    throw ConfigError(SourceLocation{}, "node '" + name() + "': count " + std::to_string(params_.count) +
                                            " makes no full batch of batch_size " +
                                            std::to_string(params_.batch.batch_size) +
                                            " with drop_last: true; raise count or set drop_last: false");
  }
}

bool Toy2dSource::produce(Emitter& out) {
  if (!source_may_emit(ctx(), emitted_)) return false;
  std::vector<int64_t> indices;
  if (!batcher_->next(indices)) return false;

  const int64_t n = static_cast<int64_t>(indices.size());
  const auto& engine = Device::host()->engine();
  Tensor x0({n, 2, 1, 1}, DType::f32, engine);
  Tensor labels({n}, DType::s32, engine);
  {
    auto values = x0.map<float>();
    auto label_values = labels.map<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      const size_t item = static_cast<size_t>(indices[i]);
      values[2 * i] = points_[2 * item];
      values[2 * i + 1] = points_[2 * item + 1];
      label_values[i] = labels_[item];
    }
  }
  out.emit(Packet(emitted_).at_item(batcher_->first_item()).with(fields::kX0, x0).with(fields::kLabels, labels));
  ++emitted_;
  return true;
}

}  // namespace diffuflow

DIFFUFLOW_REGISTER_NODE(toy2d_source, diffuflow::Toy2dSource);
