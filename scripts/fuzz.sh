#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz into build-fuzz/ (clang, with
# AddressSanitizer and UndefinedBehaviorSanitizer) and runs each for SECONDS.
#   scripts/fuzz.sh [SECONDS]        default 60 seconds per target
#   scripts/fuzz.sh 300 fuzz_pipeline   only the targets named
# Seeds and regression inputs: tests/fuzz/corpus/<target>/ (replayed first,
# never written to). New inputs go to build-fuzz/corpus/<target>/, crashing
# ones to build-fuzz/artifacts/<target>/. Exits non-zero when a target found
# a crash, a hang, a leak, a huge allocation or a sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(fuzz_pipeline fuzz_safetensors)
jobs="${JOBS:-$(nproc)}"

CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDIFFUFLOW_FUZZ=ON -DDIFFUFLOW_BUILD_TESTS=OFF
cmake --build build-fuzz -j "$jobs" --target "${targets[@]}"

# Longest input per target: pipelines are short YAML files; a few KiB of
# safetensors covers every header shape the reader distinguishes.
max_len() {
  case "$1" in
    fuzz_pipeline) echo 4096 ;;
    fuzz_safetensors) echo 4096 ;;
    *) echo 4096 ;;
  esac
}

export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMP_NUM_THREADS=1

failed=()
for target in "${targets[@]}"; do
  seeds="tests/fuzz/corpus/$target"
  work="build-fuzz/corpus/$target"
  artifacts="build-fuzz/artifacts/$target/"
  mkdir -p "$work" "$artifacts"
  dict=()
  [ -f "tests/fuzz/$target.dict" ] && dict=(-dict="tests/fuzz/$target.dict")
  echo "fuzz: $target for $seconds s"
  # -timeout: one input taking over 10 s is a hang; -malloc_limit_mb: a single
  # allocation over 512 MiB from a 4 KiB input is an absurd one.
  log="build-fuzz/$target.log"
  status=0
  "build-fuzz/tests/fuzz/$target" "$work" "$seeds" "${dict[@]}" \
    -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=512 -artifact_prefix="$artifacts" \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  tail -n 40 "$log"
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target exited with $status (log: $log)" >&2
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in build-fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: no crash in ${targets[*]}"
