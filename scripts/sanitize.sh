#!/usr/bin/env bash
# Builds and runs the test suite under sanitizers.
#   scripts/sanitize.sh asan   build-asan/: AddressSanitizer + UndefinedBehaviorSanitizer
#   scripts/sanitize.sh tsan   build-tsan/: ThreadSanitizer
#   scripts/sanitize.sh all    both (the default)
# Extra arguments after the mode go to ctest (e.g. -R graph_tests).
# BUILD_TYPE (default RelWithDebInfo) and JOBS (default nproc) may be set;
# TARGETS (e.g. "graph_tests") builds only those targets, for a quick run
# together with a matching ctest -R.
# Exits non-zero when the build fails or a test (or a sanitizer report) fails.
set -euo pipefail
shopt -s inherit_errexit
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

# ThreadSanitizer only sees the synchronisation of instrumented code, and every
# node body runs on oneTBB's workers, which Debian's libtbb.so hands tasks to
# without instrumentation. So the tsan build links a oneTBB built with
# -fsanitize=thread from the upstream tarball of Debian's onetbb source package
# of the same release, installed under build-tsan-onetbb/ (the package's own
# patches touch only its tests, other architectures and warning flags, so the
# tarball is built as it is). `apt-get source` fetches the package once from the
# machine's own apt sources, verifying it against their signed index; the
# tarball is then checked against the SHA-256 below, which is also the one the
# package's .dsc lists. TSAN_TBB_DIR=<prefix> uses a TSan-built oneTBB you
# already have.
onetbb_version=2021.8.0
onetbb_sha256=7e9111b8bb59c8800bf6d0b06afe7b0891937443d2dae1ee1101c8e2ede6a7ef

# Source entries for apt: the machine's own when it has deb-src entries,
# otherwise a private copy of its apt sources with every entry turned into a
# deb-src one, under $1 (the system's configuration is left as it is, and no
# root is needed). Prints the apt-get options that select the copy.
apt_source_options() {
  local conf=$1 records
  records=$(apt-cache showsrc onetbb 2>/dev/null || true)
  grep -q "^Version: $onetbb_version-" <<< "$records" && return
  local list parts
  eval "$(apt-config shell list Dir::Etc::sourcelist/f parts Dir::Etc::sourceparts/d)"
  rm -rf "$conf"
  mkdir -p "$conf/sources.list.d" "$conf/lists/partial" "$conf/cache/archives/partial"
  local f out=$conf/sources.list
  : > "$out"
  for f in "$list" "$parts"*.list; do
    [ -f "$f" ] && sed -nE 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" >> "$out"
  done
  for f in "$parts"*.sources; do
    [ -f "$f" ] && sed -E 's/^Types:.*$/Types: deb-src/I' "$f" > "$conf/sources.list.d/$(basename "$f")"
  done
  printf '%s\n' -o "Dir::Etc::SourceList=$out" -o "Dir::Etc::SourceParts=$conf/sources.list.d" \
    -o "Dir::State::Lists=$conf/lists" -o "Dir::Cache=$conf/cache"
}

# Downloads onetbb's source package into $1 (once) and checks the tarball.
fetch_onetbb_source() {
  local dir=$1
  local tarball=$dir/onetbb_${onetbb_version}.orig.tar.xz
  if [ ! -f "$tarball" ]; then
    command -v apt-get > /dev/null ||
      { echo "sanitize: apt-get is needed to fetch oneTBB's source (or set TSAN_TBB_DIR)" >&2; return 1; }
    local options=() text
    text=$(apt_source_options "$dir/apt")
    if [ -n "$text" ]; then
      mapfile -t options <<< "$text"
      echo "sanitize: no deb-src entry for onetbb here; fetching source indexes with a copy of the apt sources" >&2
      # A source that has no source index fails its part alone; what matters is onetbb below.
      apt-get "${options[@]}" update >&2 || echo "sanitize: note: apt-get update reported errors" >&2
    fi
    local version
    version=$( (apt-cache "${options[@]}" showsrc onetbb 2>/dev/null || true) | sed -n 's/^Version: //p' |
              (grep "^$onetbb_version-" || true) | sort -V | tail -n 1)
    [ -n "$version" ] ||
      { echo "sanitize: apt knows no onetbb source package of release $onetbb_version" >&2; return 1; }
    ( cd "$dir" && apt-get "${options[@]}" source --download-only "onetbb=$version" >&2 ) ||
      { echo "sanitize: apt-get source onetbb=$version failed" >&2; return 1; }
    local dsc=$dir/onetbb_${version#*:}.dsc
    grep -qE "^ $onetbb_sha256 [0-9]+ onetbb_${onetbb_version}\.orig\.tar\.xz\$" "$dsc" ||
      { echo "sanitize: $dsc does not list the expected SHA-256 for onetbb_${onetbb_version}.orig.tar.xz" >&2
        return 1; }
  fi
  echo "$onetbb_sha256  $tarball" | sha256sum --check --quiet >&2 ||
    { echo "sanitize: $tarball does not match its checksum; delete it and retry" >&2; return 1; }
}

build_tsan_onetbb() {
  local dir=$root/build-tsan-onetbb
  local prefix=$dir/install
  if [ -f "$prefix/lib/cmake/TBB/TBBConfig.cmake" ]; then
    echo "$prefix"
    return
  fi
  local installed
  installed=$(dpkg-query -W -f='${Version}' libtbb-dev 2>/dev/null || true)
  case "$installed" in
    "$onetbb_version"-*) ;;
    *) echo "sanitize: note: libtbb-dev here is '$installed'; the TSan build uses" \
            "oneTBB $onetbb_version (its own headers and library)" >&2 ;;
  esac
  mkdir -p "$dir"
  fetch_onetbb_source "$dir"
  rm -rf "$dir/oneTBB-$onetbb_version" "$dir/build"
  tar -C "$dir" -xf "$dir/onetbb_${onetbb_version}.orig.tar.xz"
  cmake -S "$dir/oneTBB-$onetbb_version" -B "$dir/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTBB_SANITIZE=thread -DTBB_TEST=OFF -DTBB_STRICT=OFF -DTBBMALLOC_BUILD=OFF -DTBB_ENABLE_IPO=OFF \
    -DCMAKE_INSTALL_PREFIX="$prefix" >&2
  cmake --build "$dir/build" -j "$jobs" >&2
  cmake --install "$dir/build" >&2
  echo "$prefix"
}

run_tsan() {
  local start=$SECONDS
  local tbb_prefix=${TSAN_TBB_DIR:-}
  [ -n "$tbb_prefix" ] || tbb_prefix=$(build_tsan_onetbb)
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE="$build_type" -DDIFFUFLOW_SANITIZE_THREAD=ON \
    -DTBB_DIR="$tbb_prefix/lib/cmake/TBB"
  cmake --build build-tsan -j "$jobs" ${TARGETS:+--target $TARGETS}
  local built=$SECONDS
  # oneDNN and libgomp are not instrumented: reports inside them are false
  # positives and are suppressed (tests/fuzz/tsan.supp), nothing else is.
  # The binaries carry the instrumented libtbb.so.12 in their run path; a
  # report from Debian's would mean it was not picked up.
  tbb_prefix=$(realpath "$tbb_prefix")
  local target exe deps
  for target in ${TARGETS:-graph_tests diffuflow}; do
    for exe in build-tsan/tests/"$target" build-tsan/"$target"; do
      [ -f "$exe" ] && [ -x "$exe" ] && break
    done
    [ -f "$exe" ] && [ -x "$exe" ] || continue
    deps=$(ldd "$exe")
    grep -qF "$tbb_prefix/lib/libtbb.so" <<< "$deps" ||
      { echo "sanitize: $exe does not load the TSan-built libtbb.so from $tbb_prefix/lib" >&2; return 1; }
  done
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
  *) echo "usage: scripts/sanitize.sh [asan|tsan|all] [ctest arguments]" >&2; exit 2 ;;
esac
