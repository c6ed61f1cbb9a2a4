// The MPI world: the one translation unit that includes <mpi.h>. Built without
// MPI (DIFFUFLOW_HAVE_MPI undefined), start_world() only ever gives the local world.
#include "graph/world.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#ifdef DIFFUFLOW_HAVE_MPI
#include <mpi.h>
#endif

namespace diffuflow {

#ifdef DIFFUFLOW_HAVE_MPI

namespace {

// MPI_Finalize once, when the last world over MPI_COMM_WORLD is gone.
struct MpiSession {
  ~MpiSession() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
};

int rank_of(MPI_Comm comm) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  return rank;
}
int size_of(MPI_Comm comm) {
  int size = 0;
  MPI_Comm_size(comm, &size);
  return size;
}

class MpiWorld : public World {
 public:
  MpiWorld(std::shared_ptr<MpiSession> session, MPI_Comm comm, std::string launcher)
      : World(rank_of(comm), size_of(comm), host_name(), std::move(launcher)),
        session_(std::move(session)),
        comm_(comm) {}
  ~MpiWorld() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (comm_ != MPI_COMM_WORLD && !finalized) MPI_Comm_free(&comm_);
  }

  // Nonblocking, then tested with short sleeps between tests: a blocking
  // MPI_Allreduce spins on a core while it waits for the other ranks, which
  // takes that core from this process's own backward pass (the sums run on a
  // communication thread beside it) when ranks share a machine's cores.
  void allreduce_sum(float* data, size_t count) override {
    for (size_t done = 0; done < count;) {
      const int n = static_cast<int>(std::min<size_t>(count - done, kMaxCount));
      MPI_Request request;
      MPI_Iallreduce(MPI_IN_PLACE, data + done, n, MPI_FLOAT, MPI_SUM, comm_, &request);
      wait_politely(request);
      done += static_cast<size_t>(n);
    }
  }
  void allreduce_max(int64_t* data, size_t count) override {
    MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_INT64_T, MPI_MAX, comm_);
  }
  std::vector<std::string> allgather(const std::string& text) override {
    int length = static_cast<int>(text.size());
    std::vector<int> lengths(static_cast<size_t>(size()));
    MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, comm_);
    std::vector<int> offsets(lengths.size());
    int total = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      offsets[i] = total;
      total += lengths[i];
    }
    std::string all(static_cast<size_t>(total), '\0');
    MPI_Allgatherv(text.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR, comm_);
    std::vector<std::string> out;
    for (size_t i = 0; i < lengths.size(); ++i) out.push_back(all.substr(offsets[i], lengths[i]));
    return out;
  }
  std::vector<std::string> gather(const std::string& text, int root) override {
    int length = static_cast<int>(text.size());
    std::vector<int> lengths(static_cast<size_t>(size()));
    MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, root, comm_);
    std::vector<int> offsets(lengths.size());
    int total = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      offsets[i] = total;
      total += lengths[i];
    }
    std::string all(rank() == root ? static_cast<size_t>(total) : 0, '\0');
    MPI_Gatherv(text.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR, root, comm_);
    std::vector<std::string> out;
    if (rank() != root) return out;
    for (size_t i = 0; i < lengths.size(); ++i) out.push_back(all.substr(offsets[i], lengths[i]));
    return out;
  }
  std::string broadcast(const std::string& text, int root) override {
    int64_t length = static_cast<int64_t>(text.size());
    MPI_Bcast(&length, 1, MPI_INT64_T, root, comm_);
    std::string out = rank() == root ? text : std::string(static_cast<size_t>(length), '\0');
    MPI_Bcast(out.data(), static_cast<int>(length), MPI_CHAR, root, comm_);
    return out;
  }
  void barrier() override { MPI_Barrier(comm_); }
  void send(const std::string& bytes, int to, int tag) override {
    if (bytes.size() > kMaxCount) throw std::length_error("a message of more than 1 GiB to rank " + std::to_string(to));
    MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, to, tag, comm_);
  }
  std::string receive(int tag, int* from) override {
    MPI_Status status;
    MPI_Probe(MPI_ANY_SOURCE, tag, comm_, &status);
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    std::string bytes(static_cast<size_t>(count), '\0');
    MPI_Recv(bytes.data(), count, MPI_BYTE, status.MPI_SOURCE, tag, comm_, MPI_STATUS_IGNORE);
    if (from != nullptr) *from = status.MPI_SOURCE;
    return bytes;
  }
  [[noreturn]] void abort(int exit_code) override {
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);  // MPI_Abort does not return; this says so to the compiler
  }
  std::shared_ptr<World> duplicate() override {
    MPI_Comm copy;
    MPI_Comm_dup(comm_, &copy);
    return std::make_shared<MpiWorld>(session_, copy, launcher());
  }

 private:
  // Tests `request` until it completes, sleeping between tests from 20 us up to 200 us.
  static void wait_politely(MPI_Request& request) {
    int complete = 0;
    for (int wait_us = 20;; wait_us = std::min(200, wait_us * 2)) {
      MPI_Test(&request, &complete, MPI_STATUS_IGNORE);
      if (complete) return;
      std::this_thread::sleep_for(std::chrono::microseconds(wait_us));
    }
  }

  static constexpr size_t kMaxCount = size_t{1} << 30;  // MPI counts are int
  std::shared_ptr<MpiSession> session_;
  MPI_Comm comm_;
};

}  // namespace

bool world_has_mpi() { return true; }

std::shared_ptr<World> start_world(int* argc, char*** argv) {
  const std::string launcher = detect_launcher();
  if (launcher.empty()) return local_world();
  int provided = 0;
  // The compute thread, a communication thread and the main thread all talk to MPI.
  MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
  if (provided < MPI_THREAD_MULTIPLE) {
    MPI_Finalize();
    throw std::runtime_error("this MPI library does not support MPI_THREAD_MULTIPLE, which diffuflow needs "
                             "(its communication thread overlaps gradient sums with the backward pass)");
  }
  return std::make_shared<MpiWorld>(std::make_shared<MpiSession>(), MPI_COMM_WORLD, launcher);
}

#else

bool world_has_mpi() { return false; }

std::shared_ptr<World> start_world(int*, char***) {
  const std::string launcher = detect_launcher();
  if (!launcher.empty()) {
    const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
    if (size == nullptr) size = std::getenv("PMI_SIZE");
    if (size != nullptr && std::string(size) != "1") {
      throw std::runtime_error("started by an MPI launcher (" + launcher +
                               "), but this build of diffuflow has no MPI: rebuild with an MPI library installed");
    }
  }
  return local_world();
}

#endif

}  // namespace diffuflow
