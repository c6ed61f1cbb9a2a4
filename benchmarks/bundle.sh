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
# itself (libc, libm, the loader) is the target machine's.
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

# Library search order of the binary: RUNPATH, then the system's.
runpath=$(readelf -d "$BINARY" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p' | tr ':' ' ')
find_lib() {
  local dir
  for dir in $runpath /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib; do
    [ -e "$dir/$1" ] && { echo "$dir/$1"; return 0; }
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

# Every other library the binary loads, transitively, glibc's own excepted.
declare -A seen
todo=$(needed "$BINARY" | grep -v '^libopencv_' || true)
while [ -n "$todo" ]; do
  next=""
  for lib in $todo; do
    [ -n "${seen[$lib]:-}" ] && continue
    seen[$lib]=1
    is_glibc "$lib" && continue
    path=$(find_lib "$lib") || { echo "bundle: $lib not found" >&2; exit 2; }
    cp -L "$path" "$root/lib/$lib"
    next="$next $(needed "$path")"
  done
  todo=$next
done

cat > "$root/diffuflow" <<'EOF'
#!/bin/sh
# diffuflow with the libraries beside it (made by benchmarks/bundle.sh).
here=$(cd "$(dirname "$0")" && pwd)
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/diffuflow" "$@"
EOF
chmod +x "$root/diffuflow"
tar -C "$work" -cf - diffuflow-bundle | xz -T0 -6 > "$OUT"
echo "bundle: $OUT ($(du -h "$OUT" | cut -f1)): $(ls "$root/lib" | wc -l) libraries, OpenCV stubbed ($cv_libs)" | tr '\n' ' '
echo
