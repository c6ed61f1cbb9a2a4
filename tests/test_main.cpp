#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "graph/openmp_policy.hpp"

int main(int argc, char** argv) {
  diffuflow::ensure_openmp_wait_policy(argc, argv);
  doctest::Context context(argc, argv);
  return context.run();
}
