#!/usr/bin/env python3
"""Collects benchmarks/scaling.sh results (<kind>_t<threads>.json from
compare_torch.py) into a CSV, one row per thread count, and prints the
Markdown table the docs show.

    python3 benchmarks/scaling_table.py benchmarks/results/xeon-16core/run2
    python3 benchmarks/scaling_table.py --csv run3/scaling.csv run3/a run3/b run3/c
    ./build/diffuflow plot benchmarks/results/xeon-16core/run2/scaling.csv --x threads \\
        --y diffuflow_f32_forward,torch_f32_forward,diffuflow_f32_train,torch_f32_train \\
        --y-label images/s --categorical --out scaling.png

With one folder the CSV goes to FOLDER/scaling.csv. With several (separate
scaling.sh runs of the same machine, say one round each) every figure is the
median over the folders holding that point, the table adds the range
[min-max] of each, and --csv names the file (required).
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys

KINDS = ["f32", "f32_channels_last", "bf16", "bf16_blocked", "bf16_nhwc", "f32_direct"]
TOOLS = ("diffuflow", "torch")
FIGURES = ("forward", "train", "rss")


def read_folder(folder):
    """{threads: {kind: medians}} of one folder's complete points."""
    points = {}
    for path in glob.glob(os.path.join(folder, "*_t*.json")):
        m = re.fullmatch(r"(.+)_t(\d+)\.json", os.path.basename(path))
        if not m or m.group(1) not in KINDS:
            continue
        with open(path) as f:
            d = json.load(f)
        med = d.get("medians", {})
        ok = all(isinstance(med.get(tool, {}).get(what), (int, float)) and med[tool][what] > 0
                 for tool in TOOLS for what in FIGURES)
        if not ok:  # a failed point (compare_torch writes None medians): left out, said so
            print(f"scaling_table: {path} has no complete result, left out", file=sys.stderr)
            continue
        points.setdefault(int(m.group(2)), {})[m.group(1)] = med
    return points


def combine(folders):
    """{threads: {kind: {tool: {what: [values, one per folder]}}}}"""
    combined = {}
    for folder in folders:
        for t, kinds in read_folder(folder).items():
            for kind, med in kinds.items():
                point = combined.setdefault(t, {}).setdefault(kind, {tool: {w: [] for w in FIGURES} for tool in TOOLS})
                for tool in TOOLS:
                    for what in FIGURES:
                        point[tool][what].append(float(med[tool][what]))
    return combined


def figure(values, with_range):
    text = f"{statistics.median(values):.0f}"
    if with_range and len(values) > 1:
        text += f" [{min(values):.0f}-{max(values):.0f}]"
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--csv", help="the CSV to write (default FOLDER/scaling.csv for one folder)")
    args = ap.parse_args()
    if len(args.folders) > 1 and not args.csv:
        sys.exit("scaling_table: several folders need --csv FILE")
    csv_path = args.csv or os.path.join(args.folders[0], "scaling.csv")
    points = combine(args.folders)
    if not points:
        sys.exit(f"scaling_table: no <kind>_t<threads>.json files in {' '.join(args.folders)}")
    several = len(args.folders) > 1

    columns = ["threads"] + [f"{tool}_{kind}_{what}" for kind in KINDS for tool in TOOLS for what in FIGURES[:2]]
    with open(csv_path, "w") as out:
        out.write(",".join(columns) + "\n")
        for t in sorted(points):
            row = [str(t)]
            for kind in KINDS:
                point = points[t].get(kind)
                for tool in TOOLS:
                    for what in FIGURES[:2]:
                        row.append(f"{statistics.median(point[tool][what]):.1f}" if point else "")
            out.write(",".join(row) + "\n")

    rounds = " (median [min-max] of the folders' medians)" if several else ""
    print(f"| threads | peer | forward img/s diffuflow / torch{rounds} | train img/s diffuflow / torch | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for t in sorted(points):
        for kind in KINDS:
            point = points[t].get(kind)
            if not point:
                continue
            a, b = point["diffuflow"], point["torch"]
            cells = []
            for what in ("forward", "train"):
                ratio = statistics.median(a[what]) / statistics.median(b[what])
                cells.append(f"{figure(a[what], several)} / {figure(b[what], several)} = {ratio:.2f}x")
            print(f"| {t} | {kind} | {cells[0]} | {cells[1]} | {figure(a['rss'], False)} / {figure(b['rss'], False)} |")


if __name__ == "__main__":
    main()
