// rank_gather: brings every process's results to rank 0, which alone writes
// files. Under mpirun the sources of independent work (noise_source's chain
// packets) split it between the processes once a rank_gather is in the graph;
// put it before the writers and rank 0 writes what a single process would.
// In a single process it passes packets on unchanged.
//
// Example config:
//   nodes:
//     - {name: gather, type: rank_gather}
//   edges:
//     - sampler.done -> gather
//     - gather -> writer
//
// in:  any packet; its tensors (f32, bf16, s32, s64, u8) and numbers travel,
//      opaque payloads do not
// out: on rank 0, this process's packets and, as they arrive, every other
//      rank's (same seq, same fields); nothing on other ranks
//
// Rank 0 emits its packet of round k (seq k * size) once each other rank has
// sent its packet of that round or said it has no more (chain packets are
// dealt round-robin), so all results are in before its graph drains.
#pragma once

#include "graph/node.hpp"
#include "graph/world.hpp"

#include <memory>
#include <set>
#include <string>
#include <vector>

namespace diffuflow {

class RankGather : public Node {
 public:
  static NodeContract contract();
  RankGather(const NodeConfig& config, RunContext& ctx);
  void process(const NodeInput& in, Emitter& out) override;
  void finish() override;

  // A packet's fields as bytes and back (tensors copied to the host; payloads left out).
  static std::string encode(const Packet& packet);
  static Packet decode(const std::string& bytes, const dnnl::engine& engine);

 private:
  // Waits for the next message from any rank; emits a packet, or marks its sender done.
  void receive_one(Emitter* out);

  std::shared_ptr<World> world_;  // a communicator of its own: never mixes with gradient sums
  std::vector<std::set<int64_t>> received_;  // per rank: the seqs that arrived
  std::vector<bool> done_;                   // per rank: said it has no more
  int64_t dropped_ = 0;
};

}  // namespace diffuflow
