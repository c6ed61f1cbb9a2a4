#!/usr/bin/env python3
"""Medians and ranges of the runs mpi_train.sh wrote: one Markdown row per
setup and global batch (images/s over all processes, per-rank step time,
gradient-sum time and the part of it not hidden behind the backward pass)."""
import glob
import json
import os
import re
import statistics
import sys


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "."
    rows = {}
    for path in sorted(glob.glob(os.path.join(folder, "*_b*_r*.json"))):
        m = re.match(r"(\w+?)_b(\d+)_r(\d+)\.json", os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            result = json.load(f)["results"][0]
        rep = result["repeats"][0]
        steps = [r["step_ms_median"] for r in rep.get("ranks", [])] or [rep["step_ms_median"]]
        rows.setdefault((m.group(1), int(m.group(2))), []).append(
            (rep["images_per_s"], max(steps), rep.get("exposed_comm_ms_per_step", 0.0),
             rep.get("allreduce_ms_per_step", 0.0)))
    names = {"ranks2x1": "2 ranks x 1 thread (shared memory)", "tcp2x1": "2 ranks x 1 thread (TCP loopback)",
             "proc1x2": "1 process x 2 threads"}
    print("| setup | global batch | images/s median (range) | step ms (slowest rank) | allreduce ms/step "
          "| exposed ms/step | runs |")
    print("|---|---|---|---|---|---|---|")
    for (setup, batch), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ips = [r[0] for r in runs]
        med = lambda i: statistics.median(r[i] for r in runs)
        print(f"| {names.get(setup, setup)} | {batch} | {statistics.median(ips):.1f} ({min(ips):.1f}-{max(ips):.1f}) "
              f"| {med(1):.0f} | {med(3):.1f} | {med(2):.2f} | {len(runs)} |")


if __name__ == "__main__":
    main()
