#!/usr/bin/python3
"""Splits conditional samples by class for `diffuflow evaluate`, and measures diversity.

    benchmarks/guidance_split.py OUT_DIR RUN_DIR/samples/*.safetensors

Reads the `sample` [N,1,28,28] and `labels` [N] tensors that sample_mnist_cond.yaml's
tensor_writer writes, writes OUT_DIR/class_<c>.safetensors (the samples of class c, as
`sample`) and prints one line per class: the count and the mean pairwise L2 distance
between that class's samples in pixel space ([-1, 1] units; a diversity measure: 0 when
every sample is the same image).
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "I32": np.int32, "I64": np.int64}


def read(path):
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype=DTYPES[meta["dtype"]]).reshape(meta["shape"])
    return out


def write(path, name, array):
    array = np.ascontiguousarray(array, dtype=np.float32)
    header = json.dumps({name: {"dtype": "F32", "shape": list(array.shape), "data_offsets": [0, array.nbytes]}})
    header += " " * ((8 - len(header) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header.encode())
        f.write(array.tobytes())


def main():
    out_dir, files = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    parts = [read(p) for p in files]
    samples = np.concatenate([p["sample"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts]).astype(np.int64)
    for c in sorted(set(labels.tolist())):
        mine = samples[labels == c]
        write(os.path.join(out_dir, "class_%d.safetensors" % c), "sample", mine)
        flat = mine.reshape(len(mine), -1).astype(np.float64)
        d = np.sqrt(np.maximum(((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1), 0))
        pairs = len(mine) * (len(mine) - 1)
        print("class %d count %d pairwise %.3f" % (c, len(mine), d.sum() / pairs if pairs else 0.0))


if __name__ == "__main__":
    main()
