#!/usr/bin/env python3
"""Tests of the PyTorch peer (benchmarks/torch_peer.py) and the comparison driver.

    python3 tests/cli/torch_peer_test.py [-v]

Skipped when no python3 with torch and numpy is found (Debian: python3-torch). The
unet-io cross-check runs only when build/diffuflow exists.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER = os.path.join(ROOT, "benchmarks", "torch_peer.py")
COMPARE = os.path.join(ROOT, "benchmarks", "compare_torch.py")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "unet_tiny")
DIFFUFLOW = os.path.join(ROOT, "build", "diffuflow")


def _has_torch():
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, PEER, "init", "--config", "unet-tiny", "--out",
                            os.path.join(tmp, "w.safetensors")], capture_output=True, text=True)
    return r.returncode == 0


HAS_TORCH = _has_torch()


def run(*cmd, check=True):
    r = subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@unittest.skipUnless(HAS_TORCH, "no python3 with torch and numpy")
class TorchPeerTest(unittest.TestCase):
    def test_check_matches_fixture(self):
        r = run(sys.executable, PEER, "check", "--fixture", FIXTURE, "--threads", "1")
        self.assertIn("PASS", r.stdout)
        self.assertIn("176,849 parameters", r.stdout)

    def test_check_fails_on_perturbed_weights(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("config.json", "io.safetensors"):
                os.symlink(os.path.join(FIXTURE, name), os.path.join(tmp, name))
            py = _python_with_numpy()
            if py is None:
                self.skipTest("no python3 with numpy")
            run(py, "-c",
                "import sys; sys.path.insert(0, sys.argv[1]); import torch_peer as tp\n"
                "w, m = tp.read_safetensors(sys.argv[2])\n"
                "w['conv_out.bias'] = w['conv_out.bias'] + 1e-2\n"
                "tp.write_safetensors(sys.argv[3], w, m)\n",
                os.path.join(ROOT, "benchmarks"), os.path.join(FIXTURE, "weights.safetensors"),
                os.path.join(tmp, "weights.safetensors"))
            r = run(sys.executable, PEER, "check", "--fixture", tmp, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("FAIL", r.stdout)

    def test_unet_s_parameter_count_and_safetensors_round_trip(self):
        with tempfile.TemporaryDirectory() as tmp:
            w = os.path.join(tmp, "w.safetensors")
            r = run(sys.executable, PEER, "init", "--config", "unet-s", "--out", w)
            self.assertIn("268 tensors, 1,623,169 parameters", r.stdout)
            with open(w, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                self.assertEqual(n % 8, 0)
                header = json.loads(f.read(n))
            self.assertEqual(header["conv_in.weight"]["shape"], [32, 1, 3, 3])
            self.assertEqual(header["up_blocks.1.resnets.2.conv1.weight"]["shape"], [64, 96, 3, 3])

    def test_tiny_bench_writes_json(self):
        with tempfile.TemporaryDirectory() as tmp:
            j = os.path.join(tmp, "b.json")
            run(sys.executable, PEER, "bench", "--config", "unet-tiny", "--batch", "2", "--threads",
                "1", "--iters", "1", "--warmup", "0", "--json", j)
            with open(j) as f:
                d = json.load(f)
            for k in ("forward_images_per_s", "forward_backward_images_per_s", "peak_rss_mib"):
                self.assertGreater(d[k], 0)
            self.assertIn("blas_kind", d["environment"])

    def test_compare_peer_only(self):
        r = run(sys.executable, COMPARE, "--peer-only", "--config", "unet-tiny", "--batch", "2",
                "--threads", "1", "--rounds", "1", "--iters", "1", "--warmup", "0")
        self.assertIn("forward images/s", r.stdout)

    @unittest.skipUnless(os.path.exists(DIFFUFLOW), "build/diffuflow not built")
    def test_same_network_as_diffuflow_unet_io(self):
        with tempfile.TemporaryDirectory() as tmp:
            w, io = os.path.join(tmp, "w.safetensors"), os.path.join(tmp, "io.safetensors")
            a, b = os.path.join(tmp, "df.safetensors"), os.path.join(tmp, "pt.safetensors")
            run(sys.executable, PEER, "init", "--config", "unet-tiny", "--out", w, "--seed", "5",
                "--io-out", io, "--batch", "2")
            run(sys.executable, PEER, "io", "--config", "unet-tiny", "--weights", w, "--inputs", io,
                "--out", b)
            run(DIFFUFLOW, "unet-io", "--config", "unet-tiny", "--weights", w, "--inputs", io, "--out", a)
            r = run(sys.executable, PEER, "diff", a, b)
            self.assertIn("PASS", r.stdout)


def _python_with_numpy():
    for py in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(py) and subprocess.run([py, "-c", "import numpy"],
                                                 capture_output=True).returncode == 0:
            return py
    return None


if __name__ == "__main__":
    unittest.main()
