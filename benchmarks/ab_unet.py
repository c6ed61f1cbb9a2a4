#!/usr/bin/env python3
"""A/B speed of two or more diffuflow binaries on the U-Net alone, alternated in one invocation.

Each round runs `BINARY bench unet --mode both --json ...` once per binary and precision, in
turn (A B A B ...), so a shared machine's drift falls on every binary alike. Prints, per binary
and precision, the median and range over every repeat of every round of the forward and the
forward+backward images/s and each one's fraction of the matmul peak measured in the same run,
and the ratios against the first binary.

  python3 benchmarks/ab_unet.py --bin base=OLD/diffuflow --bin fused=NEW/diffuflow \\
      --rounds 2 --precisions f32,bf16 [--json FILE] -- --config unet-s --batch 64 --threads 2 --repeats 3

Arguments after `--` go to every `bench unet`; words after a binary's path go to its runs only, so
one binary can be compared with itself under two settings:

  python3 benchmarks/ab_unet.py --bin "direct=build/diffuflow --convolution direct" \\
      --bin "by_shape=build/diffuflow --convolution by_shape" --precisions f32 -- --batch 64 --threads 2

Standard library only.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", action="append", required=True, help="NAME=PATH of a diffuflow binary")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precisions", default="f32,bf16")
    parser.add_argument("--json", help="write every repeat and the summaries here")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    bins = [b.split("=", 1) for b in args.bin]
    if any(len(b) != 2 or not b[1].strip() for b in bins):
        parser.error("--bin takes NAME=PATH [ARGS...]")
    bins = [(name, shlex.split(spec)) for name, spec in bins]
    extra = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    precisions = args.precisions.split(",")
    keys = ["forward_images_per_s", "forward_backward_images_per_s", "forward_fraction_of_peak",
            "forward_backward_fraction_of_peak", "matmul_peak_gflops_per_s"]
    runs = {(name, p): {k: [] for k in keys} for name, _ in bins for p in precisions}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for p in precisions:
                for name, (path, *own) in bins:
                    out = os.path.join(tmp, "r.json")
                    cmd = [path, "bench", "unet", "--mode", "both", "--precision", p, "--json", out] + own + extra
                    print(f"round {r + 1}/{args.rounds}: {name} {p}", file=sys.stderr, flush=True)
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    with open(out) as f:
                        result = json.load(f)["results"][0]
                    for rep in result["repeats"]:
                        for k in keys:
                            if isinstance(rep.get(k), (int, float)):
                                runs[(name, p)][k].append(rep[k])
    table = {}
    base = bins[0][0]
    for p in precisions:
        print(f"\n{p}: median [min-max] over {args.rounds} rounds x repeats")
        print(f"  {'binary':<12}{'forward img/s':>26}{'of peak':>9}{'fwd+bwd img/s':>26}{'of peak':>9}"
              f"{'peak GFLOP/s':>14}{'fwd ratio':>11}{'f+b ratio':>11}")
        for name, _ in bins:
            s = {k: summary(v) for k, v in runs[(name, p)].items() if v}
            table[f"{name}/{p}"] = s
            b = {k: summary(v) for k, v in runs[(base, p)].items() if v}
            f, t = s["forward_images_per_s"], s["forward_backward_images_per_s"]
            span = lambda x: f"{x['median']:.1f} [{x['min']:.1f}-{x['max']:.1f}]"
            frac = lambda k: f"{100 * s[k]['median']:.0f}%" if k in s else "-"
            peak = f"{s['matmul_peak_gflops_per_s']['median']:.0f}" if "matmul_peak_gflops_per_s" in s else "-"
            print(f"  {name:<12}{span(f):>26}{frac('forward_fraction_of_peak'):>9}{span(t):>26}"
                  f"{frac('forward_backward_fraction_of_peak'):>9}{peak:>14}"
                  f"{f['median'] / b['forward_images_per_s']['median']:>11.3f}"
                  f"{t['median'] / b['forward_backward_images_per_s']['median']:>11.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bins": {name: shlex.join(spec) for name, spec in bins}, "precisions": precisions, "rounds": args.rounds, "bench_args": extra,
                       "repeats": {f"{n}/{p}": v for (n, p), v in runs.items()}, "summary": table}, f, indent=2)


if __name__ == "__main__":
    main()
