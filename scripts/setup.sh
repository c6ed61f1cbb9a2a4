#!/usr/bin/env bash
# The README's two set-up commands in one script:
#   scripts/setup.sh quickstart   install, build, run pipelines/quickstart.yaml on built-in data
#   scripts/setup.sh test         install, build, run the whole test suite (ctest)
# It installs only what is missing (Debian packages), builds into build/ and
# reuses it on later calls.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-quickstart}"
# xz-utils: scripts/sanitize.sh tsan unpacks oneTBB's source (fetched with apt-get source).
# openmpi-bin, libopenmpi-dev: data-parallel runs under mpirun (docs/distributed.md) and their tests.
packages=(build-essential cmake ccache libtbb-dev libdnnl-dev libopencv-dev libyaml-cpp-dev
          libboost-program-options-dev doctest-dev nlohmann-json3-dev zlib1g-dev xz-utils
          openmpi-bin libopenmpi-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"

case "$mode" in
  quickstart)
    ./build/diffuflow run pipelines/quickstart.yaml
    ;;
  test)
    cd build && ctest --output-on-failure -j 1
    ;;
  *)
    echo "usage: scripts/setup.sh quickstart|test" >&2
    exit 2
    ;;
esac
