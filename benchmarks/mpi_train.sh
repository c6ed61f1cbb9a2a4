#!/bin/sh
# Data-parallel training on one machine: `diffuflow bench train` with 2 ranks x
# 1 thread (shared memory, then TCP on loopback) against 1 process x 2 threads
# at the same global batch, run alternately round by round so that load from
# elsewhere falls on all of them alike. Summarised by mpi_train_table.py.
#
#   benchmarks/mpi_train.sh [DIFFUFLOW] [OUT_DIR]
#   environment: CONFIG (unet-s), BATCHES (per-rank batches, "16 32"), ROUNDS (3),
#                STEPS (8), WARMUP (2), MPIRUN (mpirun), MPIRUN_ARGS
#                (--oversubscribe --allow-run-as-root)
set -eu
DIFFUFLOW=${1:-build/diffuflow}
OUT=${2:-runs/mpi-train-$(date +%Y%m%d-%H%M%S)}
CONFIG=${CONFIG:-unet-s}
BATCHES=${BATCHES:-"16 32"}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-8}
WARMUP=${WARMUP:-2}
MPIRUN=${MPIRUN:-mpirun}
MPIRUN_ARGS=${MPIRUN_ARGS:---oversubscribe --allow-run-as-root}
mkdir -p "$OUT"
{
  "$DIFFUFLOW" version
  uptime
  "$MPIRUN" --version | head -1
} > "$OUT/machine.txt" 2>&1
common="--config $CONFIG --steps $STEPS --warmup $WARMUP --repeats 1"
round=1
while [ "$round" -le "$ROUNDS" ]; do
  for b in $BATCHES; do
    global=$((2 * b))
    echo "round $round, per-rank batch $b, global $global ($(uptime | sed 's/.*load/load/'))"
    $MPIRUN -np 2 $MPIRUN_ARGS "$DIFFUFLOW" bench train $common --batch "$b" --threads 1 \
      --json "$OUT/ranks2x1_b${global}_r${round}.json" > "$OUT/ranks2x1_b${global}_r${round}.txt" 2>&1
    "$DIFFUFLOW" bench train $common --batch "$global" --threads 2 \
      --json "$OUT/proc1x2_b${global}_r${round}.json" > "$OUT/proc1x2_b${global}_r${round}.txt" 2>&1
    $MPIRUN -np 2 $MPIRUN_ARGS --mca btl tcp,self "$DIFFUFLOW" bench train $common --batch "$b" --threads 1 \
      --json "$OUT/tcp2x1_b${global}_r${round}.json" > "$OUT/tcp2x1_b${global}_r${round}.txt" 2>&1
  done
  round=$((round + 1))
done
uptime >> "$OUT/machine.txt"
/usr/bin/env python3 "$(dirname "$0")/mpi_train_table.py" "$OUT" | tee "$OUT/summary.md"
