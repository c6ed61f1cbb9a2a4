#!/bin/bash
# Pack a diffuflow binary with the shared libraries it loads into one
# .tar.xz, to benchmark on an x86-64 Linux machine that has none of the
# Debian packages (its glibc must be at least the build machine's).
#
#   benchmarks/bundle.sh [BINARY] [OUT.tar.xz]
#   benchmarks/bundle.sh build/diffuflow diffuflow-bundle.tar.xz
#
# The archive unpacks to diffuflow-bundle/: `diffuflow` (a launcher that puts
# lib/ first on the library path), bin/diffuflow (stripped) and lib/. glibc
# itself (libc, libm, the loader) is the target machine's. A binary built
# with Open MPI also gets `mpirun` (Open MPI's launcher with its components,
# for ranks x threads on one machine: run `diffuflow-bundle/mpirun -np R ...
# diffuflow-bundle/diffuflow bench train ...`) and mpi/.
#
# OpenCV is left out: with its image codecs it loads about 200 MiB of
# libraries (GDAL, codecs, BLAS) that no benchmark uses. In its place go stub
# libraries of the same names that define exactly the OpenCV symbols the
# binary imports; calling any of them ends the program with a message. So the
# bundle runs `bench unet|matmul|bandwidth|train|sample|data` (without
# --roofline or --plot, which draw PNGs: keep --json and draw with the full
# build's `diffuflow roofline` or `diffuflow plot`) and pipelines that read no
# images, write none and draw nothing; it is not a general-purpose build.
set -euo pipefail
BINARY=${1:-build/diffuflow}
OUT=${2:-diffuflow-bundle.tar.xz}
[ -x "$BINARY" ] || { echo "bundle: no executable $BINARY" >&2; exit 2; }
OUT=$(realpath -m "$OUT")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/diffuflow-bundle
mkdir -p "$root/bin" "$root/lib" "$work/stub"
strip -o "$root/bin/diffuflow" "$BINARY"

# Library search order: the loading file's RUNPATH, the binary's, then the system's.
runpath_of() { readelf -d "$1" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p' | tr ':' ' '; }
runpath=$(runpath_of "$BINARY")
find_lib() {  # find_lib LIB [DIR...]
  local lib=$1 dir
  shift
  for dir in "$@" $runpath /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib; do
    [ -e "$dir/$lib" ] && { echo "$dir/$lib"; return 0; }
  done
  return 1
}
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
is_glibc() { [[ $1 =~ ^(libc|libm|libpthread|libdl|librt|libresolv|ld-linux-x86-64)\.so ]]; }

# The OpenCV stubs: one function per imported OpenCV function, each ending the
# program with the function's name. The only imported OpenCV data is
# cv::Exception's type information; it comes from a real class (in the stub
# of the library that defines it), so a catch clause naming it still works.
cv_libs=$(needed "$BINARY" | grep '^libopencv_' || true)
undefined=$(nm -D --undefined-only "$BINARY" | awk '{print $NF}' | sed 's/@.*//' | sort -u)
for sym in $(echo "$undefined" | grep '^_ZT[IVS]N2cv' || true); do
  [ "$sym" = _ZTIN2cv9ExceptionE ] || { echo "bundle: the binary imports $sym, which no stub provides" >&2; exit 2; }
done
for lib in $cv_libs; do
  path=$(find_lib "$lib") || { echo "bundle: $lib not found" >&2; exit 2; }
  defined=$(nm -D --defined-only "$path" | awk '{print $3}' | sort -u)
  imported=$(comm -12 <(echo "$undefined") <(echo "$defined"))
  {
    echo '#include <cstdio>'
    echo '#include <cstdlib>'
    echo '#include <exception>'
    echo '[[noreturn]] static void no_opencv(const char* name) {'
    echo '  std::fprintf(stderr, "diffuflow: this bundle has no OpenCV (%s was called): reading, writing"'
    echo '               " and drawing images need the full build\n", name);'
    echo '  std::_Exit(70);'
    echo '}'
    if echo "$imported" | grep -qx _ZTIN2cv9ExceptionE; then
      echo 'namespace cv { class Exception : public std::exception { public: ~Exception() override; };'
      echo 'Exception::~Exception() = default; }'
    fi
    n=0
    for sym in $(echo "$imported" | grep -v '^_ZT[IVS]N2cv' || true); do
      n=$((n + 1))
      echo "extern \"C\" [[noreturn]] void stub_$n() __asm__(\"$sym\");"
      echo "void stub_$n() { no_opencv(\"$sym\"); }"
    done
  } > "$work/stub/$lib.cpp"
  ${CXX:-g++} -shared -fPIC -O1 -o "$root/lib/$lib" -Wl,-soname,"$lib" "$work/stub/$lib.cpp"
done

# Every other library the given files load, transitively, into lib/ (glibc's
# own excepted, and the OpenCV libraries, stubbed above).
declare -A seen
copy_deps() {
  local file lib path todo=()
  for file in "$@"; do
    for lib in $(needed "$file"); do
      [ -n "${seen[$lib]:-}" ] && continue
      seen[$lib]=1
      is_glibc "$lib" && continue
      [[ $lib == libopencv_* ]] && continue
      path=$(find_lib "$lib" $(runpath_of "$file")) || { echo "bundle: $lib (for $file) not found" >&2; exit 2; }
      cp -L "$path" "$root/lib/$lib"
      todo+=("$path")
    done
  done
  [ ${#todo[@]} -eq 0 ] || copy_deps "${todo[@]}"
}
copy_deps "$BINARY"

# Open MPI's launcher, for ranks x threads runs on one machine: orterun as
# bin/mpirun with the components and help files it and the ranks load, kept
# at their installed paths under mpi/ (OPAL_DESTDIR and PMIX_DESTDIR, set by
# the mpirun launcher, put that prefix before every path Open MPI and PMIx
# look in). Components for networks between machines (UCX, libfabric,
# InfiniBand verbs, PSM) and OpenSHMEM's are left out: the bundle's MPI runs
# over shared memory and TCP on one machine. Skipped when the binary has no
# Open MPI (MPI=0 skips it too).
mpi_note="no MPI"
if [ "${MPI:-1}" != 0 ] && needed "$BINARY" | grep '^libmpi\.so\.40$' > /dev/null && command -v orterun > /dev/null \
    && command -v ompi_info > /dev/null; then
  ompi_path() { ompi_info --path "$1" --parsable | sed -n "s/^path:$1://p"; }
  pkglibdir=$(ompi_path pkglibdir)
  pkgdatadir=$(ompi_path pkgdatadir)
  sysconfdir=$(ompi_path sysconfdir)
  mpi=$root/mpi
  mkdir -p "$mpi$pkglibdir" "$mpi$pkgdatadir" "$mpi$sysconfdir"
  cp -L "$(command -v orterun)" "$root/bin/mpirun"
  copy_deps "$root/bin/mpirun"
  remote='^lib(ucp|ucs|uct|fabric|ibverbs|rdmacm|psm2|psm_infinipath|oshmem|nl-3)\.'
  components=()
  for so in "$pkglibdir"/mca_*.so; do
    # the libraries a component loads, its own common libraries' included
    # (one not found is reported by copy_deps below)
    deps=$(needed "$so"
           for lib in $(needed "$so" | grep '^libmca_common_' || true); do
             path=$(find_lib "$lib" $(runpath_of "$so")) && needed "$path"
           done || true)
    grep -E "$remote" <<< "$deps" > /dev/null && continue
    cp "$so" "$mpi$pkglibdir/"
    components+=("$so")
  done
  copy_deps "${components[@]}"
  cp -r "$pkgdatadir/." "$mpi$pkgdatadir/"
  # An external PMIx, which Open MPI's launcher and ranks load: its plugins
  # and help files (an Open MPI with its internal PMIx has none apart).
  pmix_prefix=""
  if path=$(find_lib libpmix.so.2 $(runpath_of "$root/bin/mpirun") \
            $(for so in "${components[@]}"; do runpath_of "$so"; done | sort -u)); then
    pmix_prefix=$(dirname "$(dirname "$(readlink -f "$path")")")
  fi
  if [ -n "$pmix_prefix" ] && [ -d "$pmix_prefix/lib/pmix" ]; then
    mkdir -p "$mpi$pmix_prefix/lib"
    cp -r "$pmix_prefix/lib/pmix" "$mpi$pmix_prefix/lib/"
    copy_deps "$pmix_prefix"/lib/pmix/*.so
    # (not Debian's pmix-mca-params.conf: it names the plugins' folder
    # without PMIX_DESTDIR, where the default path has it)
    if [ -d "$pmix_prefix/share/pmix" ]; then
      mkdir -p "$mpi$pmix_prefix/share"
      cp -r "$pmix_prefix/share/pmix" "$mpi$pmix_prefix/share/"
    fi
  fi
  {
    echo '# Open MPI parameters of the bundle (made by benchmarks/bundle.sh)'
    echo 'btl_base_warn_component_unused = 0'
    # no cross-memory attach between ranks: containers often forbid it, and
    # vader then fails in the middle of a run
    echo 'btl_vader_single_copy_mechanism = none'
  } > "$mpi$sysconfdir/openmpi-mca-params.conf"
  cat > "$root/mpirun" <<'EOF'
#!/bin/sh
# Open MPI's mpirun with the bundle's libraries and components (made by
# benchmarks/bundle.sh); run diffuflow-bundle/diffuflow under it.
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OPAL_DESTDIR="$here/mpi" PMIX_DESTDIR="$here/mpi"
exec "$here/bin/mpirun" "$@"
EOF
  chmod +x "$root/mpirun"
  mpi_note="Open MPI $(ompi_info --parsable | sed -n 's/^ompi:version:full://p') with ${#components[@]} components"
fi

cat > "$root/diffuflow" <<'EOF'
#!/bin/sh
# diffuflow with the libraries beside it (made by benchmarks/bundle.sh).
here=$(cd "$(dirname "$0")" && pwd)
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/diffuflow" "$@"
EOF
chmod +x "$root/diffuflow"
tar -C "$work" -cf - diffuflow-bundle | xz -T0 -6 > "$OUT"
echo "bundle: $OUT ($(du -h "$OUT" | cut -f1)): $(ls "$root/lib" | wc -l) libraries, OpenCV stubbed ($cv_libs), $mpi_note" | tr '\n' ' '
echo
