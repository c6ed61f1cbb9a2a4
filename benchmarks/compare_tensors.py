#!/usr/bin/env python3
"""Compares the tensors two .safetensors files share (e.g. samples written by
tensor_writer from an f32 and a bf16 run with the same seed): per tensor the
max and mean |a - b|, the RMS difference, and the share of elements that
differ by more than one 8-bit grey level (2/255 on the [-1, 1] image scale).

    python3 benchmarks/compare_tensors.py runs/f32/samples/samples_000000.safetensors \\
        runs/bf16/samples/samples_000000.safetensors

Standard library only. Exit code 0, or 2 for unreadable files or when the
files share no tensor of the same shape.
"""
import argparse
import array
import json
import math
import struct
import sys

FORMATS = {"F32": "f", "F64": "d", "I32": "i", "I64": "q"}


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: shorter than a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} past the end of the file")
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code = FORMATS.get(info["dtype"])
        if code is None:
            continue
        begin, end = info["data_offsets"]
        count = math.prod(info["shape"])
        if not 0 <= begin <= end <= len(body) or end - begin != count * array.array(code).itemsize:
            raise ValueError(f"{path}: tensor '{name}' {info['shape']} does not match its bytes "
                             f"[{begin}, {end}) of a {len(body)}-byte body")
        values = array.array(code)
        values.frombytes(body[begin:end])
        if sys.byteorder != "little":
            values.byteswap()
        tensors[name] = (tuple(info["shape"]), values)
    return tensors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--level", type=float, default=2.0 / 255.0,
                        help="a difference counted as visible (default one grey level, 2/255)")
    args = parser.parse_args()
    try:
        a, b = read(args.a), read(args.b)
    except (OSError, ValueError, KeyError) as e:
        print(f"compare_tensors: {e}", file=sys.stderr)
        sys.exit(2)
    shared = [n for n in sorted(a) if n in b and a[n][0] == b[n][0]]
    if not shared:
        print("compare_tensors: the files share no tensor of the same shape", file=sys.stderr)
        sys.exit(2)
    for name in shared:
        shape, x = a[name]
        y = b[name][1]
        diffs = [abs(p - q) for p, q in zip(x, y)]
        n = max(len(diffs), 1)
        rms = math.sqrt(sum(d * d for d in diffs) / n)
        visible = sum(1 for d in diffs if d > args.level) / n
        print(f"{name} {list(shape)}: max |a-b| {max(diffs, default=0):.4g}, mean {sum(diffs) / n:.4g}, "
              f"RMS {rms:.4g}, {100 * visible:.2f}% of elements differ by more than {args.level:.4g}")


if __name__ == "__main__":
    main()
