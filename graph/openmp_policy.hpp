// OpenMP wait policy. oneDNN's CPU primitives run on OpenMP threads; by default
// libgomp keeps idle team threads spinning for a while after each parallel
// region. In a flow graph other threads (TBB workers, the waiting main thread,
// data nodes) want the same cores, and a spinning team turns every small
// primitive into a wait for a scheduler time slice: on 2 cores the noising
// chain ran 10-20x slower. A passive policy puts idle team threads to sleep.
//
// libgomp reads OMP_WAIT_POLICY once, when it is loaded, before main(). So
// ensure_passive_openmp() re-executes the program with OMP_WAIT_POLICY=passive
// when the variable is unset; a value the user set is always kept. Binding
// (OMP_PROC_BIND, OMP_PLACES) survives the re-execution: the CPUs of every
// place are given back to the process first (libgomp had pinned it to the
// first place).
#pragma once

#include <vector>

namespace diffuflow {

// The CPUs of every OpenMP place, sorted; empty when no binding was asked for
// (OMP_PROC_BIND, OMP_PLACES unset). With binding the initial thread runs on
// the first place only, and its teams spread over all of them.
std::vector<int> openmp_place_cpus();

// Call first thing in main(). Returns only when no re-execution was needed (or
// it failed, in which case the program goes on with the policy it has).
void ensure_passive_openmp(int argc, char** argv);

}  // namespace diffuflow
