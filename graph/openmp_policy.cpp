#include "graph/openmp_policy.hpp"

#include <cstdlib>
#include <unistd.h>

namespace diffuflow {

void ensure_passive_openmp(int argc, char** argv) {
  (void)argc;
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (::setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  ::execv("/proc/self/exe", argv);
  // execv only returns on failure: carry on with the default policy.
}

}  // namespace diffuflow
