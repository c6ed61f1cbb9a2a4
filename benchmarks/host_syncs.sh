#!/usr/bin/env bash
# Host syncs per training step: how often the compute thread maps oneDNN
# memory on the host or waits for a stream in one step of the training graph.
#   benchmarks/host_syncs.sh [DIFFUFLOW] [CONFIG] [BATCH]
# Runs `diffuflow bench train` for 4 and for 12 steps with host_syncs.c
# preloaded and divides the difference by 8, so set-up and first-pass work
# cancel out. The compute thread is the one with the most stream waits.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-./build/diffuflow}"
config="${2:-unet-s}"
batch="${3:-8}"
shim="$(mktemp -d)/host_syncs.so"
gcc -O2 -shared -fPIC -o "$shim" benchmarks/host_syncs.c -ldl

count() {  # prints "maps waits" of the thread with the most waits
  LD_PRELOAD="$shim" "$binary" bench train --config "$config" --batch "$batch" --threads 2 --steps "$1" \
      --warmup 0 --repeats 1 2>&1 >/dev/null |
    awk '/^host_syncs:/ { if ($7 > waits) { waits = $7; maps = $5 } } END { print maps, waits }'
}
read -r maps_a waits_a < <(count 4)
read -r maps_b waits_b < <(count 12)
echo "host syncs per training step ($config, batch $batch): host mappings $(( (maps_b - maps_a) / 8 )), stream waits $(( (waits_b - waits_a) / 8 ))"
