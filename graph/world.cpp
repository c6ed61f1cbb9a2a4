#include "graph/world.hpp"

#include <cstdlib>
#include <stdexcept>
#include <unistd.h>

namespace diffuflow {

namespace {

class LocalWorld : public World {
 public:
  LocalWorld() : World(0, 1, host_name(), "") {}
  void allreduce_sum(float*, size_t) override {}
  void allreduce_max(int64_t*, size_t) override {}
  std::vector<std::string> allgather(const std::string& text) override { return {text}; }
  std::vector<std::string> gather(const std::string& text, int) override { return {text}; }
  std::string broadcast(const std::string& text, int) override { return text; }
  void barrier() override {}
  // A world of one has no other rank to talk to.
  void send(const std::string&, int to, int) override {
    throw std::logic_error("send to rank " + std::to_string(to) + " in a world of one process");
  }
  std::string receive(int, int*) override { throw std::logic_error("receive in a world of one process"); }
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }
  std::shared_ptr<World> duplicate() override { return std::make_shared<LocalWorld>(); }
};

}  // namespace

std::string World::describe() const {
  return "rank " + std::to_string(rank_) + " of " + std::to_string(size_) + " on " + host_;
}

std::shared_ptr<World> local_world() { return std::make_shared<LocalWorld>(); }

namespace {
std::shared_ptr<World>& process_world_slot() {
  static std::shared_ptr<World> world = local_world();
  return world;
}
}  // namespace

std::shared_ptr<World> process_world() { return process_world_slot(); }
void set_process_world(std::shared_ptr<World> world) { process_world_slot() = std::move(world); }

std::string detect_launcher() {
  // Variables a launcher sets for each process it starts (never for a plain shell).
  static const std::pair<const char*, const char*> kMarkers[] = {
      {"OMPI_COMM_WORLD_SIZE", "openmpi"}, {"PMIX_RANK", "pmix"},          {"PMI_SIZE", "pmi"},
      {"PMI_RANK", "pmi"},                 {"MPI_LOCALNRANKS", "mpich"},   {"MV2_COMM_WORLD_SIZE", "mvapich"},
      {"I_MPI_HYDRA_TOPOLIB", "intel-mpi"}};
  for (const auto& [variable, name] : kMarkers) {
    if (std::getenv(variable) != nullptr) return name;
  }
  return "";
}

std::string host_name() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof buffer - 1) != 0) return "unknown-host";
  return buffer;
}

}  // namespace diffuflow
