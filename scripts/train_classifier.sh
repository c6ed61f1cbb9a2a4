#!/usr/bin/env bash
# Regenerates data/mnist_classifier.safetensors, the digit classifier whose
# features FID and KID are computed on (docs/evaluation.md): trains it with
# pipelines/train_classifier.yaml on the full MNIST folder given and copies
# the exported EMA weights into data/.
#   scripts/train_classifier.sh PATH/TO/MNIST [BUILD_DIR]
# About two minutes on 2 cores; prints the test accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: scripts/train_classifier.sh PATH/TO/MNIST [BUILD_DIR]" >&2
  exit 2
fi
mnist="$1"
build="${2:-build}"
out=runs/train_classifier
rm -rf "$out"
"$build/diffuflow" run pipelines/train_classifier.yaml --set data.path="$mnist" --set test_set.path="$mnist" \
  --out "$out" --progress 30
mkdir -p data
cp "$out/mnist_classifier.safetensors" data/mnist_classifier.safetensors
echo "wrote data/mnist_classifier.safetensors"
