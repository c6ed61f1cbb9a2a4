#!/usr/bin/env python3
"""Puts sample sets side by side in one PNG: for each .safetensors written by
`diffuflow sample` on a class-conditional model (tensors `sample` [N,1,H,W]
in [-1, 1] and `labels` [N]), the first K images of every class, a row per
class, one block of K columns per file, blocks 8 pixels apart.

    python3 benchmarks/side_by_side.py OUT.png A.safetensors B.safetensors ... [--per-class 2] [--scale 2]

Needs numpy and PIL (Debian: python3-numpy, python3-pil).
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_tensors import read  # noqa: E402  (the safetensors reader)


def tensor(entries, name):
    shape, values = entries[name]
    return np.asarray(values, dtype=np.float64).reshape(shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args()

    blocks = []
    for path in args.inputs:
        entries = read(path)
        images = tensor(entries, "sample")[:, 0]
        labels = tensor(entries, "labels").astype(int)
        rows = []
        for c in sorted(set(labels.tolist())):
            chosen = images[labels == c][: args.per_class]
            if len(chosen) < args.per_class:
                sys.exit(f"{path}: class {c} has {len(chosen)} images, fewer than {args.per_class}")
            rows.append(np.concatenate(list(chosen), axis=1))
        blocks.append(np.concatenate(rows, axis=0))
    if len({b.shape for b in blocks}) != 1:
        sys.exit("the inputs hold different classes or image sizes")
    gap = np.full((blocks[0].shape[0], 8), -1.0)
    picture = blocks[0]
    for block in blocks[1:]:
        picture = np.concatenate([picture, gap, block], axis=1)
    pixels = np.clip(np.rint((picture + 1) * 127.5), 0, 255).astype(np.uint8)
    pixels = pixels.repeat(args.scale, axis=0).repeat(args.scale, axis=1)
    Image.fromarray(pixels, mode="L").save(args.out)


if __name__ == "__main__":
    main()
