#!/bin/bash
# benchmarks/bundle.sh makes a bundle that runs on its own libraries: every
# library the binary loads, glibc's aside, resolves inside the bundle; the
# bench commands run; a call into the stubbed OpenCV ends the program with
# exit 70 and a message saying so.
#
#   tests/scripts/bundle_test.sh BINARY
set -u
BINARY=$1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "bundle_test: $*"; exit 1; }

"$ROOT/benchmarks/bundle.sh" "$BINARY" "$work/bundle.tar.xz" || fail "bundle.sh failed"
tar -C "$work" -xJf "$work/bundle.tar.xz" || fail "cannot unpack the bundle"
bundle=$work/diffuflow-bundle
[ -x "$bundle/diffuflow" ] && [ -x "$bundle/bin/diffuflow" ] || fail "no launcher or binary in the bundle"

# Where the loader finds each library with the launcher's search path.
trace=$(LD_LIBRARY_PATH="$bundle/lib" LD_TRACE_LOADED_OBJECTS=1 "$bundle/bin/diffuflow") || fail "no loader trace"
outside=$(echo "$trace" | awk '$2 == "=>" {print $1 " " $3}' | grep -v " $bundle/lib/" |
          grep -Ev '^(libc|libm|libpthread|libdl|librt|libresolv)\.so' || true)
[ -z "$outside" ] || fail "libraries from outside the bundle: $outside"
echo "$trace" | grep -q "libopencv_core.so.* => $bundle/lib/" || fail "OpenCV is not the bundle's stub"

"$bundle/diffuflow" version > "$work/version.txt" 2>&1 || fail "version: $(cat "$work/version.txt")"
grep -q "oneDNN" "$work/version.txt" || fail "version printed no oneDNN"
"$bundle/diffuflow" bench matmul --threads 1 --repeats 1 --steps 1 --warmup 0 > "$work/matmul.txt" 2>&1 ||
    fail "bench matmul: $(tail -3 "$work/matmul.txt")"
grep -q "GFLOP/s" "$work/matmul.txt" || fail "bench matmul printed no rate"

# The quick-start pipeline draws previews: the first OpenCV call ends it.
(cd "$ROOT" && "$bundle/diffuflow" run pipelines/quickstart.yaml --max-steps 1 --out "$work/run") \
    > "$work/run.txt" 2>&1
rc=$?
[ $rc -eq 70 ] || fail "a pipeline that draws exited $rc, not 70: $(tail -3 "$work/run.txt")"
grep -q "this bundle has no OpenCV (_ZN2cv" "$work/run.txt" || fail "no message naming the OpenCV call"
echo "bundle_test: ok"
