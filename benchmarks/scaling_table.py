#!/usr/bin/env python3
"""Collects benchmarks/scaling.sh results (OUT_DIR/<kind>_t<threads>.json from
compare_torch.py) into OUT_DIR/scaling.csv, one row per thread count, and
prints the Markdown table the README shows.

    python3 benchmarks/scaling_table.py benchmarks/results/xeon-16core/run2
    ./build/diffuflow plot benchmarks/results/xeon-16core/run2/scaling.csv --x threads \\
        --y diffuflow_f32_forward,torch_f32_forward,diffuflow_f32_train,torch_f32_train \\
        --y-label images/s --categorical --out scaling.png
"""
import glob
import json
import os
import re
import sys

KINDS = ["f32", "f32_channels_last", "bf16"]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = sys.argv[1]
    points = {}
    for path in glob.glob(os.path.join(folder, "*_t*.json")):
        m = re.fullmatch(r"(.+)_t(\d+)\.json", os.path.basename(path))
        if not m or m.group(1) not in KINDS:
            continue
        with open(path) as f:
            d = json.load(f)
        med = d.get("medians", {})
        ok = all(isinstance(med.get(tool, {}).get(what), (int, float)) and med[tool][what] > 0
                 for tool in ("diffuflow", "torch") for what in ("forward", "train", "rss"))
        if not ok:  # a failed point (compare_torch writes None medians): left out, said so
            print(f"scaling_table: {os.path.basename(path)} has no complete result, left out", file=sys.stderr)
            continue
        points.setdefault(int(m.group(2)), {})[m.group(1)] = med
    if not points:
        sys.exit(f"scaling_table: no <kind>_t<threads>.json files in {folder}")
    columns = ["threads"]
    for kind in KINDS:
        for tool in ("diffuflow", "torch"):
            for what in ("forward", "train"):
                columns.append(f"{tool}_{kind}_{what}")
    with open(os.path.join(folder, "scaling.csv"), "w") as out:
        out.write(",".join(columns) + "\n")
        for t in sorted(points):
            row = [str(t)]
            for kind in KINDS:
                med = points[t].get(kind)
                for tool in ("diffuflow", "torch"):
                    for what in ("forward", "train"):
                        row.append(f"{med[tool][what]:.1f}" if med else "")
            out.write(",".join(row) + "\n")
    print("| threads | peer | forward img/s diffuflow / torch | train img/s diffuflow / torch | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for t in sorted(points):
        for kind in KINDS:
            med = points[t].get(kind)
            if not med:
                continue
            a, b = med["diffuflow"], med["torch"]
            print(f"| {t} | {kind} | {a['forward']:.0f} / {b['forward']:.0f} = {a['forward'] / b['forward']:.2f}x "
                  f"| {a['train']:.0f} / {b['train']:.0f} = {a['train'] / b['train']:.2f}x "
                  f"| {a['rss']:.0f} / {b['rss']:.0f} |")


if __name__ == "__main__":
    main()
