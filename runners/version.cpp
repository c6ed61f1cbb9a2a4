// `diffuflow version` (also `diffuflow --version`): what this binary is and
// what it runs on, for bug reports and benchmark records.
//
//   diffuflow 0.1.0
//   oneDNN 2.6.3 (commit 9a2fc5f..., OpenMP CPU runtime)
//   oneTBB 2021.8.0 (runtime; built against 2021.8)
//   CPU: Intel(R) Xeon(R) ...
//   ISA: avx2 (what oneDNN dispatches to)
//   CPUs: 16 usable of 16 online
//   OpenMP wait: OMP_WAIT_POLICY=active, GOMP_SPINCOUNT=3000
#include "graph/device.hpp"
#include "graph/openmp_policy.hpp"
#include "runners/command.hpp"

#include <dnnl.hpp>
#include <oneapi/tbb/version.h>

#include <iostream>
#include <string>

#ifndef DIFFUFLOW_VERSION
#error "DIFFUFLOW_VERSION (the CMake project version) must be defined"
#endif

namespace diffuflow {

namespace {

std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  const std::string runtime = v->cpu_runtime == DNNL_RUNTIME_OMP   ? "OpenMP"
                              : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB"
                              : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential"
                                                                   : "other";
  std::string text = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  const std::string hash = v->hash ? v->hash : "";
  return text + " (" + (hash.empty() || hash == "N/A" ? "" : "commit " + hash + ", ") + runtime + " CPU runtime)";
}

int run_version(const ParsedOptions&) {
  std::cout << "diffuflow " << DIFFUFLOW_VERSION << "\n"
            << "oneDNN " << onednn_version() << "\n"
            << "oneTBB " << TBB_runtime_version() << " (runtime; built against " << TBB_VERSION_STRING << ")\n"
            << "CPU: " << describe_cpu_model() << "\n"
            << "ISA: " << describe_cpu_isa() << " (what oneDNN dispatches to)\n"
            << "CPUs: " << describe_cpu_count() << "\n"
            << "OpenMP wait: " << describe_openmp_wait_policy() << "\n";
  return kExitOk;
}

}  // namespace

DIFFUFLOW_REGISTER_COMMAND(version, "print the versions of diffuflow, oneDNN and oneTBB, the CPU and its ISA (also --version)",
                           OptionTable{}, run_version);

}  // namespace diffuflow
