#!/bin/bash
# Thread scaling of the U-Net against the PyTorch peer on one machine:
# benchmarks/compare_torch.py at each thread count, for each kind of comparison:
#   f32                 diffuflow f32 against the peer in NCHW
#   f32_channels_last   diffuflow f32 against the peer in channels_last
#   f32_direct          diffuflow f32 with --convolution direct (no Winograd) against the peer in NCHW
#   bf16                diffuflow --precision bf16 against torch.autocast bf16
#   bf16_blocked        the same with --bf16-backward blocked (channel-blocked backward convolutions)
#
#   benchmarks/scaling.sh [DIFFUFLOW] [OUT_DIR] [THREADS...]
#   KINDS="f32 bf16" ROUNDS=2 benchmarks/scaling.sh build/diffuflow scaling-out 16 8 4 2 1
#
# DIFFUFLOW is any binary with the bench-unet command (default build/diffuflow).
# Each comparison writes OUT_DIR/<kind>_t<threads>.json (medians, ratios,
# machine); KEEP=1 also keeps its children's logs in OUT_DIR/<kind>_t<threads>/.
# At the end benchmarks/scaling_table.py writes OUT_DIR/scaling.csv and prints
# the table; `diffuflow plot` draws the CSV. The machine description goes to
# OUT_DIR/machine.txt.
set -u
DIFFUFLOW=${1:-build/diffuflow}
OUT=${2:-scaling-out}
shift $(( $# > 2 ? 2 : $# ))
THREADS=${*:-$(nproc)}
ROUNDS=${ROUNDS:-1}
KINDS=${KINDS:-f32 bf16 f32_channels_last}
HERE=$(cd "$(dirname "$0")" && pwd)
failed=0
for kind in $KINDS; do
  case "$kind" in
    f32|bf16|bf16_blocked|bf16_nhwc|f32_channels_last|f32_direct) ;;
    *) echo "scaling: unknown kind '$kind' (f32, bf16, bf16_blocked, bf16_nhwc, f32_channels_last, f32_direct)" >&2
       exit 2 ;;
  esac
done
mkdir -p "$OUT" || exit 2
{ lscpu; free -g; python3 -c "import torch; print('torch', torch.__version__, torch.backends.cpu.get_cpu_capability())"; } \
    > "$OUT/machine.txt" 2>&1
compare() {
  local name=$1; shift
  echo "== $name"
  local tmp
  tmp=$(mktemp -d) || { failed=1; return; }
  python3 "$HERE/compare_torch.py" --diffuflow "$DIFFUFLOW" --rounds "$ROUNDS" --iters 3 --warmup 1 \
      --keep "$tmp" --json "$OUT/$name.json" "$@" > "$tmp/compare.log" 2>&1
  local rc=$?
  grep -E "round|images/s|RSS" "$tmp/compare.log"
  if [ $rc -ne 0 ]; then echo "scaling: $name failed (exit $rc):"; tail -20 "$tmp/compare.log"; failed=1; fi
  if [ "${KEEP:-0}" = 1 ]; then mv "$tmp" "$OUT/$name"; else rm -rf "$tmp"; fi
}
for kind in $KINDS; do
  for t in $THREADS; do
    case "$kind" in
      f32) compare "f32_t$t" --threads "$t" ;;
      bf16) compare "bf16_t$t" --threads "$t" --diffuflow-args=--precision=bf16 --peer-args=--bf16 ;;
      bf16_blocked) compare "bf16_blocked_t$t" --threads "$t" \
          "--diffuflow-args=--precision=bf16 --bf16-backward=blocked" --peer-args=--bf16 ;;
      bf16_nhwc) compare "bf16_nhwc_t$t" --threads "$t" \
          "--diffuflow-args=--precision=bf16 --activation-layout=channels_last" --peer-args=--bf16 ;;
      f32_channels_last) compare "f32_channels_last_t$t" --threads "$t" --peer-args=--channels-last ;;
      f32_direct) compare "f32_direct_t$t" --threads "$t" --diffuflow-args=--convolution=direct ;;
    esac
  done
done
python3 "$HERE/scaling_table.py" "$OUT" || failed=1
exit $failed
