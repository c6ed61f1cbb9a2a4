// OpenMP wait policy. oneDNN's CPU primitives run on OpenMP threads; after each
// parallel region libgomp's idle team threads spin before they sleep: by
// default about 300,000 iterations (a few ms), with OMP_WAIT_POLICY=active
// for good, with passive not at all. Measured (docs/performance.md):
// - spinning wins on a machine of its own: each of the hundreds of short
//   primitives in a U-Net pass otherwise wakes a sleeping team; on 16 cores
//   GOMP_SPINCOUNT=100000 ran the training pass 1.7-2.0x faster than passive;
// - spinning collapses on a shared machine: a spinning team looks like a
//   core-hog to the scheduler; on 2 cores beside one busy process the same
//   pass kept 0.13 of its speed with GOMP_SPINCOUNT=100000 and 0.51 passive,
//   and in a flow graph a spinning team takes the time slices of TBB workers
//   and data nodes (the 2-core training graph at half speed when active).
// The default is the robust one, passive; users with a dedicated machine set
// GOMP_SPINCOUNT (or OMP_WAIT_POLICY) themselves.
//
// libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when it is loaded,
// before main(). So ensure_openmp_wait_policy() re-executes the program with
// OMP_WAIT_POLICY=passive when neither is set; a value the user set is always
// kept. Binding (OMP_PROC_BIND, OMP_PLACES) survives the re-execution: the
// CPUs of every place are given back to the process first (libgomp had
// pinned it to the first place).
#pragma once

#include <string>
#include <vector>

namespace diffuflow {

// The CPUs of every OpenMP place, sorted; empty when no binding was asked for
// (OMP_PROC_BIND, OMP_PLACES unset). With binding the initial thread runs on
// the first place only, and its teams spread over all of them.
std::vector<int> openmp_place_cpus();

// Call first thing in main(). Returns only when no re-execution was needed (or
// it failed, in which case the program goes on with the policy it has).
void ensure_openmp_wait_policy(int argc, char** argv);

// "OMP_WAIT_POLICY=passive", "GOMP_SPINCOUNT=100000", ...: the wait settings
// this process runs with, for version and benchmark records.
std::string describe_openmp_wait_policy();

}  // namespace diffuflow
