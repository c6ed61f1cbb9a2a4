#!/usr/bin/env bash
# Builds and runs the test suite under sanitizers.
#   runners/sanitize.sh asan   build-asan/: AddressSanitizer + UndefinedBehaviorSanitizer
#   runners/sanitize.sh tsan   build-tsan/: ThreadSanitizer
#   runners/sanitize.sh all    both (the default)
# Extra arguments after the mode go to ctest (e.g. -R graph_tests).
# BUILD_TYPE (default RelWithDebInfo) and JOBS (default nproc) may be set;
# TARGETS (e.g. "graph_tests") builds only those targets, for a quick run
# together with a matching ctest -R.
# Exits non-zero when the build fails or a test (or a sanitizer report) fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

mode="${1:-all}"
[ $# -gt 0 ] && shift
build_type="${BUILD_TYPE:-RelWithDebInfo}"
jobs="${JOBS:-$(nproc)}"

run_asan() {
  local start=$SECONDS
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE="$build_type" -DDIFFUFLOW_SANITIZE_ADDRESS=ON
  cmake --build build-asan -j "$jobs" ${TARGETS:+--target $TARGETS}
  local built=$SECONDS
  # oneDNN's JIT and OpenMP keep some allocations for the life of the process;
  # those are reported as leaks only if no pointer to them is left, so leak
  # detection stays on. tests/fuzz/ubsan.supp silences UBSan's vptr check for
  # oneTBB's flow-graph task types only (see the file).
  ( cd build-asan &&
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$root/tests/fuzz/ubsan.supp" \
    ctest --output-on-failure -j 1 "$@" )
  echo "sanitize: asan build $((built - start)) s, tests $((SECONDS - built)) s, total $((SECONDS - start)) s"
}

run_tsan() {
  local start=$SECONDS
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE="$build_type" -DDIFFUFLOW_SANITIZE_THREAD=ON
  cmake --build build-tsan -j "$jobs" ${TARGETS:+--target $TARGETS}
  local built=$SECONDS
  # oneDNN and libgomp are not instrumented: reports inside them are false
  # positives and are suppressed (tests/fuzz/tsan.supp), nothing else is.
  ( cd build-tsan &&
    TSAN_OPTIONS="suppressions=$root/tests/fuzz/tsan.supp:halt_on_error=1:second_deadlock_stack=1:history_size=4" \
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
    ctest --output-on-failure -j 1 "$@" )
  echo "sanitize: tsan build $((built - start)) s, tests $((SECONDS - built)) s, total $((SECONDS - start)) s"
}

case "$mode" in
  asan) run_asan "$@" ;;
  tsan) run_tsan "$@" ;;
  all)  run_asan "$@"; run_tsan "$@" ;;
  *) echo "usage: runners/sanitize.sh [asan|tsan|all] [ctest arguments]" >&2; exit 2 ;;
esac
