// The world a run is spread over: a plain process is rank 0 of 1 and never
// starts MPI; a launcher is recognised from the variables it sets.
#include "graph/counter_rng.hpp"
#include "graph/run_context.hpp"
#include "graph/world.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <set>

using namespace diffuflow;

TEST_CASE("a process started without a launcher is a world of one, and its collectives are identities") {
  auto world = local_world();
  CHECK(world->rank() == 0);
  CHECK(world->size() == 1);
  CHECK_FALSE(world->distributed());
  CHECK_FALSE(world->host().empty());
  float values[3] = {1.5f, -2.0f, 3.0f};
  world->allreduce_sum(values, 3);
  CHECK(values[1] == -2.0f);
  CHECK(world->allgather("a") == std::vector<std::string>{"a"});
  CHECK(world->broadcast("b", 0) == "b");
  CHECK(world->describe().rfind("rank 0 of 1 on ", 0) == 0);
  CHECK(RunContext().world().size() == 1);
}

TEST_CASE("launchers are recognised from the environment they give their processes") {
  const char* keep = std::getenv("OMPI_COMM_WORLD_SIZE");
  if (keep != nullptr) return;  // this test itself runs under mpirun
  ::unsetenv("PMI_SIZE");
  ::unsetenv("PMIX_RANK");
  ::unsetenv("PMI_RANK");
  ::unsetenv("MPI_LOCALNRANKS");
  CHECK(detect_launcher().empty());
  ::setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  CHECK(detect_launcher() == "openmpi");
  ::unsetenv("OMPI_COMM_WORLD_SIZE");
  ::setenv("PMI_SIZE", "4", 1);
  CHECK(detect_launcher() == "pmi");
  ::unsetenv("PMI_SIZE");
  CHECK(detect_launcher().empty());
}

TEST_CASE("an item's random stream depends on seed, name and position only") {
  RunContext a(Device::host(), 7), b(Device::host(), 7), c(Device::host(), 8);
  auto first = a.item_rng("noiser", 41);
  auto again = b.item_rng("noiser", 41);
  CHECK(first() == again());
  CHECK(a.item_rng("noiser", 41)() != a.item_rng("noiser", 42)());
  CHECK(a.item_rng("noiser", 41)() != a.item_rng("timesteps", 41)());
  CHECK(a.item_rng("noiser", 41)() != c.item_rng("noiser", 41)());
  // Box-Muller draws: mean ~0, variance ~1.
  std::vector<float> values(20000);
  a.item_rng("x", 0).fill_normal(values.data(), values.size());
  double sum = 0, sq = 0;
  for (float v : values) {
    sum += v;
    sq += double(v) * v;
  }
  CHECK(std::abs(sum / values.size()) < 0.05);
  CHECK(std::abs(sq / values.size() - 1.0) < 0.05);
}
