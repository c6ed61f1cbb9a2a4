// toy2d_source: 2-D toy data sets as "2-pixel images", the classic way to watch
// a diffusion model learn a distribution.
//
//   kind: moons       two interleaved half circles (labels: which moon)
//   kind: swiss_roll  a 2-D spiral (labels 0)
//   kind: gaussians8  eight gaussians on a circle of radius 0.75 (labels: which one)
//
// Example config:
//   - name: data
//     type: toy2d_source
//     params: {kind: moons, batch_size: 256, count: 8192, epochs: 0, noise: 0.05}
//
// out: x0     [N,2,1,1] f32: channel 0 = x, channel 1 = y, roughly within [-1,1]
//      labels [N] s32
//
// The set of `count` points is drawn once from (pipeline seed, kind, noise) and
// visited in a fresh seeded order every epoch when shuffling.
#pragma once

#include "graph/node.hpp"
#include "nodes/common/batching.hpp"

#include <memory>
#include <random>
#include <string>
#include <vector>

namespace diffuflow {

// `n` fresh points of a toy set as interleaved x,y pairs (2n floats); `noise`
// is the std of gaussian noise added to each coordinate (for gaussians8 the std
// of each component). When `labels` is given it receives one label per point.
// Throws std::invalid_argument for an unknown kind.
std::vector<float> sample_toy2d(const std::string& kind, int n, std::mt19937_64& rng, float noise,
                                std::vector<int32_t>* labels = nullptr);

class Toy2dSource : public Node {
 public:
  DIFFUFLOW_NESTED_ENUM(Kind, moons, swiss_roll, gaussians8);

  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(Kind, kind, Kind::moons, "which 2-D distribution");
    DIFFUFLOW_PARAM(int64_t, count, 8192, "points per epoch (the set is fixed by the seed)", .range(1, 1e9));
    DIFFUFLOW_PARAM(double, noise, 0.05, "std of the gaussian noise on each coordinate", .range(0.0, 10.0));
    DIFFUFLOW_PARAM_GROUP(BatchOptions, batch, (BatchOptions{256}));
  };

  static NodeContract contract();
  Toy2dSource(const NodeConfig& config, RunContext& ctx);
  bool produce(Emitter& out) override;
  bool seek(int64_t packets, int64_t items) override {
    emitted_ = packets;
    batcher_->seek(packets, items);
    return true;
  }

  const std::vector<float>& points() const { return points_; }

 private:
  Params params_;
  std::vector<float> points_;  // count x,y pairs
  std::vector<int32_t> labels_;
  std::unique_ptr<EpochBatcher> batcher_;
  int64_t emitted_ = 0;
};

}  // namespace diffuflow
