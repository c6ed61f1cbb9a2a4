#!/bin/bash
# benchmarks/bundle.sh makes a bundle that runs on its own libraries: every
# library the binary loads, glibc's aside, resolves inside the bundle; the
# bench commands run; a call into the stubbed OpenCV ends the program with
# exit 70 and a message saying so. With Open MPI, the bundle's mpirun runs two
# ranks of bench train on the bundle's libraries and components (with the
# system's Open MPI and PMIx hidden where a mount namespace can be made).
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
# (bundle.sh's own condition for packing mpirun)
if [ "${MPI:-1}" = 0 ] || ! readelf -d "$BINARY" | grep -q 'NEEDED.*\[libmpi\.so\.40\]' ||
   ! command -v orterun > /dev/null || ! command -v ompi_info > /dev/null; then
  echo "bundle_test: ok (no Open MPI in this build, or MPI=0: the bundle's mpirun not checked)"
  exit 0
fi
[ -x "$bundle/mpirun" ] && [ -x "$bundle/bin/mpirun" ] || fail "no mpirun in a bundle of an Open MPI build"
for file in "$bundle/bin/mpirun" $(find "$bundle/mpi" -name '*.so'); do
  trace=$(LD_LIBRARY_PATH="$bundle/lib" ldd "$file") || fail "no loader trace of $file"
  outside=$(echo "$trace" | awk '$2 == "=>" {print $1 " " $3}' | grep -v " $bundle/lib/" |
            grep -Ev '^(libc|libm|libpthread|libdl|librt|libresolv)\.so' || true)
  [ -z "$outside" ] || fail "$file loads libraries from outside the bundle: $outside"
done
# Two ranks of bench train; the system's Open MPI components, help files and
# PMIx hidden under empty folders when this user may make a mount namespace.
hide=""
for dir in "$(ompi_info --path pkglibdir --parsable | sed -n 's/^path:pkglibdir://p')" \
           "$(ompi_info --path pkgdatadir --parsable | sed -n 's/^path:pkgdatadir://p')" \
           $(find "$bundle/mpi" \( -path '*/lib/pmix' -o -path '*/share/pmix' \) -type d | sed "s|^$bundle/mpi||"); do
  [ -d "$dir" ] && hide="$hide mount -t tmpfs none '$dir' &&"
done
as_root=""
[ "$(id -u)" = 0 ] && as_root=--allow-run-as-root
ranks="'$bundle/mpirun' -np 2 --oversubscribe $as_root '$bundle/diffuflow' bench train --config unet-tiny \
       --batch 2 --threads 1 --steps 2 --warmup 1 --repeats 1"
hidden=no
mkdir "$work/probe"
if unshare -m sh -c "mount -t tmpfs none '$work/probe'" 2> /dev/null; then
  (cd "$ROOT" && unshare -m sh -c "$hide $ranks") > "$work/ranks.txt" 2>&1 || fail "two ranks: $(tail -5 "$work/ranks.txt")"
  hidden=yes
else
  (cd "$ROOT" && sh -c "$ranks") > "$work/ranks.txt" 2>&1 || fail "two ranks: $(tail -5 "$work/ranks.txt")"
fi
# a missing component or help file shows as a complaint, not a failure
complaint=$(grep -E -m3 "Sorry!|help file|failed to add|WARNING" "$work/ranks.txt")
[ -z "$complaint" ] || fail "Open MPI complained: $complaint"
grep -q "^processes: 2" "$work/ranks.txt" || fail "bench train under the bundle's mpirun ran no 2 processes"
echo "bundle_test: ok (two ranks under the bundle's mpirun; system's Open MPI hidden: $hidden)"
