#!/bin/bash
# Data-parallel training on one machine: `diffuflow bench train` split into
# ranks x threads at the same global batch, every split run once per round
# and the rounds repeated, so that load from elsewhere falls on all of them
# alike. A split with one rank runs as a plain process (no mpirun). Summarised
# by mpi_train_table.py.
#
#   benchmarks/mpi_train.sh [DIFFUFLOW] [OUT_DIR]
#   SPLITS="1x16 2x8 4x4 8x2 16x1 1x1" PRECISIONS="f32 bf16" benchmarks/mpi_train.sh build/diffuflow out
#
# Environment: CONFIG (unet-s), GLOBAL_BATCHES (images per step over all
# ranks, "32 64"; each must divide by every split's ranks), SPLITS (ranks x
# threads, "2x1 1x2"), PRECISIONS ("f32"), TCP (1: multi-rank splits once
# more over TCP on loopback, --mca btl tcp,self; default 1), ROUNDS (3),
# STEPS (8), WARMUP (2), MPIRUN (default: the mpirun beside DIFFUFLOW when
# it is a bundle's launcher, else mpirun), MPIRUN_ARGS (--allow-run-as-root),
# BIND (1: ranks bound to THREADS cores each, --map-by slot:PE=THREADS
# --bind-to core, while the split fits in the usable cores; else, or with
# BIND=0, unbound and oversubscribed), TIMEOUT (seconds per run, 600).
# Files: OUT_DIR/<precision>_<setup>_b<global batch>_r<round>.{json,txt},
# setup proc1x<T> (one process), ranks<R>x<T> (shared memory), tcp<R>x<T>.
set -eu
if [ -n "${BATCHES:-}" ]; then
  echo "mpi_train: BATCHES (per-rank batches) is now GLOBAL_BATCHES (images per step over all ranks)" >&2
  exit 2
fi
DIFFUFLOW=${1:-build/diffuflow}
OUT=${2:-runs/mpi-train-$(date +%Y%m%d-%H%M%S)}
CONFIG=${CONFIG:-unet-s}
GLOBAL_BATCHES=${GLOBAL_BATCHES:-"32 64"}
SPLITS=${SPLITS:-"2x1 1x2"}
PRECISIONS=${PRECISIONS:-f32}
TCP=${TCP:-1}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-8}
WARMUP=${WARMUP:-2}
if [ -z "${MPIRUN:-}" ]; then
  MPIRUN=mpirun
  [ -x "$(dirname "$DIFFUFLOW")/mpirun" ] && MPIRUN=$(dirname "$DIFFUFLOW")/mpirun
fi
MPIRUN_ARGS=${MPIRUN_ARGS:---allow-run-as-root}
BIND=${BIND:-1}
TIMEOUT=${TIMEOUT:-600}
# cores a rank's threads can be bound to: the usable CPUs, at most one per
# physical core (--bind-to core counts cores, not hardware threads)
usable=$(nproc)
cores=$(lscpu -p=CORE,SOCKET 2> /dev/null | grep -v '^#' | sort -u | wc -l)
[ "$cores" -gt 0 ] && [ "$cores" -lt "$usable" ] && usable=$cores
for split in $SPLITS; do
  [[ $split =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || { echo "mpi_train: split $split is not RANKSxTHREADS" >&2; exit 2; }
  for g in $GLOBAL_BATCHES; do
    [ $((g % ${split%x*})) -eq 0 ] || { echo "mpi_train: global batch $g does not divide by ${split%x*} ranks" >&2; exit 2; }
  done
done
mkdir -p "$OUT"
{
  "$DIFFUFLOW" version
  uptime
  "$MPIRUN" --version | head -1
} > "$OUT/machine.txt" 2>&1

common="--config $CONFIG --steps $STEPS --warmup $WARMUP --repeats 1"
# one NAME RANKS THREADS GLOBAL PRECISION [MPIRUN OPTIONS...]
one() {
  local name=$1 ranks=$2 threads=$3 global=$4 precision=$5
  shift 5
  local args="$common --batch $((global / ranks)) --threads $threads --set model.precision=$precision"
  local file="$OUT/${precision}_${name}${ranks}x${threads}_b${global}_r$round"
  if [ "$ranks" = 1 ]; then
    timeout "$TIMEOUT" "$DIFFUFLOW" bench train $args --json "$file.json" > "$file.txt" 2>&1
  else
    local place="--map-by slot:PE=$threads --bind-to core"
    [ "$BIND" = 1 ] && [ $((ranks * threads)) -le "$usable" ] || place="--oversubscribe --bind-to none"
    # shellcheck disable=SC2086  # word splitting of the option lists is intended
    timeout "$TIMEOUT" "$MPIRUN" -np "$ranks" $MPIRUN_ARGS $place "$@" "$DIFFUFLOW" bench train $args \
      --json "$file.json" > "$file.txt" 2>&1
  fi || { echo "mpi_train: $file failed:"; tail -5 "$file.txt"; return 1; }
}
failed=0
round=1
while [ "$round" -le "$ROUNDS" ]; do
  for g in $GLOBAL_BATCHES; do
    for precision in $PRECISIONS; do
      echo "round $round, global batch $g, $precision ($(uptime | sed 's/.*load/load/'))"
      for split in $SPLITS; do
        ranks=${split%x*} threads=${split#*x}
        if [ "$ranks" = 1 ]; then
          one proc 1 "$threads" "$g" "$precision" || failed=1
        else
          one ranks "$ranks" "$threads" "$g" "$precision" || failed=1
          [ "$TCP" = 1 ] && { one tcp "$ranks" "$threads" "$g" "$precision" --mca btl tcp,self || failed=1; }
        fi
      done
    done
  done
  round=$((round + 1))
done
uptime >> "$OUT/machine.txt"
/usr/bin/env python3 "$(dirname "$0")/mpi_train_table.py" "$OUT" | tee "$OUT/summary.md"
exit $failed
