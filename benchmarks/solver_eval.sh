#!/bin/sh
# Samplers side by side on one checkpoint: the same weights, seed and starting
# noise for DPM-Solver++ 10 and 20 steps, Euler 20, DDIM-50 and DDPM-1000;
# each sample set timed and scored by FID/KID with the shipped digit
# classifier (docs/evaluation.md). ROUNDS > 1 repeats the timed sampling,
# alternating the samplers, and reports the median time.
#
#   benchmarks/solver_eval.sh CHECKPOINT MNIST_DIR OUT_DIR [COUNT] [DDPM_COUNT]
#   environment: ROUNDS (2), SAMPLE_ARGS (extra `diffuflow sample` options,
#                e.g. "--precision bf16 --guidance 2"), DIFFUFLOW (build/diffuflow),
#                RUNS (the samplers: METHOD:STEPS[:NAME:KEY=VALUE,KEY=VALUE...]
#                each, the optional part naming a variant and its schedule keys,
#                e.g. "dpmpp:20 dpmpp:20:3m:solver_order=3")
#
# COUNT (500) images per solver; DDPM-1000 draws the first DDPM_COUNT (40) of
# them only (a thousand model calls per image), for the picture and its time:
# FID at so few images says little, so its row has none. On a class-conditional
# checkpoint `diffuflow sample` draws every class in turn (--class all).
set -eu
ckpt=$1; mnist=$2; out=$3; count=${4:-500}; ddpm_count=${5:-40}
ROUNDS=${ROUNDS:-2}
SAMPLE_ARGS=${SAMPLE_ARGS:-}
DIFFUFLOW=${DIFFUFLOW:-build/diffuflow}
mkdir -p "$out"
{ "$DIFFUFLOW" version; uptime; } > "$out/machine.txt" 2>&1

seconds_of() {  # runs a command, prints its wall time in seconds
  start=$(date +%s.%N)
  "$@" > /dev/null 2>&1
  end=$(date +%s.%N)
  echo "$start $end" | awk '{ printf "%.2f", $2 - $1 }'
}

runs=${RUNS:-"dpmpp:10 dpmpp:20 euler:20 ddim:50 ddpm:1000"}

# A run's parts: method, steps, output name, and its --set options.
parse_run() {
  method=$(echo "$1" | cut -d: -f1); steps=$(echo "$1" | cut -d: -f2)
  variant=$(echo "$1" | cut -d: -f3); keys=$(echo "$1" | cut -d: -f4)
  name=${method}_${steps}; [ -n "$variant" ] && name=${name}_${variant}
  sets=""
  for kv in $(echo "$keys" | tr ',' ' '); do sets="$sets --set schedule.$kv"; done
}

round=1
while [ "$round" -le "$ROUNDS" ]; do
  for run in $runs; do
    parse_run "$run"
    n=$count; [ "$method" = ddpm ] && n=$ddpm_count
    # shellcheck disable=SC2086
    t=$(seconds_of "$DIFFUFLOW" sample "$ckpt" -q -n "$n" --sampler "$method" --steps "$steps" --seed 0 \
        $SAMPLE_ARGS $sets -o "$out/$name.png")
    echo "$t" >> "$out/$name.seconds"
    echo "round $round: $name, $n images: $t s ($(uptime | sed 's/.*load/load/'))" >&2
  done
  round=$((round + 1))
done
uptime >> "$out/machine.txt"

echo "| sampler | model calls | images | seconds (median of $ROUNDS) | seconds per image | FID | KID |"
echo "|---|---|---|---|---|---|---|"
for run in $runs; do
  parse_run "$run"
  n=$count; [ "$method" = ddpm ] && n=$ddpm_count
  t=$(sort -n "$out/$name.seconds" | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f", m }')
  per=$(echo "$t $n" | awk '{ printf "%.3f", $1 / $2 }')
  fid=-; kid=-
  if [ "$method" != ddpm ]; then
    "$DIFFUFLOW" evaluate "$out/$name.safetensors" --reference "$mnist" \
      --json "$out/$name.json" > "$out/$name.eval.txt" 2>&1
    fid=$(awk '/^FID:/ { print $2 }' "$out/$name.eval.txt")
    kid=$(awk '/^KID/ { print $2 }' "$out/$name.eval.txt")
  fi
  echo "| $method${variant:+ $variant} ${keys:+($keys)} | $steps | $n | $t | $per | $fid | $kid |"
done
