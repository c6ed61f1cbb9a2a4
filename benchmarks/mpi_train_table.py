#!/usr/bin/env python3
"""Medians and ranges of the runs mpi_train.sh wrote: one Markdown row per
precision, global batch and setup (images/s over all processes; against one
process with as many threads, and against one process on one thread where
those ran; the slowest rank's step time, the gradient sums' time and the part
of it not hidden behind the backward pass)."""
import glob
import json
import os
import re
import statistics
import sys

NAME = re.compile(r"(?:(f32|bf16|fastest)_)?(proc|ranks|tcp)(\d+)x(\d+)_b(\d+)_r(\d+)\.json")
TRANSPORT = {"proc": "", "ranks": " (shared memory)", "tcp": " (TCP loopback)"}


def read(folder):
    rows = {}
    for path in sorted(glob.glob(os.path.join(folder, "*_b*_r*.json"))):
        m = NAME.fullmatch(os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            rep = json.load(f)["results"][0]["repeats"][0]
        if rep.get("processes", int(m.group(3))) != int(m.group(3)):
            # e.g. a binary without MPI started by mpirun: R separate runs, one file
            print(f"mpi_train_table: {path} ran {rep.get('processes')} process(es), not {m.group(3)}: left out",
                  file=sys.stderr)
            continue
        steps = [r["step_ms_median"] for r in rep.get("ranks", [])] or [rep["step_ms_median"]]
        key = (m.group(1) or "f32", int(m.group(5)), m.group(2), int(m.group(3)), int(m.group(4)))
        rows.setdefault(key, []).append((rep["images_per_s"], max(steps), rep.get("exposed_comm_ms_per_step", 0.0),
                                         rep.get("allreduce_ms_per_step", 0.0)))
    return rows


def main():
    rows = read(sys.argv[1] if len(sys.argv) > 1 else ".")
    median = {key: statistics.median(r[0] for r in runs) for key, runs in rows.items()}

    def ratio(key, base):
        return f"{median[key] / median[base]:.2f}x" if base in median and base != key else "-"

    print("| precision | setup | global batch | images/s median (range) | vs 1 process, same threads | vs 1 thread "
          "| step ms (slowest rank) | allreduce ms/step | exposed ms/step | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    order = lambda key: (key[0], key[1], key[3] * key[4], key[3], key[2])
    for key in sorted(rows, key=order):
        precision, batch, setup, ranks, threads = key
        runs = rows[key]
        ips = [r[0] for r in runs]
        med = lambda i: statistics.median(r[i] for r in runs)
        name = (f"1 process x {threads} thread{'s' * (threads > 1)}" if setup == "proc" else
                f"{ranks} ranks x {threads} thread{'s' * (threads > 1)}{TRANSPORT[setup]}")
        same = ratio(key, (precision, batch, "proc", 1, ranks * threads))
        single = ratio(key, (precision, batch, "proc", 1, 1))
        print(f"| {precision} | {name} | {batch} | {median[key]:.1f} ({min(ips):.1f}-{max(ips):.1f}) | {same} "
              f"| {single} | {med(1):.0f} | {med(3):.1f} | {med(2):.2f} | {len(runs)} |")


if __name__ == "__main__":
    main()
