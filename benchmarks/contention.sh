#!/bin/sh
# How much one competing busy process slows a U-Net training step, diffuflow
# against PyTorch on the same cores: each setup runs with no competitor and
# with one single-threaded busy loop, round by round, alternated.
#
#   benchmarks/contention.sh [DIFFUFLOW] [OUT_DIR]
#   environment: ROUNDS (3), BATCH (32), ITERS (4), THREADS (2), PEER (the
#                python3 that has torch: /usr/bin/python3)
#
# Setups: diffuflow with its default OpenMP wait (a short spin:
# OMP_WAIT_POLICY=active GOMP_SPINCOUNT=3000), with OMP_WAIT_POLICY=passive,
# with a long spin (GOMP_SPINCOUNT=100000) and with OMP_WAIT_POLICY=active
# (spinning for good), diffuflow with one thread, diffuflow with THREADS
# one-thread teams (--teams THREADS: the batch split among them), and the PyTorch peer
# (benchmarks/torch_peer.py) at THREADS threads. Prints one table row per setup
# and competitor: median images/s (range) of forward+backward, unet-s, f32.
set -eu
DIFFUFLOW=${1:-build/diffuflow}
OUT=${2:-runs/contention-$(date +%Y%m%d-%H%M%S)}
ROUNDS=${ROUNDS:-3}
BATCH=${BATCH:-32}
ITERS=${ITERS:-4}
THREADS=${THREADS:-2}
PEER=${PEER:-/usr/bin/python3}
here=$(dirname "$0")
mkdir -p "$OUT"
{ "$DIFFUFLOW" version; uptime; } > "$OUT/machine.txt" 2>&1

round=1
while [ "$round" -le "$ROUNDS" ]; do
  for competitor in none one; do
    burner=""
    if [ "$competitor" = one ]; then
      sh -c 'while :; do :; done' &
      burner=$!
    fi
    env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$DIFFUFLOW" bench-unet --config unet-s --batch "$BATCH" --mode train \
      --iters "$ITERS" --warmup 1 --threads "$THREADS" --json "$OUT/diffuflow_default_${competitor}_r${round}.json" \
      > /dev/null 2>&1
    env -u GOMP_SPINCOUNT OMP_WAIT_POLICY=passive "$DIFFUFLOW" bench-unet --config unet-s --batch "$BATCH" --mode train \
      --iters "$ITERS" --warmup 1 --threads "$THREADS" --json "$OUT/diffuflow_passive_${competitor}_r${round}.json" \
      > /dev/null 2>&1
    env -u OMP_WAIT_POLICY GOMP_SPINCOUNT=100000 "$DIFFUFLOW" bench-unet --config unet-s --batch "$BATCH" --mode train --iters "$ITERS" \
      --warmup 1 --threads "$THREADS" --json "$OUT/diffuflow_spin_${competitor}_r${round}.json" > /dev/null 2>&1
    env -u GOMP_SPINCOUNT OMP_WAIT_POLICY=active "$DIFFUFLOW" bench-unet --config unet-s --batch "$BATCH" --mode train --iters "$ITERS" \
      --warmup 1 --threads "$THREADS" --json "$OUT/diffuflow_active_${competitor}_r${round}.json" > /dev/null 2>&1
    env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$DIFFUFLOW" bench-unet --config unet-s --batch "$BATCH" --mode train \
      --iters "$ITERS" --warmup 1 --threads 1 --json "$OUT/diffuflow_1thread_${competitor}_r${round}.json" > /dev/null 2>&1
    env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$DIFFUFLOW" bench-unet --config unet-s --batch "$BATCH" --mode train \
      --iters "$ITERS" --warmup 1 --threads "$THREADS" --teams "$THREADS" \
      --json "$OUT/diffuflow_teams_${competitor}_r${round}.json" > /dev/null 2>&1
    "$PEER" "$here/torch_peer.py" bench --config unet-s --batch "$BATCH" --threads "$THREADS" --mode train \
      --iters "$ITERS" --warmup 1 --json "$OUT/torch_${competitor}_r${round}.json" > /dev/null 2>&1
    if [ -n "$burner" ]; then kill "$burner"; fi
    echo "round $round, competitor $competitor done ($(uptime | sed 's/.*load/load/'))" >&2
  done
  round=$((round + 1))
done
uptime >> "$OUT/machine.txt"
"$PEER" - "$OUT" <<'EOF'
import glob, json, os, statistics, sys
out = sys.argv[1]
def ips(path):
    d = json.load(open(path))
    if "train" in d:
        return d["batch"] / d["train"]["seconds_median"]
    return d["forward_backward_images_per_s"]
print("| setup | no competitor: images/s | one busy process: images/s | kept |")
print("|---|---|---|---|")
for setup in ["diffuflow_default", "diffuflow_passive", "diffuflow_spin", "diffuflow_active", "diffuflow_1thread",
              "diffuflow_teams", "torch"]:
    cells, medians = [], []
    if not glob.glob(os.path.join(out, f"{setup}_*_r*.json")):
        continue  # (folders measured before the setup existed)
    for competitor in ["none", "one"]:
        values = sorted(ips(p) for p in glob.glob(os.path.join(out, f"{setup}_{competitor}_r*.json")))
        m = statistics.median(values)
        medians.append(m)
        cells.append(f"{m:.1f} ({values[0]:.1f}-{values[-1]:.1f})")
    print(f"| {setup} | {cells[0]} | {cells[1]} | {medians[1] / medians[0]:.2f} |")
EOF
