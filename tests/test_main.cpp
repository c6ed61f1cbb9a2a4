#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "graph/openmp_policy.hpp"

int main(int argc, char** argv) {
  diffuflow::ensure_passive_openmp(argc, argv);
  doctest::Context context(argc, argv);
  return context.run();
}
