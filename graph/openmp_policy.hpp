// OpenMP wait policy. oneDNN's CPU primitives run on OpenMP threads; after each
// parallel region libgomp's idle team threads spin before they sleep
// (GOMP_SPINCOUNT iterations; by default about 300,000, a few ms; with
// OMP_WAIT_POLICY=passive not at all). Measured (docs/performance.md):
// - a sleeping team costs every short primitive a wake-up, and a U-Net pass
//   has hundreds of them: on a 2-core VM passive ran batch-4 forward passes
//   at 0.2-0.3x and training at 0.6-0.7x the speed of a 3,000-iteration spin,
//   and on 16 cores a 100,000-iteration spin trained 1.7-2.0x faster than
//   passive;
// - long spins collapse on a shared machine: a spinning team looks like a
//   core-hog to the scheduler (beside one busy process on 2 cores a
//   100,000-iteration spin kept 0.13 of its speed, passive 0.51).
// The default is a short spin: OMP_WAIT_POLICY=active with GOMP_SPINCOUNT=3000
// (a fraction of a millisecond; libgomp cuts it to 1,000 when its threads
// outnumber the CPUs, where GOMP_SPINCOUNT alone would cut it to 100). It
// bridges the gaps between a pass's primitives and sleeps between passes.
// On a machine shared with busy processes, one-thread teams (teams: equal to
// threads; compute/teams.hpp) degrade least, and OMP_WAIT_POLICY=passive
// less than the default; a value the user set is always kept.
//
// libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when it is loaded,
// before main(). So ensure_openmp_wait_policy() re-executes the program with
// the default when neither is set. Binding (OMP_PROC_BIND, OMP_PLACES)
// survives the re-execution: the CPUs of every place are given back to the
// process first (libgomp had pinned it to the first place).
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

// Why `threads` cannot run as `teams` OpenMP teams in this process, or empty
// when they can: the teams must divide the threads evenly, and not under
// binding (OMP_PROC_BIND, OMP_PLACES), where libgomp binds the threads of
// every team started outside an OpenMP region from the first place, so the
// teams would share the first cores (on 2 cores two bound one-thread teams
// trained at 0.48x the speed of unbound ones).
std::string teams_problem(int threads, int teams);

// "OMP_WAIT_POLICY=active, GOMP_SPINCOUNT=3000", ...: the wait settings
// this process runs with, for version and benchmark records.
std::string describe_openmp_wait_policy();

}  // namespace diffuflow
