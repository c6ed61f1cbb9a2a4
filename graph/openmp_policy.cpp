#include "graph/openmp_policy.hpp"

#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <unistd.h>
#include <vector>

namespace diffuflow {

std::vector<int> openmp_place_cpus() {
  std::vector<int> cpus;
  const int places = omp_get_num_places();
  for (int place = 0; place < places; ++place) {
    std::vector<int> ids(static_cast<size_t>(omp_get_place_num_procs(place)));
    omp_get_place_proc_ids(place, ids.data());
    cpus.insert(cpus.end(), ids.begin(), ids.end());
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

namespace {

// With binding requested (OMP_PROC_BIND, OMP_PLACES), libgomp pins the
// initial thread to the first place when it loads, and an affinity mask
// survives execv: the re-executed program would see that one place as the
// whole machine (OMP_PLACES '{0}', one thread for everything). The places
// were computed inside the mask the program started with, so their union
// is that mask; restore it before re-executing.
void undo_initial_binding() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (const int id : openmp_place_cpus()) {
    if (id >= 0 && id < CPU_SETSIZE) CPU_SET(id, &set);
  }
  if (CPU_COUNT(&set) > 0) ::sched_setaffinity(0, sizeof set, &set);
}

}  // namespace

void ensure_openmp_wait_policy(int argc, char** argv) {
  (void)argc;
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  // The spin count first: alone it still bounds the spin.
  if (::setenv("GOMP_SPINCOUNT", "3000", 1) != 0 || ::setenv("OMP_WAIT_POLICY", "active", 1) != 0) return;
  undo_initial_binding();
  ::execv("/proc/self/exe", argv);
  // execv only returns on failure: carry on with the default policy.
}

std::string teams_problem(int threads, int teams) {
  if (teams < 1 || threads % teams != 0) {
    return std::to_string(threads) + " threads do not split into " + std::to_string(teams) +
           " equal teams: give a thread count that " + std::to_string(teams) + " divides";
  }
  if (teams == 1 || openmp_place_cpus().empty()) return "";
  std::string settings;
  for (const char* name : {"OMP_PROC_BIND", "OMP_PLACES"}) {
    const char* value = std::getenv(name);
    if (value == nullptr) continue;
    settings += std::string(settings.empty() ? "" : ", ") + name + "=" + value;
  }
  return std::to_string(teams) + " teams with OpenMP binding (" + settings +
         "): libgomp binds every team's threads from the first place, so the teams would share cores; unset "
         "OMP_PROC_BIND and OMP_PLACES to run teams";
}

std::string describe_openmp_wait_policy() {
  std::string text;
  for (const char* name : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"}) {
    const char* value = std::getenv(name);
    if (value == nullptr) continue;
    if (!text.empty()) text += ", ";
    text += std::string(name) + "=" + value;
  }
  return text.empty() ? "libgomp's default" : text;
}

}  // namespace diffuflow
