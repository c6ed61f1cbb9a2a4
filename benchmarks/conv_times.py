#!/usr/bin/env python3
"""Per-layer convolution times of a diffuflow run, from oneDNN's verbose log.

Runs one command under ONEDNN_VERBOSE=1 and sums, for each convolution shape and pass
(forward, backward data, backward weights), the median execution time of its calls, with the
kernel oneDNN ran and how many calls there were:

  python3 benchmarks/conv_times.py -- build/diffuflow bench-unet --config unet-s --batch 64 \\
      --threads 2 --iters 3 --convolution winograd

Several commands, separated by `---`, run one after the other, and the table then has one
column per command (the same shapes side by side, e.g. --convolution direct and winograd):

  python3 benchmarks/conv_times.py -- CMD1 ... --- CMD2 ...

The kernel named is that of the most frequent call, with its source's layout (oneDNN's letters:
acdb channels-last, aBcd16b channel-blocked); the time of a shape and pass is the median of its
calls, so warm-up passes and stray slow calls weigh little. The last rows total, per pass, the
median times the calls of every shape (comparable between commands run with the same passes).
Other primitive kinds instead of convolutions: --kinds matmul,inner_product (before the `--`);
their shapes are then prefixed with the kind, and a matmul's pass (it has none) reads `any`.
Standard library only.
"""

import collections
import os
import statistics
import subprocess
import sys

PASSES = {"forward_training": "fwd", "forward_inference": "fwd", "backward_data": "bwd_d",
          "backward_weights": "bwd_w", "undef": "any"}


def run(cmd, kinds=("convolution",)):
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True).stdout
    times = collections.defaultdict(list)
    kernels = collections.defaultdict(collections.Counter)
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) < 10 or fields[1] != "exec" or fields[3] not in kinds:
            continue
        shape = fields[-2] if kinds == ("convolution",) else f"{fields[3]} {fields[-2]}"
        key = (shape, PASSES.get(fields[5], fields[5]))
        times[key].append(float(fields[-1]))
        src = fields[6].split(" ")[0].split(":")  # e.g. src_bf16::blocked:acdb:f0
        layout = src[3] if len(src) > 3 else "?"
        kernels[key][f"{fields[4]} {layout}"] += 1
    return {k: (statistics.median(v), len(v), kernels[k].most_common(1)[0][0]) for k, v in times.items()}


def main():
    args = sys.argv[1:]
    kinds = ("convolution",)
    if args[:1] == ["--kinds"] and len(args) > 1:
        kinds = tuple(args[1].split(","))
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    commands, current = [], []
    for a in args:
        if a == "---":
            commands.append(current)
            current = []
        else:
            current.append(a)
    commands.append(current)
    results = [run(c, kinds) for c in commands if c]
    keys = sorted(set().union(*results), key=lambda k: (k[0], k[1]))
    for i, c in enumerate(commands):
        print(f"[{i + 1}] {' '.join(c)}")
    header = f"{'shape':<62}{'pass':<7}" + "".join(f"{f'[{i + 1}] ms':>10}{'calls':>7}  {'kernel':<34}"
                                                 for i in range(len(results)))
    print(header)
    for k in keys:
        row = f"{k[0]:<62}{k[1]:<7}"
        for r in results:
            ms, calls, kernel = r.get(k, (float("nan"), 0, "-"))
            row += f"{ms:>10.3f}{calls:>7}  {kernel:<34}"
        print(row)
    for pass_name in sorted({k[1] for k in keys}):
        row = f"{'total (median x calls)':<62}{pass_name:<7}"
        for r in results:
            total = sum(ms * calls for (shape, p), (ms, calls, _) in r.items() if p == pass_name)
            row += f"{total:>10.2f}{'':>7}  {'':<34}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
