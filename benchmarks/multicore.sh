#!/bin/bash
# Every multi-core measurement docs/performance.md reports, in one run on one
# machine, most important first, so that a run cut short still has its first
# stages complete:
#   1. the machine: `diffuflow version`, lscpu, memory, torch's build;
#      the matmul peak (f32, bf16) at full width and on one thread, the
#      memory bandwidth at full width
#   2. a thread sweep of the U-Net against the PyTorch peer, f32 and bf16
#      (scaling.sh, round a)
#   3. the activations' layout: channels-last against channel-blocked
#      (--activation-layout), bench unet alternated in three rounds at full
#      width and on one thread; bf16 channels-last against the peer on one
#      thread; the bf16 breakdown of both
#   4. teams: the U-Net's batch split among 1, 2, 4, ... N OpenMP teams at
#      the full width (bench unet --teams, alternated in two rounds, f32 and
#      bf16), forward and training; the training graph likewise (bench train
#      --sweep teams, two repeats); the f32 breakdown of one team's steps
#      with N one-thread teams
#   5. ranks x threads: data-parallel training (bench train under mpirun,
#      mpi_train.sh) at the full width split 1 x N, 2 x N/2, ... N x 1, and
#      one process on one thread, f32 and bf16, two rounds
#   6. one thread: three more alternated rounds of f32 and bf16 against the
#      peer (scaling.sh with ROUNDS=3)
#   7. where the time goes at full width and on one thread: bench unet
#      --breakdown, f32 and bf16; each convolution's time and kernel in a
#      training pass at both widths (conv_times.py); with AMX, bf16 also with
#      oneDNN held to AVX512-BF16 (bf16_no_amx)
#   8. a second sweep round (b)
#   9. DDIM-50 sampling against the same loop in PyTorch, alternated
#  10. precision: fastest: the probe's choice and timings at each thread
#      count, and bench train in f32, bf16 and fastest at full width
#  11. the OpenMP wait at full width: the default short spin, longer spins,
#      passive and active, alternated; the default against a long spin at a
#      quarter of the width
#  12. f32 against the channels_last peer; f32 with --convolution direct;
#      Winograd (by_shape) against direct alone, alternated in three rounds
#  13. bf16 training's backward convolutions channels-last (AMX's kernels
#      where the CPU has AMX) against channel-blocked (--bf16-backward):
#      bench unet alternated in three rounds at each thread count, each
#      convolution's kernel and time at full width and on one thread, both
#      against the PyTorch peer at each thread count, and the breakdown of
#      both on one thread
#  14. a third sweep round (c) while the budget lasts
#
#   benchmarks/multicore.sh [DIFFUFLOW] [OUT_DIR]
#   BUDGET=420 benchmarks/multicore.sh build/diffuflow mc-out
#
# DIFFUFLOW is a binary or a bundle's launcher (benchmarks/bundle.sh).
# Environment: THREADS (the sweep's thread counts; default the usable CPUs,
# halved down to 1), BUDGET (seconds; a stage that would end past it is
# skipped, and says so; default 3600), PEER (the python3 with torch),
# STAGES (the stages to run, by name with _ for spaces, e.g. "bf16_backward
# sweep_a"; default all), QUICK=1 (tiny settings that only check the script),
# SAMPLE_BATCH_OVERRIDE and SAMPLE_COUNT_OVERRIDE (the sampling stage's
# chain length and image count; default 256 and 256: diffuflow sample's
# chains, one after a warm-up chain).
# OUT_DIR gets one folder per stage and log.txt; after the sweeps
# scaling_table.py writes OUT_DIR/scaling.csv over the sweep rounds.
set -u
DIFFUFLOW=${1:-build/diffuflow}
OUT=${2:-multicore-out}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PEER=${PEER:-python3}
BUDGET=${BUDGET:-3600}
QUICK=${QUICK:-0}
usable=$("$PEER" -c "import os; print(len(os.sched_getaffinity(0)))" 2>/dev/null || nproc)
if [ -z "${THREADS:-}" ]; then
  THREADS=""
  t=$usable
  while [ "$t" -ge 1 ]; do THREADS="$THREADS $t"; t=$((t / 2)); done
fi
full=$(echo $THREADS | awk '{print $1}')
CONFIG=unet-s BATCH=64 STEPS=5 SAMPLE_BATCH=256 SAMPLE_COUNT=256
[ "$QUICK" = 1 ] && CONFIG=unet-tiny BATCH=8 STEPS=2 SAMPLE_BATCH=8 SAMPLE_COUNT=16
SAMPLE_BATCH=${SAMPLE_BATCH_OVERRIDE:-$SAMPLE_BATCH}
SAMPLE_COUNT=${SAMPLE_COUNT_OVERRIDE:-$SAMPLE_COUNT}
mkdir -p "$OUT" || exit 2
exec > >(tee -a "$OUT/log.txt") 2>&1
start=$(date +%s)
failed=0

# stage NAME SECONDS: true when a stage of about SECONDS fits in the budget.
stage() {
  local now=$(( $(date +%s) - start ))
  if [ -n "${STAGES:-}" ] && ! [[ " $STAGES " == *" ${1// /_} "* ]]; then
    echo "== $1: not in STAGES"
    return 1
  fi
  if [ $((now + $2)) -gt "$BUDGET" ]; then
    echo "== $1: skipped ($now s spent, about $2 s needed, budget $BUDGET s)"
    return 1
  fi
  echo "== $1 (at $now s)"
}
# run NAME CMD...: the command's output to NAME.txt and the log, a failure noted.
run() {
  local name=$1; shift
  local cmd="$*"
  echo "\$ ${cmd//$ROOT\//}" > "$OUT/$name.txt"
  timeout 600 "$@" >> "$OUT/$name.txt" 2>&1
  local rc=$?
  grep -E "images/s|GFLOP/s|GB/s|precision fastest|^ +[0-9]|  [a-z_0-9]+ +[0-9.]+ " "$OUT/$name.txt" | head -40
  [ $rc -eq 0 ] || { echo "multicore: $name failed (exit $rc)"; tail -5 "$OUT/$name.txt"; failed=1; }
}

echo "multicore: $DIFFUFLOW, threads $THREADS, budget $BUDGET s"
{ "$DIFFUFLOW" version; echo; lscpu; echo; free -g
  "$PEER" -c "import torch; print('torch', torch.__version__, torch.backends.cpu.get_cpu_capability())"
} > "$OUT/machine.txt" 2>&1
head -7 "$OUT/machine.txt"

if stage peaks 30; then
  mkdir -p "$OUT/peaks"
  run peaks/matmul "$DIFFUFLOW" bench matmul --threads "$full" --sweep precision=f32,bf16
  run peaks/matmul_t1 "$DIFFUFLOW" bench matmul --threads 1 --sweep precision=f32,bf16
  run peaks/bandwidth "$DIFFUFLOW" bench bandwidth --threads "$full"
fi

sweep() {  # sweep ROUND SECONDS
  if stage "sweep $1" "$2"; then
    ROUNDS=1 KINDS="f32 bf16" "$HERE/scaling.sh" "$DIFFUFLOW" "$OUT/sweep/$1" $THREADS || failed=1
  fi
}
sweep a 150

# The activations' layout: bf16 (and f32 at full width) with channels-last
# activations against channel-blocked, bench unet alternated in three rounds
# at full width and on one thread; bf16 channels-last against the peer on one
# thread in three alternated rounds; the breakdown of both layouts in bf16.
if stage "activation layout" 300; then
  mkdir -p "$OUT/activation_layout"
  for t in $(echo "$full 1" | tr ' ' '\n' | awk 'NF && !seen[$0]++'); do
    precisions=bf16
    [ "$t" = "$full" ] && precisions=bf16,f32
    run "activation_layout/ab_t$t" "$PEER" "$HERE/ab_unet.py" \
        --bin "blocked=$DIFFUFLOW --activation-layout blocked" \
        --bin "channels_last=$DIFFUFLOW --activation-layout channels_last" --rounds 3 --precisions $precisions \
        --json "$OUT/activation_layout/ab_t$t.json" -- --config $CONFIG --batch $BATCH --threads "$t" --steps 3 \
        --warmup 1 --repeats 1
  done
  ROUNDS=$([ "$QUICK" = 1 ] && echo 1 || echo 3) KINDS="bf16_nhwc" "$HERE/scaling.sh" "$DIFFUFLOW" \
      "$OUT/activation_layout/peer" 1 || failed=1
  for t in $(echo "$full 1" | tr ' ' '\n' | awk 'NF && !seen[$0]++'); do
    for layout in blocked channels_last; do
      run "activation_layout/breakdown_${layout}_t$t" "$DIFFUFLOW" bench unet --config $CONFIG --batch $BATCH \
          --threads "$t" --mode both --precision bf16 --activation-layout $layout --breakdown --steps 2 --warmup 1 \
          --repeats 1 --json "$OUT/activation_layout/breakdown_${layout}_t$t.json"
    done
  done
fi

# The batch split among teams at the full width: R OpenMP teams of N/R
# threads each compute a part of every U-Net pass (bench unet --teams),
# alternated in two rounds, then the training graph (bench train: its
# optimiser's step shared among the teams, the loss and noiser on one); the
# one-thread base is the sweep's and the ranks'.
if stage teams 290; then
  mkdir -p "$OUT/teams"
  bins=() counts=""
  for t in $THREADS; do
    r=$((full / t))
    [ $((r * t)) -eq "$full" ] && bins+=(--bin "teams$r=$DIFFUFLOW --teams $r") && counts="$counts${counts:+,}$r"
  done
  run teams/ab "$PEER" "$HERE/ab_unet.py" "${bins[@]}" --rounds 2 --precisions f32,bf16 \
      --json "$OUT/teams/ab.json" -- --config $CONFIG --batch $BATCH --threads "$full" --steps $STEPS --warmup 1 \
      --repeats 1
  for p in f32 bf16; do
    run "teams/train_$p" "$DIFFUFLOW" bench train --config $CONFIG --batch $BATCH --threads "$full" \
        --sweep "teams=$counts" --steps $((STEPS + 1)) --warmup 2 --repeats 2 --set model.precision=$p \
        --json "$OUT/teams/train_$p.json"
  done
  # Where one team's time goes when every thread is a team (part 0's steps).
  run teams/breakdown_f32 "$DIFFUFLOW" bench unet --config $CONFIG --batch $BATCH --threads "$full" --teams "$full" \
      --mode both --breakdown --steps 3 --warmup 1 --repeats 1 --json "$OUT/teams/breakdown_f32.json"
fi

# Data-parallel training at the full width: ranks x threads (mpirun: MPIRUN
# if set, else the one beside a bundle's launcher, else the system's) against
# one process, and one process on one thread for the scaling from one core.
if stage ranks 300; then
  splits="1x1"
  for t in $THREADS; do
    r=$((full / t))
    [ $((r * t)) -eq "$full" ] && [ $((BATCH % r)) -eq 0 ] && splits="$splits ${r}x$t"
  done
  GLOBAL_BATCHES=$BATCH SPLITS="$splits" PRECISIONS="f32 bf16" TCP=0 ROUNDS=2 STEPS=$((STEPS + 1)) WARMUP=2 \
      CONFIG=$CONFIG "$HERE/mpi_train.sh" "$DIFFUFLOW" "$OUT/ranks" || failed=1
fi

# One thread, where run-to-run spread is widest: three more alternated
# rounds of f32 and bf16 against the peer.
if stage "one thread" 80; then
  ROUNDS=$([ "$QUICK" = 1 ] && echo 1 || echo 3) KINDS="f32 bf16" "$HERE/scaling.sh" "$DIFFUFLOW" \
      "$OUT/one_thread" 1 || failed=1
fi


# With AMX, bf16 runs a second time with oneDNN held to AVX512-BF16
# (ONEDNN_MAX_CPU_ISA): the channel-blocked kernels forward and backward
# against AMX's channels-last ones, layer kind by layer kind and convolution
# by convolution.
variants="f32 bf16"
grep -q "ISA: avx512_core_amx" "$OUT/machine.txt" && variants="$variants bf16_no_amx"
variant_env() { [ "$1" = bf16_no_amx ] && echo ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16; }  # for env(1)
precision_of() { echo "${1%_no_amx}"; }

if stage breakdown 100; then
  mkdir -p "$OUT/breakdown"
  for v in $variants; do
    run "breakdown/$v" env $(variant_env $v) "$DIFFUFLOW" bench unet --config $CONFIG --batch $BATCH \
        --threads "$full" --mode both --precision "$(precision_of $v)" --breakdown --steps $STEPS --warmup 1 \
        --repeats 2 --json "$OUT/breakdown/$v.json"
    run "breakdown/${v}_t1" env $(variant_env $v) "$DIFFUFLOW" bench unet --config $CONFIG --batch $BATCH \
        --threads 1 --mode both --precision "$(precision_of $v)" --breakdown --steps 2 --warmup 1 --repeats 1 \
        --json "$OUT/breakdown/${v}_t1.json"
  done
fi

if stage "convolution kernels" 90; then
  mkdir -p "$OUT/kernels"
  for v in $variants; do
    run "kernels/$v" env $(variant_env $v) "$PEER" "$HERE/conv_times.py" -- \
        "$DIFFUFLOW" bench-unet --config $CONFIG --batch $BATCH --threads "$full" --iters 2 --warmup 1 \
        --mode train --precision "$(precision_of $v)" --- \
        "$DIFFUFLOW" bench-unet --config $CONFIG --batch $BATCH --threads 1 --iters 1 --warmup 1 \
        --mode train --precision "$(precision_of $v)"
  done
fi

sweep b 150

if stage sampling 110; then
  mkdir -p "$OUT/sampling"
  for round in 1 2; do
    run "sampling/diffuflow_r$round" "$DIFFUFLOW" bench sample --config $CONFIG --batch $SAMPLE_BATCH \
        --warmup 1 --steps $((SAMPLE_COUNT / SAMPLE_BATCH)) --repeats 1 --threads "$full" \
        --json "$OUT/sampling/diffuflow_r$round.json"
    run "sampling/torch_r$round" "$PEER" "$HERE/torch_peer.py" sample --config $CONFIG \
        --batch $SAMPLE_BATCH --count $SAMPLE_COUNT --steps 50 --threads "$full" \
        --json "$OUT/sampling/torch_r$round.json"
  done
fi

if stage precision 60; then
  mkdir -p "$OUT/precision"
  for t in $THREADS; do
    timeout 600 "$DIFFUFLOW" bench train --config unet-tiny --batch 8 --threads "$t" --steps 1 --warmup 1 \
        --repeats 1 --set model.precision=fastest 2>&1 | grep "precision fastest" \
        | tee -a "$OUT/precision/probe.txt"
  done
  for p in f32 bf16 fastest; do
    run "precision/train_$p" "$DIFFUFLOW" bench train --config $CONFIG --batch $BATCH \
        --threads "$full" --steps $((STEPS * 2)) --warmup 2 --repeats 2 --set model.precision=$p \
        --json "$OUT/precision/train_$p.json"
  done
fi

if stage wait 80; then
  mkdir -p "$OUT/wait"
  quarter=$(echo $THREADS | awk '{print (NF >= 3) ? $3 : ""}')
  wait_run() {  # wait_run THREADS SETTING ROUND
    local env_args=()
    [ "$2" = default ] || env_args=("$2")
    run "wait/t$1_${2//=/_}_r$3" env "${env_args[@]}" "$DIFFUFLOW" bench unet --config $CONFIG \
        --batch $BATCH --threads "$1" --mode both --precision f32 --steps $STEPS --warmup 1 --repeats 1
  }
  for round in 1 2; do
    for setting in default GOMP_SPINCOUNT=30000 GOMP_SPINCOUNT=100000 OMP_WAIT_POLICY=passive \
                   OMP_WAIT_POLICY=active; do
      wait_run "$full" "$setting" $round
    done
    if [ -n "$quarter" ]; then
      for setting in default GOMP_SPINCOUNT=100000; do wait_run "$quarter" "$setting" $round; done
    fi
  done
fi

if stage "channels_last and direct" 40; then
  two=$(echo $THREADS | awk '{print ($NF == 1 && NF > 1) ? $(NF-1) : ""}')  # the 2-thread point
  [ "$two" = "$full" ] && two=""
  ROUNDS=1 KINDS="f32_channels_last f32_direct" "$HERE/scaling.sh" "$DIFFUFLOW" "$OUT/sweep/a" \
      "$full" $two || failed=1
fi

# Winograd (by_shape, the default) against the direct kernels, f32, both
# passes, alternated in three rounds at full width, on 2 threads and on one:
# whether by_shape's choice pays on this CPU, in training too.
if stage "winograd or direct" 90; then
  mkdir -p "$OUT/winograd"
  for t in $(echo "$full $two 1" | tr ' ' '\n' | awk 'NF && !seen[$0]++'); do
    run "winograd/t$t" "$PEER" "$HERE/ab_unet.py" --bin "by_shape=$DIFFUFLOW --convolution by_shape" \
        --bin "direct=$DIFFUFLOW --convolution direct" --rounds 3 --precisions f32 \
        --json "$OUT/winograd/t$t.json" -- --config $CONFIG --batch $BATCH --threads "$t" --steps 3 --warmup 1 \
        --repeats 1
  done
fi

# bf16 training with the backward convolutions channels-last (on AMX, AMX's
# kernels, the forward's layout there) against channel-blocked.
if stage "bf16 backward" 330; then
  mkdir -p "$OUT/bf16_backward"
  for t in $THREADS; do
    run "bf16_backward/ab_t$t" "$PEER" "$HERE/ab_unet.py" \
        --bin "channels_last=$DIFFUFLOW --bf16-backward channels_last" \
        --bin "blocked=$DIFFUFLOW --bf16-backward blocked" --rounds 3 --precisions bf16 \
        --json "$OUT/bf16_backward/ab_t$t.json" -- --config $CONFIG --batch $BATCH --threads "$t" --steps 3 \
        --warmup 1 --repeats 1
  done
  kernels=()
  for t in "$full" 1; do
    for layout in channels_last blocked; do
      [ ${#kernels[@]} -gt 0 ] && kernels+=(---)
      kernels+=("$DIFFUFLOW" bench-unet --config $CONFIG --batch $BATCH --threads "$t" --iters 1 --warmup 1
                --mode train --precision bf16 --bf16-backward $layout)
    done
  done
  run bf16_backward/kernels "$PEER" "$HERE/conv_times.py" -- "${kernels[@]}"
  ROUNDS=1 KINDS="bf16 bf16_blocked" "$HERE/scaling.sh" "$DIFFUFLOW" "$OUT/bf16_backward/peer" $THREADS || failed=1
  for layout in channels_last blocked; do
    run "bf16_backward/breakdown_${layout}_t1" "$DIFFUFLOW" bench unet --config $CONFIG --batch $BATCH \
        --threads 1 --mode both --precision bf16 --bf16-backward $layout --breakdown --steps 2 --warmup 1 \
        --repeats 1 --json "$OUT/bf16_backward/breakdown_${layout}_t1.json"
  done
fi

sweep c 150

rounds=$(ls -d "$OUT"/sweep/? 2>/dev/null)
if [ -n "$rounds" ]; then
  "$PEER" "$HERE/scaling_table.py" --csv "$OUT/scaling.csv" $rounds | tee "$OUT/scaling.md" || failed=1
fi
echo "multicore: done in $(( $(date +%s) - start )) s, exit $failed"
exit $failed
