// noise_source: the starting points of reverse diffusion chains, x_T ~ N(0, I).
//
// Example config:
//   - name: noise
//     type: noise_source
//     params: {shape: [1, 28, 28], batch_size: 16, count: 64}
//
// out: x_t [N,C,H,W] f32 ~ N(0, I) on the device (N = batch_size; the last
//      packet holds the remainder when count is not a multiple of it)
//
// Emits ceil(count / batch_size) packets, seq = chain index 0, 1, ...; the
// noise of chain `seq` depends only on (pipeline seed, node name, seq), so a
// chain's samples do not depend on how many chains run at once. With
// seed_by: image the noise of image i depends only on (seed, node name, i), and
// packets carry first_image (int64), so a sample does not depend on batch_size.
// Under mpirun, with a rank_gather before the writers, process r starts chains
// r, r + size, ... and rank 0 writes them all: the files of a single process.
#pragma once

#include "graph/node.hpp"

#include <cstdint>
#include <vector>

namespace diffuflow {

class NoiseSource : public Node {
 public:
  DIFFUFLOW_NESTED_ENUM(SeedBy, packet, image);

  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::vector<int64_t>, shape, (std::vector<int64_t>{1, 28, 28}),
                    "[C, H, W] of one sample ([2, 1, 1] for 2-D points)", .range(1, 65536));
    DIFFUFLOW_PARAM(int64_t, batch_size, 16, "samples per chain packet", .range(1, 65536));
    DIFFUFLOW_PARAM(int64_t, count, 64, "samples in all; packets = ceil(count / batch_size)", .range(1, 1e9));
    DIFFUFLOW_PARAM(SeedBy, seed_by, SeedBy::packet,
                    "packet: one random stream per packet; image: one per image index (the packets then carry "
                    "first_image, and the sampler draws its step noise per image too), so samples do not "
                    "depend on batch_size");
  };

  static NodeContract contract();
  NoiseSource(const NodeConfig& config, RunContext& ctx);
  bool produce(Emitter& out) override;

  // Packets this source emits in all: ceil(count / batch_size).
  int64_t packets() const { return (params_.count + params_.batch_size - 1) / params_.batch_size; }

 private:
  Params params_;
  int64_t emitted_ = 0;
};

}  // namespace diffuflow
