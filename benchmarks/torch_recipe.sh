#!/bin/sh
# The PyTorch reference recipe's quality over time on MNIST, scored as
# diffuflow's own runs are (docs/training.md): `torch_peer.py train` (unet-s,
# Adam 2e-4, batch 64, epsilon, EMA 0.999, PyTorch's default init) writes a
# checkpoint every SAVE_EVERY seconds of training; then `diffuflow evaluate`
# draws COUNT samples from each checkpoint's EMA weights with every sampler of
# SAMPLERS and scores them against the MNIST test set with the shipped
# classifier. Training and scoring run one after the other, never together.
#
#   benchmarks/torch_recipe.sh MNIST_DIR OUT_DIR
#   environment: MAX_TIME (1800 seconds of training), SAVE_EVERY (300),
#                THREADS (2), COUNT (1000), PEER (python3), DIFFUFLOW (build/diffuflow),
#                TRAIN_ARGS (more `torch_peer.py train` options, e.g. --channels-last),
#                SAMPLERS ("sde10 ddim50"; sde10: SDE-DPM-Solver++ in 10 steps,
#                dpmpp10: DPM-Solver++ 2M in 10 steps, ddim50: DDIM-50),
#                DDIM_EVERY (1: score DDIM-50 on every checkpoint, 2: every other one, ...)
#
# Results: OUT_DIR/train.log and train.jsonl, OUT_DIR/step_<n>.safetensors,
# OUT_DIR/<checkpoint>.<sampler>.json (evaluate's figures) and .log, machine.txt, and the
# table on stdout: minutes of training, step, FID per sampler.
set -eu
mnist=$1; out=$2
MAX_TIME=${MAX_TIME:-1800}; SAVE_EVERY=${SAVE_EVERY:-300}; THREADS=${THREADS:-2}; COUNT=${COUNT:-1000}
PEER=${PEER:-python3}; DIFFUFLOW=${DIFFUFLOW:-build/diffuflow}; TRAIN_ARGS=${TRAIN_ARGS:-}
SAMPLERS=${SAMPLERS:-"sde10 ddim50"}; DDIM_EVERY=${DDIM_EVERY:-1}
here=$(dirname "$0")
mkdir -p "$out"
{ "$DIFFUFLOW" version; uptime; } > "$out/machine.txt" 2>&1

# shellcheck disable=SC2086
"$PEER" "$here/torch_peer.py" train --data "$mnist" --out "$out" --max-time "$MAX_TIME" \
    --save-every "$SAVE_EVERY" --threads "$THREADS" $TRAIN_ARGS 2>&1 | tee "$out/train.log"

sampler_options() {
  case $1 in
    sde10) echo "--method dpmpp --sample-steps 10 --scheduler algorithm_type=sde-dpmsolver++" ;;
    dpmpp10) echo "--method dpmpp --sample-steps 10" ;;
    ddim50) echo "--method ddim --sample-steps 50" ;;
    *) echo "torch_recipe: unknown sampler '$1' (sde10, dpmpp10, ddim50)" >&2; exit 2 ;;
  esac
}

index=0
for ckpt in "$out"/step_*.safetensors; do
  index=$((index + 1))
  for sampler in $SAMPLERS; do
    if [ "$sampler" = ddim50 ] && [ $((index % DDIM_EVERY)) -ne 0 ]; then continue; fi
    # shellcheck disable=SC2046
    log="${ckpt%.safetensors}.$sampler.log"
    "$DIFFUFLOW" evaluate "$ckpt" --reference "$mnist" --count "$COUNT" \
        $(sampler_options "$sampler") --json "${ckpt%.safetensors}.$sampler.json" > "$log" 2>&1 ||
      { cat "$log" >&2; echo "torch_recipe: evaluate failed on $ckpt ($sampler)" >&2; exit 2; }
  done
done

"$PEER" - "$out" $SAMPLERS <<'EOF'
import glob, json, os, struct, sys
out, samplers = sys.argv[1], sys.argv[2:]
print("| minutes of training | step | " + " | ".join(f"FID {s}" for s in samplers) + " |")
print("|---|---|" + "---|" * len(samplers))
for ckpt in sorted(glob.glob(os.path.join(out, "step_*.safetensors"))):
    with open(ckpt, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(n))["__metadata__"]
    cells = []
    for s in samplers:
        path = ckpt[:-len(".safetensors")] + f".{s}.json"
        cells.append(f"{json.load(open(path))['fid']:.3f}" if os.path.exists(path) else "-")
    minutes = float(meta["training_seconds"]) / 60
    print(f"| {minutes:.1f} | {meta['step']} | " + " | ".join(cells) + " |")
EOF
