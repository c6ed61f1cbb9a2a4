#!/usr/bin/env python3
"""Side-by-side speed comparison: diffuflow's U-Net against the PyTorch peer (torch_peer.py).

Runs `diffuflow bench-unet` and `torch_peer.py bench` alternately (A B A B ...) in one
invocation with the same config, batch, thread count, iterations and warm-up, and prints the
medians over the rounds and the ratios diffuflow/torch for the forward pass (sampling) and the
training step (forward + backward + Adam). Peak RSS is taken for both the same way: the
child's rusage (wait4), so neither tool's self-report is trusted for memory.

  python3 benchmarks/compare_torch.py --config unet-s --batch 64 --threads 2 --rounds 3 \\
      --iters 10 --warmup 2 [--peer-args "--channels-last"] [--verify] [--json FILE]

--verify first runs both tools' unet-io on the same random weights and inputs (batch 2) and
reports max |diff| of eps_out, grad_x and the weight gradients, so the timed networks are
known to be the same. --peer-only times only the peer (e.g. before bench-unet exists).
Uses only the standard library (the peer itself needs torch and numpy).
"""

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "torch_peer.py")


# ----------------------------------------------------------------------------------------------
# machine
# ----------------------------------------------------------------------------------------------
def machine():
    model, cores, flags = "unknown", set(), set()
    try:
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" not in line:
                    if phys is not None or core is not None:
                        cores.add((phys, core))
                    phys = core = None
                    continue
                k, v = (s.strip() for s in line.split(":", 1))
                if k == "model name" and model == "unknown":
                    model = v
                elif k == "physical id":
                    phys = v
                elif k == "core id":
                    core = v
                elif k == "flags" and not flags:
                    flags = set(v.split())
            if phys is not None or core is not None:
                cores.add((phys, core))
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    return {
        "cpu_model": model,
        "physical_cores": len(cores) or None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "isa": isa,
        "kernel": platform.release(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------------------------
# running a child and reading its peak RSS
# ----------------------------------------------------------------------------------------------
def run_child(cmd, timeout, log_path):
    """Run cmd with output to log_path; return (exit code, seconds, peak RSS MiB, output)."""
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = []

        def kill():
            timed_out.append(True)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") \
            else (status >> 8)
        secs = time.perf_counter() - t0
    with open(log_path, "r", errors="replace") as f:
        out = f.read()
    if timed_out:
        out += f"\n[killed after {timeout:.0f} s]\n"
        return 124, secs, ru.ru_maxrss / 1024.0, out
    return p.returncode, secs, ru.ru_maxrss / 1024.0, out


# ----------------------------------------------------------------------------------------------
# reading the results (both tools' JSON; bench-unet's field names are matched loosely)
# ----------------------------------------------------------------------------------------------
_FORWARD_KEYS = ["forward_images_per_s", "forward.images_per_s_median", "forward.images_per_s",
                 "sample_images_per_s", "sampling_images_per_s", "inference_images_per_s",
                 "forward.median_images_per_s"]
_TRAIN_KEYS = ["train_images_per_s", "forward_backward_images_per_s", "train.images_per_s_median",
               "train.images_per_s", "training_images_per_s", "train_step_images_per_s",
               "train.median_images_per_s", "forward_backward.images_per_s"]


def _get(d, dotted):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur if isinstance(cur, (int, float)) and not isinstance(cur, bool) else None


def _flatten(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, key + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield key, v


def metric(d, which):
    for k in (_FORWARD_KEYS if which == "forward" else _TRAIN_KEYS):
        v = _get(d, k)
        if v is not None:
            return float(v)
    # fallback: a numeric field whose name says images/s and the phase, preferring medians
    words = ("forward", "sampl", "infer") if which == "forward" else ("train", "backward")
    cands = []
    for k, v in _flatten(d):
        low = k.lower()
        if ("images_per_s" in low or "img_per_s" in low or "images/s" in low) and \
                any(w in low for w in words) and not ("min" in low.split(".")[-1] or
                                                       "max" in low.split(".")[-1]):
            if which == "forward" and ("train" in low or "backward" in low):
                continue
            cands.append((0 if "median" in low else 1, k, float(v)))
    return sorted(cands)[0][2] if cands else None


# ----------------------------------------------------------------------------------------------
# verify: same network on both sides (unet-io)
# ----------------------------------------------------------------------------------------------
def verify(args, tmp):
    py = sys.executable
    w = os.path.join(tmp, "verify_weights.safetensors")
    io = os.path.join(tmp, "verify_io.safetensors")
    out_df = os.path.join(tmp, "verify_diffuflow.safetensors")
    out_pt = os.path.join(tmp, "verify_torch.safetensors")
    steps = [
        ("torch_peer init", [py, PEER, "init", "--config", args.config, "--out", w, "--seed", "7",
                             "--io-out", io, "--batch", "2"]),
        ("torch_peer io", [py, PEER, "io", "--config", args.config, "--weights", w, "--inputs", io,
                           "--out", out_pt, "--threads", str(args.threads)]),
        ("diffuflow unet-io", [args.diffuflow, "unet-io", "--config", args.config, "--weights", w,
                               "--inputs", io, "--out", out_df]),
        ("torch_peer diff", [py, PEER, "diff", out_df, out_pt]),
    ]
    for label, cmd in steps:
        rc, _, _, out = run_child(cmd, args.timeout, os.path.join(tmp, "verify.log"))
        if label == "torch_peer diff":
            print("\n".join("verify: " + ln for ln in out.rstrip().splitlines()))
        if rc != 0:
            if label != "torch_peer diff":
                print(f"verify: {label} failed (exit {rc}):\n{out[-3000:]}")
            return False
    return True


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def fmt_stats(vals):
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.1f}"
    return f"{med:.1f} [{min(vals):.1f}-{max(vals):.1f}]"


def ratio(a, b):
    if not a or not b:
        return None
    return statistics.median(a) / statistics.median(b)


def main():
    ap = argparse.ArgumentParser(description="time diffuflow bench-unet against the PyTorch peer, "
                                             "alternating runs")
    ap.add_argument("--diffuflow", default="./build/diffuflow", help="the diffuflow binary")
    ap.add_argument("--config", default="unet-s")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3, help="A B pairs")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per run and phase")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peer-args", default="", help="extra torch_peer bench options, e.g. "
                                                     "'--channels-last'")
    ap.add_argument("--diffuflow-args", default="", help="extra bench-unet options")
    ap.add_argument("--peer-first", action="store_true", help="order B A B A ...")
    ap.add_argument("--peer-only", action="store_true", help="time only the torch peer")
    ap.add_argument("--verify", action="store_true",
                    help="first check both compute the same network (unet-io, batch 2)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child run")
    ap.add_argument("--keep", help="keep the children's JSON and logs in this folder")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()

    mach = machine()
    tmp = args.keep or tempfile.mkdtemp(prefix="compare_torch_")
    os.makedirs(tmp, exist_ok=True)

    have_df = False
    if not args.peer_only:
        if not os.path.exists(args.diffuflow):
            sys.exit(f"compare_torch: {args.diffuflow} not found (build it, or pass --diffuflow / "
                     f"--peer-only)")
        help_out = subprocess.run([args.diffuflow, "--help"], capture_output=True, text=True)
        if "bench-unet" not in (help_out.stdout + help_out.stderr):
            sys.exit(f"compare_torch: {args.diffuflow} has no bench-unet command "
                     f"(use --peer-only to time the peer alone)")
        have_df = True

    common = ["--config", args.config, "--batch", str(args.batch), "--threads", str(args.threads),
              "--iters", str(args.iters), "--warmup", str(args.warmup)]
    print(f"machine: {mach['cpu_model']}; {mach['physical_cores']} cores, {mach['logical_cpus']} "
          f"logical CPUs ({mach['usable_cpus']} usable), {' '.join(mach['isa'])}; load avg "
          f"{' '.join(f'{v:.2f}' for v in mach['load_avg'] or [])}")
    print(f"config {args.config}, batch {args.batch}, threads {args.threads}, {args.rounds} rounds x "
          f"{args.iters} iters (+{args.warmup} warm-up)"
          + (f", peer {args.peer_args}" if args.peer_args else ""))

    if args.verify and have_df:
        if not verify(args, tmp):
            sys.exit(1)

    tools = []
    if have_df:
        tools.append("diffuflow")
    tools.append("torch")
    if args.peer_first:
        tools.reverse()

    res = {t: {"forward": [], "train": [], "rss": [], "runs": []} for t in tools}
    failed = False
    for r in range(args.rounds):
        for tool in tools:
            jpath = os.path.join(tmp, f"{tool}_{r}.json")
            if tool == "diffuflow":
                cmd = [args.diffuflow, "bench-unet"] + common + ["--json", jpath] + \
                    shlex.split(args.diffuflow_args)
            else:
                cmd = [sys.executable, PEER, "bench"] + common + ["--json", jpath] + \
                    shlex.split(args.peer_args)
            rc, secs, rss, out = run_child(cmd, args.timeout, os.path.join(tmp, f"{tool}_{r}.log"))
            if rc != 0:
                print(f"round {r + 1}: {tool} failed (exit {rc}): {' '.join(cmd)}\n{out[-3000:]}")
                failed = True
                continue
            try:
                with open(jpath) as f:
                    d = json.load(f)
            except (OSError, ValueError) as e:
                print(f"round {r + 1}: {tool}: no JSON result ({e})\n{out[-2000:]}")
                failed = True
                continue
            fw, tr = metric(d, "forward"), metric(d, "train")
            if fw is not None:
                res[tool]["forward"].append(fw)
            if tr is not None:
                res[tool]["train"].append(tr)
            res[tool]["rss"].append(rss)
            res[tool]["runs"].append({"round": r + 1, "seconds": secs, "peak_rss_mib": rss,
                                      "forward_images_per_s": fw, "train_images_per_s": tr,
                                      "result": d})
            print(f"round {r + 1}: {tool:9s} forward {fw if fw is None else round(fw, 1)} img/s, "
                  f"train {tr if tr is None else round(tr, 1)} img/s, peak RSS {rss:.0f} MiB "
                  f"({secs:.0f} s)")

    peer_env = next((run["result"].get("environment") for run in res["torch"]["runs"]), None) or {}
    print()
    print(f"{'':24s}" + "".join(f"{t:>26s}" for t in tools) + ("      diffuflow/torch" if have_df else ""))
    for key, label in (("forward", "forward images/s"), ("train", "train images/s"),
                       ("rss", "peak RSS MiB")):
        line = f"{label:24s}" + "".join(f"{fmt_stats(res[t][key]):>26s}" for t in tools)
        if have_df:
            q = ratio(res["diffuflow"][key], res["torch"][key])
            line += f"      {q:.2f}x" if q is not None else "      n/a"
        print(line)
    print("(median over rounds [min-max]; each round's figure is that run's median images/s)")
    if peer_env:
        print(f"torch {peer_env.get('torch_version')}, BLAS {peer_env.get('blas_kind')}, "
              f"CPU capability {peer_env.get('cpu_capability')}"
              + (f", ATEN_CPU_CAPABILITY={peer_env['ATEN_CPU_CAPABILITY']}"
                 if peer_env.get("ATEN_CPU_CAPABILITY") else ""))
        if "reference" in str(peer_env.get("blas_kind", "")):
            print("warning: the peer runs on the reference BLAS; switch libblas.so.3 to OpenBLAS "
                  "for a fair comparison")

    if args.json:
        summary = {
            "machine": mach,
            "settings": {"config": args.config, "batch": args.batch, "threads": args.threads,
                         "rounds": args.rounds, "iters": args.iters, "warmup": args.warmup,
                         "peer_args": args.peer_args, "diffuflow_args": args.diffuflow_args},
            "medians": {t: {k: (statistics.median(res[t][k]) if res[t][k] else None)
                            for k in ("forward", "train", "rss")} for t in tools},
            "ratios_diffuflow_over_torch": ({k: ratio(res["diffuflow"][k], res["torch"][k])
                                             for k in ("forward", "train", "rss")} if have_df else None),
            "runs": {t: res[t]["runs"] for t in tools},
            "torch_environment": peer_env,
        }
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
