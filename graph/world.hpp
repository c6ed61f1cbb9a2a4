// World: the processes one run is spread over. A plain `diffuflow run` is a
// world of one (rank 0 of 1) and never touches MPI; under a launcher (mpirun,
// mpiexec, srun) start_world() initialises MPI and every process learns its
// rank. Collectives are called by every rank in the same order.
//
//   std::shared_ptr<World> world = start_world(&argc, &argv);   // once, in main
//   world->allreduce_sum(grads, n);                              // in place, every rank
//   if (world->rank() == 0) write_files();
//
// Only graph/world_mpi.cpp includes <mpi.h>; everything else sees this interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace diffuflow {

class World {
 public:
  virtual ~World() = default;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& host() const { return host_; }
  // The launcher the environment names ("openmpi", "pmi", "pmix", ...); empty without one.
  const std::string& launcher() const { return launcher_; }
  bool distributed() const { return size_ > 1; }
  // "rank 1 of 4 on node7"
  std::string describe() const;

  // In-place sums and maxima over every rank.
  virtual void allreduce_sum(float* data, size_t count) = 0;
  virtual void allreduce_max(int64_t* data, size_t count) = 0;
  // Every rank's text, in rank order, on every rank.
  virtual std::vector<std::string> allgather(const std::string& text) = 0;
  // Every rank's text, in rank order, on `root` (empty elsewhere).
  virtual std::vector<std::string> gather(const std::string& text, int root) = 0;
  // `root`'s text on every rank.
  virtual std::string broadcast(const std::string& text, int root) = 0;
  virtual void barrier() = 0;
  // Point to point: `bytes` to rank `to`; receive() waits for the next message
  // with `tag` from any rank and says which sent it. Message order between two
  // ranks is kept.
  virtual void send(const std::string& bytes, int to, int tag) = 0;
  virtual std::string receive(int tag, int* from) = 0;
  // Ends every process of the world at once (a failed rank must not leave the
  // others waiting in a collective). Never returns.
  [[noreturn]] virtual void abort(int exit_code) = 0;
  // A world over the same processes whose collectives never mix with this
  // one's: for collectives issued from another thread (a communication thread).
  virtual std::shared_ptr<World> duplicate() = 0;

 protected:
  World(int rank, int size, std::string host, std::string launcher)
      : rank_(rank), size_(size), host_(std::move(host)), launcher_(std::move(launcher)) {}

 private:
  int rank_, size_;
  std::string host_, launcher_;
};

// The world of one process: collectives are identities.
std::shared_ptr<World> local_world();

// The launcher the environment says started this process, from the variables
// launchers set for their processes (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK, ...);
// empty when none did.
std::string detect_launcher();

// MPI's world when a launcher started this process (MPI_Init is called only
// then), else local_world(). Throws std::runtime_error when a launcher is seen
// but this build has no MPI, or MPI lacks thread support.
std::shared_ptr<World> start_world(int* argc, char*** argv);

// The world this process belongs to: local_world() until main() sets the one
// start_world() gave. RunContexts start with it.
std::shared_ptr<World> process_world();
void set_process_world(std::shared_ptr<World> world);

// Whether this build can run distributed (it was built with MPI).
bool world_has_mpi();

// The short host name of this machine.
std::string host_name();

}  // namespace diffuflow
