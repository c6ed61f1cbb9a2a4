#!/bin/sh
# Classifier-free guidance on a class-conditional MNIST checkpoint: samples
# COUNT digits (COUNT/10 per class, the same noise) at guidance 1, 2 and 4 and
# scores them with the shipped digit classifier (docs/conditioning.md).
#
#   benchmarks/guidance_eval.sh CHECKPOINT MNIST_DIR OUT_DIR [COUNT] [STEPS] [USE_EMA]
#
# USE_EMA (default true): sample from the checkpoint's EMA weights; false for
# a short run, whose EMA (decay 0.999) still remembers the random init.
# Environment: SETS, more `--set` options for the sampling pipeline
# (e.g. "--set model.precision=bf16 --set sampler.method=dpmpp"); SCALES, the
# guidance scales (default "1 2 4").
# Per scale w, OUT_DIR/w<w>/ holds the grid (one row per digit), the samples,
# and per class the share the classifier recognises as that class, and the
# mean pairwise pixel distance between samples of the class (diversity).
# Prints one table row per w: recognised share per class and mean, mean
# pairwise distance, FID of all samples against the MNIST test images.
set -e
ckpt=$1; mnist=$2; out=$3; count=${4:-150}; steps=${5:-25}; use_ema=${6:-true}
[ -n "$out" ] || { echo "usage: $0 CHECKPOINT MNIST_DIR OUT_DIR [COUNT] [STEPS] [USE_EMA]" >&2; exit 2; }
mkdir -p "$out"
echo "| w | recognised as its class: 0 1 2 3 4 5 6 7 8 9 | mean | pairwise distance | FID (all) | seconds |"
echo "|---|---|---|---|---|---|"
for w in ${SCALES:-1 2 4}; do
  dir=$out/w$w
  start=$(date +%s)
  ./build/diffuflow run pipelines/sample_mnist_cond.yaml --set model.weights="$ckpt" --set model.use_ema="$use_ema" --set sampler.guidance_scale=$w \
    --set sampler.steps="$steps" --set noise.batch_size="$count" --set noise.count="$count" \
    --set writer.nrow=$((count / 10)) --set writer.max_images="$count" --set writer.scale=1 ${SETS:-} --out "$dir" > "$dir.log" 2>&1
  seconds=$(( $(date +%s) - start ))
  /usr/bin/python3 benchmarks/guidance_split.py "$dir/split" "$dir"/samples/*.safetensors > "$dir/diversity.txt"
  shares=""; total=0
  for c in 0 1 2 3 4 5 6 7 8 9; do
    share=$(./build/diffuflow evaluate "$dir/split/class_$c.safetensors" --reference "$mnist" 2>&1 |
            awk -v c=$c '/^classes:/ { for (i = 1; i <= NF; ++i) if ($i == "histogram") print $(i + 1 + c) }')
    shares="$shares $share"
  done
  mean=$(echo "$shares" | awk '{ s = 0; for (i = 1; i <= NF; ++i) s += $i; printf "%.3f", s / NF }')
  pairwise=$(awk '{ s += $6; n += 1 } END { printf "%.2f", s / n }' "$dir/diversity.txt")
  fid=$(./build/diffuflow evaluate "$dir"/samples/samples_000000.safetensors --reference "$mnist" 2>&1 | awk '/^FID:/ { print $2 }')
  echo "| $w |$shares | $mean | $pairwise | $fid | $seconds |"
done
