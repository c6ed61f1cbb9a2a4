#!/usr/bin/env bash
# The standard benchmarks of the README, into one results folder, each as
# JSON, CSV and a PNG plot, plus a summary table (summary.md) built from the CSVs:
#
#   benchmarks/bench_suite.sh [RESULTS_DIR]          # default runs/bench-<timestamp>
#
# Environment (defaults in brackets):
#   DIFFUFLOW      the binary                          [build/diffuflow]
#   CONFIG         U-Net config                        [unet-s]
#   BATCH          batch size                          [64]
#   REPEATS        repeats of each measurement          [3]
#   TRAIN_STEPS    measured training steps (warm-up 2)  [10]
#   SAMPLE_STEPS   measured DDIM chains (warm-up 1)     [2]
#   DDIM_STEPS     denoising steps per chain            [50]
#   DATA_STEPS     measured data batches (warm-up 2)    [50]
#   BATCHES        the batch sweep                      [16,32,64,128]
#   QUICK=1        tiny settings (unet-tiny, batch 4, 1 repeat) to check the script itself
#
# Run it on a quiet machine: every figure is a wall-time rate.
set -euo pipefail

cd "$(dirname "$0")/.."
DIFFUFLOW=${DIFFUFLOW:-build/diffuflow}
CONFIG=${CONFIG:-unet-s}
BATCH=${BATCH:-64}
REPEATS=${REPEATS:-3}
TRAIN_STEPS=${TRAIN_STEPS:-10}
SAMPLE_STEPS=${SAMPLE_STEPS:-2}
DDIM_STEPS=${DDIM_STEPS:-50}
DATA_STEPS=${DATA_STEPS:-50}
BATCHES=${BATCHES:-16,32,64,128}
if [[ "${QUICK:-0}" == 1 ]]; then
  CONFIG=unet-tiny BATCH=4 REPEATS=1 TRAIN_STEPS=2 SAMPLE_STEPS=1 DDIM_STEPS=3 DATA_STEPS=3 BATCHES=2,4
fi
OUT=${1:-runs/bench-$(date +%Y%m%d-%H%M%S)}
NPROC=$(nproc)
THREADS=$(seq -s, 1 "$NPROC")

if [[ ! -x "$DIFFUFLOW" ]]; then
  echo "bench_suite: no binary at $DIFFUFLOW (build first, or set DIFFUFLOW)" >&2
  exit 2
fi
mkdir -p "$OUT"
echo "bench_suite: $CONFIG, batch $BATCH, $NPROC cores, $REPEATS repeats -> $OUT"

# bench NAME ARGS...: one experiment, its console output kept next to its files.
bench() {
  local name=$1
  shift
  echo "== $name: diffuflow bench $*"
  "$DIFFUFLOW" bench "$@" --repeats "$REPEATS" \
    --json "$OUT/$name.json" --csv "$OUT/$name.csv" --plot "$OUT/$name.png" | tee "$OUT/$name.txt"
}

COMMON=(--config "$CONFIG" --batch "$BATCH")
SAMPLE=(--warmup 1 --steps "$SAMPLE_STEPS" --set "sampler.steps=$DDIM_STEPS")
bench train "train" "${COMMON[@]}" --warmup 2 --steps "$TRAIN_STEPS"
bench sample "sample" "${COMMON[@]}" "${SAMPLE[@]}"
bench data "data" --batch "$BATCH" --warmup 2 --steps "$DATA_STEPS"
bench unet "unet" "${COMMON[@]}" --warmup 1 --steps "$TRAIN_STEPS"
bench train_threads "train" "${COMMON[@]}" --warmup 2 --steps "$TRAIN_STEPS" --sweep "threads=$THREADS"
bench sample_threads "sample" "${COMMON[@]}" "${SAMPLE[@]}" --sweep "threads=$THREADS"
bench train_batch "train" --config "$CONFIG" --warmup 2 --steps "$TRAIN_STEPS" --sweep "batch=$BATCHES"
bench sample_batch "sample" --config "$CONFIG" "${SAMPLE[@]}" --sweep "batch=$BATCHES"

# summary.md: one table of every row of every CSV.
{
  echo "# diffuflow bench suite"
  echo
  grep -m1 '^machine:' "$OUT/train.txt" | sed 's/^/- /'
  grep -m1 '^oneDNN ISA:' "$OUT/train.txt" | sed 's/^/- /'
  grep -m1 '^versions:' "$OUT/train.txt" | sed 's/^/- /'
  echo "- $REPEATS repeats per row; images/s is the median, [min, max] the range"
  echo
  echo "| experiment | sweep | threads | batch | images/s | min | max | model busy | U-Net forwards/s | peak RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for name in train sample data unet train_threads sample_threads train_batch sample_batch; do
    tail -n +2 "$OUT/$name.csv" | while IFS=, read -r kind sweep value config threads batch steps warmup repeats \
      median min max model compute forwards step_ms rss; do
      sweep_text=${sweep:+$sweep=$value}
      model_text=$([[ $kind == train ]] && awk -v m="$model" 'BEGIN { printf "%.1f%%", m * 100 }' || echo "")
      forwards_text=$([[ $kind == sample ]] && awk -v f="$forwards" 'BEGIN { printf "%.2f", f }' || echo "")
      awk -v n="$name" -v s="$sweep_text" -v t="$threads" -v b="$batch" -v md="$median" -v lo="$min" -v hi="$max" \
        -v m="$model_text" -v f="$forwards_text" -v r="$rss" \
        'BEGIN { printf "| %s | %s | %s | %s | %.1f | %.1f | %.1f | %s | %s | %.0f |\n", n, s, t, b, md, lo, hi, m, f, r }'
    done
  done
} > "$OUT/summary.md"
cat "$OUT/summary.md"
echo "bench_suite: results in $OUT"
