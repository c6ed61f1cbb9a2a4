#!/usr/bin/env python3
"""PyTorch peer of diffuflow's U-Net: the same network in plain PyTorch, for parity and speed.

The model is diffusers' UNet2DModel (the network of the PyTorch fixtures in tests/fixtures/),
written from scratch: parameter names are the diffusers state-dict keys, so
weights load with strict=True in both directions. Needs only torch and numpy (Debian:
python3-torch, python3-numpy); safetensors files are read and written here with numpy.

Commands
  check --fixture DIR [--threads N]
      load DIR/config.json, DIR/weights.safetensors and DIR/io.safetensors, run forward and the
      backward of L = sum(eps_out * g_out), print max |diff| of eps_out, grad_x and every
      grad.<param> against the stored values; exit 1 when out of tolerance.
  bench --config unet-s|unet-tiny|CONFIG.json|DIR --batch B --threads N --iters K --warmup W
        [--mode both|forward|train] [--channels-last] [--seed S] [--json FILE]
      random weights and inputs; times the forward pass (inference_mode) and a training step
      (forward, MSE loss, backward, Adam step) per iteration; prints and writes images/s
      (median, min, max), peak RSS and the software stack (torch, BLAS, CPU capability).
  init --config C --out W.safetensors [--seed S] [--io-out IO.safetensors --batch N]
      write randomly initialised weights (diffusers names, the fixtures' init) to a safetensors file.
  io --config C --weights W.safetensors --inputs IO.safetensors --out OUT.safetensors
      the peer's `diffuflow unet-io`: eps_out, and grad_x / grad.<param> when IO holds g_out.
  train --data MNIST_DIR --out DIR [--max-time S] [--save-every S] [--batch B] [--lr LR]
        [--ema-decay D] [--threads N] [--channels-last] [--seed S]
      the PyTorch reference recipe for MNIST: DDPM epsilon objective (linear betas, T = 1000),
      PyTorch's default init, Adam, an EMA with diffusers' warm-up; every --save-every seconds of
      training a checkpoint DIR/step_<n>.safetensors that `diffuflow evaluate` samples (raw and
      ema. weights, diffuflow's checkpoint metadata), and DIR/train.jsonl (step, seconds, loss).
  diff A.safetensors B.safetensors
      compare two such output files (A against reference B) with the fixtures' tolerances.
  fixture --config CONFIG.json --out DIR [--seed S] [--batch N] [--t T...] [--f16-weights]
          [--max-grad-elements M]
      write a parity fixture folder: the config, random weights, inputs (with class_labels for
      models with a class embedding) and the peer's eps_out, grad_x and grad.<param>.

Debian's torch runs nn.Linear and the attention matmuls through the libblas.so.3 alternative;
the reference BLAS is far slower than OpenBLAS, so the bench reports which one is loaded.
"""

import argparse
import json
import os
import resource
import statistics
import struct
import sys
import time

SYSTEM_PYTHON = "/usr/bin/python3"


def _import_torch():
    """Import torch; when this interpreter lacks it, re-run under the system python3 (where
    Debian's python3-torch lives), e.g. when a pyenv/virtualenv python3 comes first on PATH."""
    try:
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    if (os.path.exists(SYSTEM_PYTHON) and os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON)
            and not os.environ.get("TORCH_PEER_REEXEC")):
        os.environ["TORCH_PEER_REEXEC"] = "1"
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON] + sys.argv)
    sys.stderr.write("torch_peer: cannot import torch (Debian: apt-get install python3-torch)\n")
    sys.exit(2)


# ----------------------------------------------------------------------------------------------
# safetensors (numpy only)
# ----------------------------------------------------------------------------------------------
_ST_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path):
    """Return ({name: numpy array}, metadata dict)."""
    import numpy as np
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} past the end of the file")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        dt = _ST_DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{path}: {name}: unsupported dtype {info['dtype']}")
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        arr = np.frombuffer(data, dtype=dt, count=(e - b) // np.dtype(dt).itemsize, offset=base + b)
        count = 1
        for s in shape:
            count *= s
        if arr.size != count:
            raise ValueError(f"{path}: {name}: {arr.size} elements for shape {list(shape)}")
        out[name] = arr.reshape(shape).copy()
    return out, meta


def write_safetensors(path, tensors, metadata=None):
    """Write {name: numpy array} in sorted-name order, header space-padded to 8 bytes."""
    import numpy as np
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        code = next((k for k, v in _ST_DTYPES.items() if np.dtype(v) == a.dtype.newbyteorder("=")), None)
        a = a.astype(np.dtype(_ST_DTYPES[code]), copy=False) if code else a
        if code is None:
            raise ValueError(f"{name}: unsupported dtype {a.dtype}")
        raw = a.tobytes(order="C")
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
_DEFAULTS = {
    "in_channels": 1, "out_channels": 1, "sample_size": 28,
    "act_fn": "silu", "center_input_sample": False, "downsample_padding": 1,
    "downsample_type": "conv", "upsample_type": "conv", "flip_sin_to_cos": True, "freq_shift": 0,
    "mid_block_scale_factor": 1, "time_embedding_type": "positional", "time_embedding_dim": None,
    "resnet_time_scale_shift": "default", "add_attention": True, "dropout": 0.0,
    "attn_norm_num_groups": None, "norm_num_groups": 8, "norm_eps": 1e-5, "attention_head_dim": 8,
    "mid_block_type": "UNetMidBlock2D", "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,
}

BUILTIN_CONFIGS = {
    "unet-s": {
        "in_channels": 1, "out_channels": 1, "sample_size": 28, "block_out_channels": [32, 64, 64],
        "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8, "norm_eps": 1e-5, "attention_head_dim": 8,
    },
    "unet-tiny": {
        "in_channels": 1, "out_channels": 1, "sample_size": 16, "block_out_channels": [16, 32],
        "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4, "norm_eps": 1e-5, "attention_head_dim": 8,
    },
}


def load_config(spec):
    """A built-in name, a config JSON file, or a folder holding config.json."""
    if spec in BUILTIN_CONFIGS:
        cfg = dict(BUILTIN_CONFIGS[spec])
    else:
        path = os.path.join(spec, "config.json") if os.path.isdir(spec) else spec
        if not os.path.exists(path):
            raise SystemExit(f"torch_peer: unknown config '{spec}' (built-in: "
                             f"{', '.join(sorted(BUILTIN_CONFIGS))}, or a config.json)")
        with open(path) as f:
            cfg = json.load(f)
    full = dict(_DEFAULTS)
    full.update({k: v for k, v in cfg.items() if not k.startswith("_")})
    _validate_config(full)
    return full


def _block_name(t):
    return t[7:] if t.startswith("UNetRes") else t


def _validate_config(c):
    unsupported = []
    if c["act_fn"].lower() not in ("silu", "swish", "mish", "gelu", "relu"):
        unsupported.append(f"act_fn={c['act_fn']}")
    if c["time_embedding_type"] != "positional":
        unsupported.append(f"time_embedding_type={c['time_embedding_type']}")
    if c["resnet_time_scale_shift"] not in ("default", "scale_shift"):
        unsupported.append(f"resnet_time_scale_shift={c['resnet_time_scale_shift']}")
    if c["downsample_type"] not in ("conv", "resnet") or c["upsample_type"] not in ("conv", "resnet"):
        unsupported.append("down/upsample_type other than conv, resnet")
    if c.get("class_embed_type") is not None:
        unsupported.append(f"class_embed_type={c['class_embed_type']}")
    if c["mid_block_type"] not in (None, "UNetMidBlock2D"):
        unsupported.append(f"mid_block_type={c['mid_block_type']}")
    for t in c["down_block_types"]:
        if _block_name(t) not in ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"):
            unsupported.append(f"block type {t}")
    for t in c["up_block_types"]:
        if _block_name(t) not in ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"):
            unsupported.append(f"block type {t}")
    if len(c["down_block_types"]) != len(c["block_out_channels"]) or \
            len(c["up_block_types"]) != len(c["block_out_channels"]):
        unsupported.append("block type lists must match block_out_channels")
    if unsupported:
        raise SystemExit("torch_peer: unsupported config: " + ", ".join(unsupported))


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
def build_model_classes():
    import math
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def timestep_embedding(t, dim, flip_sin_to_cos, shift, max_period=10000):
        half = dim // 2
        exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device)
        exponent = exponent / (half - shift)
        emb = torch.exp(exponent)
        emb = t[:, None].float() * emb[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        if flip_sin_to_cos:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        if dim % 2 == 1:
            emb = F.pad(emb, (0, 1, 0, 0))
        return emb

    class GroupNorm(nn.GroupNorm):
        # Normalises in f32 under bf16 autocast too (torch 1.13's CPU autocast
        # hands group_norm bf16 inputs with f32 parameters and fails), as
        # diffuflow's bf16 mode keeps normalisation in f32. A no-op in f32.
        def forward(self, x):
            return super().forward(x.float())

    def activation(name):
        # diffusers' get_activation: silu = swish, mish, gelu (exact), relu
        return {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU,
                "relu": nn.ReLU}[name.lower()]()

    class TimestepEmbedding(nn.Module):
        def __init__(self, cin, dim):
            super().__init__()
            self.linear_1 = nn.Linear(cin, dim)
            self.linear_2 = nn.Linear(dim, dim)

        def forward(self, x):
            return self.linear_2(F.silu(self.linear_1(x)))

    class ResnetBlock2D(nn.Module):
        """diffusers ResnetBlock2D: norm1, act, [resample], conv1, + time (default) or
        norm2 * (1 + scale) + shift (scale_shift), act, dropout, conv2, residual / out_scale.
        resample: None, "down" (2x2 average pooling) or "up" (nearest 2x)."""

        def __init__(self, cin, cout, temb, cfg, resample=None, out_scale=1.0):
            super().__init__()
            groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
            self.scale_shift = cfg["resnet_time_scale_shift"] == "scale_shift"
            self.resample, self.out_scale = resample, out_scale
            self.act = activation(cfg["act_fn"])
            self.norm1 = GroupNorm(groups, cin, eps=eps, affine=True)
            self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
            self.time_emb_proj = nn.Linear(temb, 2 * cout if self.scale_shift else cout)
            self.norm2 = GroupNorm(groups, cout, eps=eps, affine=True)
            self.dropout = nn.Dropout(cfg["dropout"])
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
            self.conv_shortcut = nn.Conv2d(cin, cout, 1, 1, 0) if cin != cout else None

        def forward(self, x, emb):
            h = self.act(self.norm1(x))
            if self.resample == "down":
                x, h = F.avg_pool2d(x, 2, 2), F.avg_pool2d(h, 2, 2)
            elif self.resample == "up":
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = self.conv1(h)
            te = self.time_emb_proj(self.act(emb))[:, :, None, None]
            if self.scale_shift:
                scale, shift = torch.chunk(te, 2, dim=1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + te)
            h = self.conv2(self.dropout(self.act(h)))
            if self.conv_shortcut is not None:
                x = self.conv_shortcut(x)
            return (x + h) / self.out_scale

    class Attention(nn.Module):
        """diffusers Attention(query_dim=C, heads=C/d, dim_head=d, norm_num_groups=G (None: no
        norm), residual_connection=True, bias=True, rescale_output_factor), default processor."""

        def __init__(self, c, head_dim, groups, eps, dropout, out_scale=1.0):
            super().__init__()
            self.heads = c // head_dim if head_dim else 1
            self.head_dim = c // self.heads
            self.scale = self.head_dim ** -0.5
            self.out_scale = out_scale
            self.group_norm = GroupNorm(groups, c, eps=eps, affine=True) if groups else None
            self.to_q = nn.Linear(c, c)
            self.to_k = nn.Linear(c, c)
            self.to_v = nn.Linear(c, c)
            self.to_out = nn.ModuleList([nn.Linear(c, c), nn.Dropout(dropout)])

        def forward(self, x):
            b, c, hh, ww = x.shape
            s = hh * ww
            hs = self.group_norm(x) if self.group_norm is not None else x
            hs = hs.reshape(b, c, s).transpose(1, 2)                          # [b, s, c]
            q, k, v = self.to_q(hs), self.to_k(hs), self.to_v(hs)
            nh, d = self.heads, self.head_dim

            def split(t):
                return t.reshape(b, s, nh, d).permute(0, 2, 1, 3).reshape(b * nh, s, d)

            q, k, v = split(q), split(k), split(v)
            scores = torch.baddbmm(torch.empty(b * nh, s, s, dtype=q.dtype, device=q.device),
                                   q, k.transpose(-1, -2), beta=0, alpha=self.scale)
            probs = scores.softmax(dim=-1)
            o = torch.bmm(probs, v)                                       # [b*nh, s, d]
            o = o.reshape(b, nh, s, d).permute(0, 2, 1, 3).reshape(b, s, c)
            o = self.to_out[1](self.to_out[0](o))
            o = o.transpose(1, 2).reshape(b, c, hh, ww)
            return (o + x) / self.out_scale

    class Downsample2D(nn.Module):
        def __init__(self, c, padding):
            super().__init__()
            self.padding = padding
            self.conv = nn.Conv2d(c, c, 3, 2, padding)

        def forward(self, x):
            if self.padding == 0:
                x = F.pad(x, (0, 1, 0, 1))
            return self.conv(x)

    class Upsample2D(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, 1, 1)

        def forward(self, x):
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    def head_dim(cfg, c):
        return cfg["attention_head_dim"] or c

    class DownBlock(nn.Module):
        def __init__(self, kind, cin, cout, temb, n, add_down, cfg):
            super().__init__()
            attn = kind == "AttnDownBlock2D"
            resnet_down = kind == "ResnetDownsampleBlock2D" or (attn and cfg["downsample_type"] == "resnet")
            self.resnets = nn.ModuleList(
                [ResnetBlock2D(cin if j == 0 else cout, cout, temb, cfg) for j in range(n)])
            # down/up block attentions normalise with norm_num_groups (attn_norm_num_groups is the
            # mid block's)
            self.attentions = nn.ModuleList(
                [Attention(cout, head_dim(cfg, cout), cfg["norm_num_groups"], cfg["norm_eps"], cfg["dropout"])
                 for _ in range(n)]) if attn else None
            if not add_down:
                self.downsamplers = None
            elif resnet_down:
                self.downsamplers = nn.ModuleList([ResnetBlock2D(cout, cout, temb, cfg, resample="down")])
            else:
                self.downsamplers = nn.ModuleList([Downsample2D(cout, cfg["downsample_padding"])])
            self.resnet_down = resnet_down

        def forward(self, h, emb, skips):
            for j, r in enumerate(self.resnets):
                h = r(h, emb)
                if self.attentions is not None:
                    h = self.attentions[j](h)
                skips.append(h)
            if self.downsamplers is not None:
                h = self.downsamplers[0](h, emb) if self.resnet_down else self.downsamplers[0](h)
                skips.append(h)
            return h

    class UpBlock(nn.Module):
        def __init__(self, kind, cin, prev_out, cout, temb, n, add_up, cfg):
            super().__init__()
            attn = kind == "AttnUpBlock2D"
            resnet_up = kind == "ResnetUpsampleBlock2D" or (attn and cfg["upsample_type"] == "resnet")
            res = []
            for j in range(n):
                skip_c = cin if j == n - 1 else cout
                res_in = prev_out if j == 0 else cout
                res.append(ResnetBlock2D(res_in + skip_c, cout, temb, cfg))
            self.resnets = nn.ModuleList(res)
            self.attentions = nn.ModuleList(
                [Attention(cout, head_dim(cfg, cout), cfg["norm_num_groups"], cfg["norm_eps"], cfg["dropout"])
                 for _ in range(n)]) if attn else None
            if not add_up:
                self.upsamplers = None
            elif resnet_up:
                self.upsamplers = nn.ModuleList([ResnetBlock2D(cout, cout, temb, cfg, resample="up")])
            else:
                self.upsamplers = nn.ModuleList([Upsample2D(cout)])
            self.resnet_up = resnet_up

        def forward(self, h, emb, skips):
            for j, r in enumerate(self.resnets):
                h = torch.cat([h, skips.pop()], dim=1)
                h = r(h, emb)
                if self.attentions is not None:
                    h = self.attentions[j](h)
            if self.upsamplers is not None:
                h = self.upsamplers[0](h, emb) if self.resnet_up else self.upsamplers[0](h)
            return h

    class MidBlock(nn.Module):
        def __init__(self, c, temb, cfg):
            super().__init__()
            f = cfg["mid_block_scale_factor"]
            # the attention's groups: attn_norm_num_groups, else norm_num_groups with the default
            # time shift, else no GroupNorm
            ag = cfg["attn_norm_num_groups"]
            if ag is None and cfg["resnet_time_scale_shift"] == "default":
                ag = cfg["norm_num_groups"]
            self.resnets = nn.ModuleList([ResnetBlock2D(c, c, temb, cfg, out_scale=f) for _ in range(2)])
            self.attentions = nn.ModuleList(
                [Attention(c, head_dim(cfg, c), ag, cfg["norm_eps"], cfg["dropout"], out_scale=f)]) \
                if cfg["add_attention"] else None

        def forward(self, h, emb):
            h = self.resnets[0](h, emb)
            if self.attentions is not None:
                h = self.attentions[0](h)
            return self.resnets[1](h, emb)

    class UNet2DModel(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.config = cfg
            boc = list(cfg["block_out_channels"])
            L = cfg["layers_per_block"]
            nb = len(boc)
            temb = cfg["time_embedding_dim"] or boc[0] * 4
            self.conv_in = nn.Conv2d(cfg["in_channels"], boc[0], 3, 1, 1)
            self.time_embedding = TimestepEmbedding(boc[0], temb)
            self.class_embedding = nn.Embedding(cfg["num_class_embeds"], temb) \
                if cfg["num_class_embeds"] is not None else None
            self.down_blocks = nn.ModuleList()
            cout = boc[0]
            for i, t in enumerate(cfg["down_block_types"]):
                cin, cout = cout, boc[i]
                self.down_blocks.append(DownBlock(_block_name(t), cin, cout, temb, L, i != nb - 1, cfg))
            # created before the up blocks, so init_weights draws the fixtures' weights in this order
            self.mid_block = MidBlock(boc[-1], temb, cfg) if cfg["mid_block_type"] else None
            rev = list(reversed(boc))
            self.up_blocks = nn.ModuleList()
            cout = rev[0]
            for i, t in enumerate(cfg["up_block_types"]):
                prev_out, cout = cout, rev[i]
                cin = rev[min(i + 1, nb - 1)]
                self.up_blocks.append(UpBlock(_block_name(t), cin, prev_out, cout, temb, L + 1, i != nb - 1, cfg))
            g = cfg["norm_num_groups"]
            self.conv_norm_out = GroupNorm(g, boc[0], eps=cfg["norm_eps"], affine=True)
            self.conv_out = nn.Conv2d(boc[0], cfg["out_channels"], 3, 1, 1)

        def forward(self, x, t, class_labels=None):
            if not torch.is_tensor(t):
                t = torch.tensor([t], dtype=torch.long)
            elif t.dim() == 0:
                t = t[None]
            t = t * torch.ones(x.shape[0], dtype=t.dtype, device=t.device)
            cfg = self.config
            if cfg["center_input_sample"]:
                x = 2 * x - 1.0
            t0 = timestep_embedding(t, cfg["block_out_channels"][0], cfg["flip_sin_to_cos"],
                                    cfg["freq_shift"]).to(x.dtype)
            emb = self.time_embedding(t0)
            if self.class_embedding is not None:
                if class_labels is None:
                    raise ValueError("the model has a class embedding: pass class labels")
                emb = emb + self.class_embedding(class_labels)
            h = self.conv_in(x)
            skips = [h]
            for blk in self.down_blocks:
                h = blk(h, emb, skips)
            if self.mid_block is not None:
                h = self.mid_block(h, emb)
            for blk in self.up_blocks:
                h = blk(h, emb, skips)
            return self.conv_out(F.silu(self.conv_norm_out(h)))

    return UNet2DModel


def make_model(cfg):
    return build_model_classes()(cfg)


def init_weights(model, seed):
    """The fixtures' init: conv/linear weights U(+-sqrt(3/fan_in)), biases U(+-1/sqrt(fan_in)),
    GroupNorm weight U(0.7, 1.3), bias U(-0.2, 0.2), embedding tables N(0, 1)."""
    import math
    import torch
    import torch.nn as nn
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.uniform_(-math.sqrt(3.0 / fan_in), math.sqrt(3.0 / fan_in), generator=gen)
                m.bias.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in), generator=gen)
            elif isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.7, 1.3, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(generator=gen)


# ----------------------------------------------------------------------------------------------
# environment report
# ----------------------------------------------------------------------------------------------
def loaded_blas():
    """Shared libraries mapped into this process that provide BLAS, resolved through symlinks
    (Debian's libblas.so.3 is an update-alternatives link)."""
    libs = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6:
                    continue
                p = parts[5]
                base = os.path.basename(p).lower()
                if any(k in base for k in ("blas", "mkl_rt", "mkl_core", "blis", "atlas")):
                    if p not in libs:
                        libs.append(p)
    except OSError:
        pass
    out = []
    for p in libs:
        real = os.path.realpath(p)
        kind = "unknown"
        low = real.lower()
        if "openblas" in low:
            kind = "OpenBLAS"
        elif "mkl" in low:
            kind = "MKL"
        elif "blis" in low:
            kind = "BLIS"
        elif "atlas" in low:
            kind = "ATLAS"
        elif "/blas/" in low or os.path.basename(low).startswith("libblas"):
            kind = "reference BLAS (netlib)"
        out.append({"path": _site_relative(p), "resolved": _site_relative(real), "kind": kind})
    return out


def _site_relative(path):
    """A path inside a Python environment from its site-packages folder on (where the
    environment lives says nothing about the library and only names the machine)."""
    head, sep, tail = path.partition("site-packages/")
    return sep + tail if sep else path


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def environment(threads):
    import torch
    cfg = torch.__config__.show()
    cap = None
    for line in cfg.splitlines():
        if "CPU capability usage" in line:
            cap = line.split(":", 1)[1].strip()
    # make sure torch has called into BLAS once so the library is mapped
    a = torch.ones(8, 8)
    (a @ a).sum().item()
    blas = loaded_blas()
    return {
        "torch_version": torch.__version__,
        "mkldnn_available": bool(torch.backends.mkldnn.is_available()),
        "cpu_capability": cap,
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "blas": blas,
        "blas_kind": ", ".join(sorted({b["kind"] for b in blas})) or "none found",
        "threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "rss_after_import_mib": peak_rss_mib(),
    }


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ----------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------
def cmd_check(args):
    import numpy as np
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.fixture)
    model = make_model(cfg)
    weights, _ = read_safetensors(os.path.join(args.fixture, "weights.safetensors"))
    io, _ = read_safetensors(os.path.join(args.fixture, "io.safetensors"))
    sd = {k: torch.from_numpy(v) for k, v in weights.items()}
    model.load_state_dict(sd, strict=True)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"config {args.fixture}: {len(sd)} tensors, {nparams:,} parameters, loaded strict")

    x = torch.from_numpy(io["x"]).requires_grad_(True)
    t = torch.from_numpy(io["t"])
    g_out = torch.from_numpy(io["g_out"])
    labels = torch.from_numpy(io["class_labels"]) if "class_labels" in io else None
    eps = model(x, t, labels)
    loss = (eps * g_out).sum()
    loss.backward()

    tol = args.tol
    failures = []

    def diff(a, ref):
        return float(np.max(np.abs(a.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0

    d_eps = diff(eps.detach().numpy(), io["eps_out"])
    d_gx = diff(x.grad.numpy(), io["grad_x"])
    print(f"eps_out  max|diff| {d_eps:.3e}   (max|ref| {np.abs(io['eps_out']).max():.3g}, tol {tol:g})")
    print(f"grad_x   max|diff| {d_gx:.3e}   (max|ref| {np.abs(io['grad_x']).max():.3g}, tol {tol:g})")
    if not d_eps <= tol:
        failures.append("eps_out")
    if not d_gx <= tol:
        failures.append("grad_x")

    worst_abs, worst_rel, worst_abs_name, worst_rel_name = 0.0, 0.0, "", ""
    rows = []
    skipped = 0
    for name, p in model.named_parameters():
        key = "grad." + name
        if key not in io:
            skipped += 1  # a fixture made with --max-grad-elements stores a subset
            continue
        ref = io[key]
        got = p.grad.numpy() if p.grad is not None else np.zeros_like(ref)
        d = diff(got, ref)
        amax = float(np.abs(ref).max()) if ref.size else 0.0
        if name.endswith("to_k.bias"):
            # mathematically zero: the stored values are round-off; compare absolutely
            lim = args.tok_tol
            rel = d
            note = "abs (zero gradient)"
        else:
            lim = tol * max(1.0, amax)
            rel = d / max(amax, 1e-30)
            note = ""
        ok = d <= lim
        if not ok:
            failures.append(key)
        if d > worst_abs:
            worst_abs, worst_abs_name = d, key
        if not name.endswith("to_k.bias") and rel > worst_rel:
            worst_rel, worst_rel_name = rel, key
        rows.append((key, tuple(ref.shape), d, amax, lim, ok, note))
    extra = sorted(k for k in io if k.startswith("grad.") and k[5:] not in dict(model.named_parameters()))
    for k in extra:
        failures.append(f"{k} has no parameter in the model")

    if args.verbose:
        for key, shape, d, amax, lim, ok, note in rows:
            print(f"  {'ok  ' if ok else 'FAIL'} {key:60s} {str(list(shape)):18s} "
                  f"max|diff| {d:.3e}  max|ref| {amax:.3g}  tol {lim:.2g} {note}")
    if skipped:
        print(f"grad.*   {skipped} parameter gradients not stored in the fixture")
    print(f"grad.*   {len(rows)} tensors: max|diff| {worst_abs:.3e} ({worst_abs_name}); "
          f"max |diff|/max|ref| {worst_rel:.3e} ({worst_rel_name})")
    tok = [r for r in rows if r[0].endswith("to_k.bias")]
    if tok:
        print(f"         to_k.bias (zero gradient, abs tol {args.tok_tol:g}): max|diff| "
              f"{max(r[2] for r in tok):.3e}")
    if failures:
        print("FAIL: " + ", ".join(failures[:20]) + (" ..." if len(failures) > 20 else ""))
        return 1
    print("PASS: the peer computes the fixture's network")
    return 0


# ----------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------
def _summary(times, batch):
    ips = [batch / s for s in times]
    return {
        "iters": len(times),
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "seconds_max": max(times),
        "images_per_s_median": batch / statistics.median(times),
        "images_per_s_min": min(ips),
        "images_per_s_max": max(ips),
    }


def autocast(enabled):
    """torch's CPU mixed precision (bf16 convolutions and matmuls), the peer of
    diffuflow's `precision: bf16`; a no-op context when disabled."""
    import contextlib
    import torch
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def cmd_bench(args):
    import torch
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(args.seed)
    model = make_model(cfg)
    init_weights(model, args.seed)
    nparams = sum(p.numel() for p in model.parameters())
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)

    B, S = args.batch, cfg["sample_size"]
    S = S[0] if isinstance(S, (list, tuple)) else S
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(B, cfg["in_channels"], S, S, generator=gen).contiguous(memory_format=mf)
    target = torch.randn(B, cfg["out_channels"], S, S, generator=gen).contiguous(memory_format=mf)
    t = torch.randint(0, 1000, (B,), generator=gen)

    result = {
        "tool": "torch_peer",
        "config_name": args.config,
        "config": cfg,
        "parameters": nparams,
        "batch": B,
        "threads": args.threads,
        "iters": args.iters,
        "warmup": args.warmup,
        "channels_last": bool(args.channels_last),
        "bf16_autocast": bool(args.bf16),
        "environment": env,
    }
    print(f"torch {env['torch_version']}  BLAS: {env['blas_kind']}  CPU capability: "
          f"{env['cpu_capability']}  threads {args.threads}  ({env['cpu_model']}, "
          f"{env['logical_cpus']} logical CPUs)")
    print(f"config {args.config}: {nparams:,} parameters, batch {B}, {S}x{S}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}"
          f"{', bf16 autocast' if args.bf16 else ''}; RSS after importing torch "
          f"{env['rss_after_import_mib']:.0f} MiB")

    if args.mode in ("both", "forward"):
        model.eval()
        times = []
        with torch.inference_mode(), autocast(args.bf16):
            for i in range(args.warmup + args.iters):
                t0 = time.perf_counter()
                y = model(x, t)
                float(y[0, 0, 0, 0])  # results are ready when the op returns; touch anyway
                dt = time.perf_counter() - t0
                if i >= args.warmup:
                    times.append(dt)
        del y
        fw = _summary(times, B)
        fw["peak_rss_mib"] = peak_rss_mib()
        result["forward"] = fw
        result["forward_images_per_s"] = fw["images_per_s_median"]
        print(f"forward:          {fw['images_per_s_median']:9.1f} images/s median "
              f"(min {fw['images_per_s_min']:.1f}, max {fw['images_per_s_max']:.1f}; "
              f"{fw['seconds_median'] * 1e3:.1f} ms/batch), peak RSS {fw['peak_rss_mib']:.0f} MiB")

    if args.mode in ("both", "train"):
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8,
                               weight_decay=0.0)
        times = []
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast(args.bf16):
                y = model(x, t)
            loss = torch.nn.functional.mse_loss(y.float(), target)
            loss.backward()
            opt.step()
            lv = float(loss)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(dt)
        tr = _summary(times, B)
        tr["peak_rss_mib"] = peak_rss_mib()
        tr["last_loss"] = lv
        result["train"] = tr
        result["forward_backward_images_per_s"] = tr["images_per_s_median"]
        result["train_images_per_s"] = tr["images_per_s_median"]
        print(f"train (fwd+bwd+Adam): {tr['images_per_s_median']:5.1f} images/s median "
              f"(min {tr['images_per_s_min']:.1f}, max {tr['images_per_s_max']:.1f}; "
              f"{tr['seconds_median'] * 1e3:.1f} ms/batch), peak RSS {tr['peak_rss_mib']:.0f} MiB")

    result["peak_rss_mib"] = peak_rss_mib()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


def cmd_sample(args):
    """DDIM sampling as a plain PyTorch loop: `count` images in batches of
    `batch`, `steps` U-Net calls each (leading spacing over T = 1000, linear
    betas 1e-4..0.02, eta 0, x_0 clipped to [-1, 1]), under torch.no_grad.
    Random weights: the speed does not depend on them."""
    import torch
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(args.seed)
    model = make_model(cfg)
    init_weights(model, args.seed)
    model.eval()
    S = cfg["sample_size"]
    S = S[0] if isinstance(S, (list, tuple)) else S
    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1.0 - betas, 0).float()
    stride = T // args.steps
    timesteps = list(range(0, T, stride))[::-1]
    gen = torch.Generator().manual_seed(args.seed + 1)

    def chain(n):
        x = torch.randn(n, cfg["in_channels"], S, S, generator=gen)
        for t in timesteps:
            eps = model(x, torch.full((n,), t, dtype=torch.long))
            a_t = alphas_cumprod[t]
            a_prev = alphas_cumprod[t - stride] if t - stride >= 0 else torch.tensor(1.0)
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x

    with torch.no_grad():
        chain(min(args.batch, args.count))  # warm-up: one chain, not timed
        t0 = time.perf_counter()
        done = 0
        while done < args.count:
            n = min(args.batch, args.count - done)
            float(chain(n)[0, 0, 0, 0])
            done += n
        seconds = time.perf_counter() - t0
    result = {"tool": "torch_peer", "config_name": args.config, "batch": args.batch, "count": args.count,
              "steps": args.steps, "threads": args.threads, "seconds": seconds,
              "images_per_s": args.count / seconds, "environment": env}
    print(f"torch {env['torch_version']}  BLAS: {env['blas_kind']}  threads {args.threads}  ({env['cpu_model']})")
    print(f"DDIM-{args.steps}: {args.count} images in {seconds:.1f} s = {args.count / seconds:.2f} images/s "
          f"({args.count * args.steps / seconds:.0f} U-Net image-forwards/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


def read_idx_images(folder, stem):
    """MNIST images [N, 28, 28] uint8 from FOLDER/STEM-idx3-ubyte or its .gz."""
    import gzip
    import numpy as np
    for name in (stem + "-idx3-ubyte", stem + "-idx3-ubyte.gz", stem + ".idx3-ubyte"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rb") as f:
                data = f.read()
            magic, n, rows, cols = struct.unpack(">IIII", data[:16])
            if magic != 2051 or len(data) != 16 + n * rows * cols:
                raise SystemExit(f"torch_peer: {path}: not an IDX image file")
            return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)
    raise SystemExit(f"torch_peer: no {stem}-idx3-ubyte[.gz] in {folder}")


def cmd_train(args):
    """The PyTorch reference recipe; the clock counts training only (not the checkpoint writes)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(args.seed)
    model = make_model(cfg)  # PyTorch's default initialisation
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=mf).train()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    images = torch.from_numpy(read_idx_images(args.data, "train-images").astype(np.float32) / 127.5 - 1.0)
    images = images.unsqueeze(1)
    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1.0 - betas, 0).float()
    gen = torch.Generator().manual_seed(args.seed + 1)
    os.makedirs(args.out, exist_ok=True)
    scheduler_config = {"_class_name": "DDPMScheduler", "num_train_timesteps": T, "beta_start": 0.0001,
                        "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon",
                        "clip_sample": True, "clip_sample_range": 1.0}
    model_config = {"_class_name": "UNet2DModel", **cfg}

    def save(step, seconds):
        tensors = {}
        for k, v in model.state_dict().items():
            tensors[k] = v.detach().contiguous().numpy().astype(np.float32)
            tensors["ema." + k] = ema[k].contiguous().numpy().astype(np.float32)
        meta = {"format": "diffuflow-checkpoint", "format_version": "1", "model_kind": "unet",
                "model_config": json.dumps(model_config), "scheduler_config": json.dumps(scheduler_config),
                "prediction_type": "epsilon", "step": str(step), "optimiser_step": str(step),
                "seed": str(args.seed), "training_seconds": f"{seconds:.1f}", "trainer": "torch_peer train"}
        write_safetensors(os.path.join(args.out, f"step_{step:06d}.safetensors"), tensors, meta)

    print(f"torch {env['torch_version']}  BLAS: {env['blas_kind']}  CPU capability: {env['cpu_capability']}  "
          f"threads {args.threads}  ({env['cpu_model']}); {'channels_last' if args.channels_last else 'NCHW'}, "
          f"batch {args.batch}, Adam {args.lr:g}, EMA {args.ema_decay:g}, {args.max_time:g} s")
    log = open(os.path.join(args.out, "train.jsonl"), "w")
    step, trained, next_save = 0, 0.0, args.save_every
    while trained < args.max_time:
        order = torch.randperm(images.shape[0], generator=gen)
        for first in range(0, images.shape[0] - args.batch + 1, args.batch):
            t0 = time.perf_counter()
            x0 = images[order[first:first + args.batch]].contiguous(memory_format=mf)
            t = torch.randint(0, T, (args.batch,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            a = abar[t].view(-1, 1, 1, 1)
            xt = (a.sqrt() * x0 + (1 - a).sqrt() * noise).contiguous(memory_format=mf)
            loss = F.mse_loss(model(xt, t), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            d = 0.0 if step == 1 else min(args.ema_decay, step / (9.0 + step))  # diffuflow's EMA warm-up
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
            trained += time.perf_counter() - t0
            if step % 100 == 0:
                log.write(json.dumps({"step": step, "seconds": round(trained, 2), "loss": float(loss)}) + "\n")
                log.flush()
            if trained >= next_save or trained >= args.max_time:
                save(step, trained)
                print(f"step {step}: {trained:.0f} s of training, {step * args.batch / trained:.1f} images/s, "
                      f"loss {float(loss):.4f}", flush=True)
                next_save += args.save_every
            if trained >= args.max_time:
                break
    log.close()
    return 0


def cmd_init(args):
    import torch
    cfg = load_config(args.config)
    model = make_model(cfg)
    init_weights(model, args.seed)
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    write_safetensors(args.out, tensors, {"format": "pt", "config": json.dumps(cfg)})
    back, _ = read_safetensors(args.out)
    assert all((back[k] == tensors[k]).all() for k in tensors)
    print(f"wrote {args.out}: {len(tensors)} tensors, "
          f"{sum(v.size for v in tensors.values()):,} parameters")
    if args.io_out:
        import numpy as np
        S = cfg["sample_size"]
        S = S[0] if isinstance(S, (list, tuple)) else S
        rng = np.random.default_rng(args.seed + 1)
        n = args.batch
        io = {"x": rng.standard_normal((n, cfg["in_channels"], S, S)).astype(np.float32),
              "t": rng.integers(0, 1000, size=n).astype(np.int64),
              "g_out": rng.standard_normal((n, cfg["out_channels"], S, S)).astype(np.float32)}
        write_safetensors(args.io_out, io)
        print(f"wrote {args.io_out}: x, t, g_out for batch {n}")
    return 0


def compare_outputs(got, ref, tol=1e-4, tok_tol=1e-5, verbose=False, label="diff"):
    """Compare unet-io style outputs (eps_out, grad_x, grad.*) with the fixtures' criteria.
    Returns (ok, lines)."""
    import numpy as np
    lines, bad = [], []

    def d(k):
        return float(np.max(np.abs(got[k].astype(np.float64) - ref[k].astype(np.float64))))

    for k in ("eps_out", "grad_x"):
        if k not in ref:
            continue
        if k not in got or got[k].shape != ref[k].shape:
            bad.append(f"{k} missing or wrong shape")
            continue
        v = d(k)
        lines.append(f"{label}: {k:8s} max|diff| {v:.3e} (max|ref| {np.abs(ref[k]).max():.3g})")
        if not v <= tol:
            bad.append(k)
    worst_abs, worst_rel, wa, wr, tok = 0.0, 0.0, "", "", 0.0
    ngrad = 0
    for k in sorted(ref):
        if not k.startswith("grad."):
            continue
        if k not in got or got[k].shape != ref[k].shape:
            bad.append(f"{k} missing or wrong shape")
            continue
        ngrad += 1
        v = d(k)
        amax = float(np.abs(ref[k]).max()) if ref[k].size else 0.0
        if k.endswith("to_k.bias"):
            ok = v <= tok_tol
            tok = max(tok, v)
        else:
            ok = v <= tol * max(1.0, amax)
            if v / max(amax, 1e-30) > worst_rel:
                worst_rel, wr = v / max(amax, 1e-30), k
        if v > worst_abs:
            worst_abs, wa = v, k
        if not ok:
            bad.append(k)
        if verbose:
            lines.append(f"  {'ok  ' if ok else 'FAIL'} {k:60s} max|diff| {v:.3e} max|ref| {amax:.3g}")
    if ngrad:
        lines.append(f"{label}: grad.*   {ngrad} tensors: max|diff| {worst_abs:.3e} ({wa}); "
                     f"max |diff|/max|ref| {worst_rel:.3e} ({wr}); to_k.bias max|diff| {tok:.3e}")
    if bad:
        lines.append(f"{label}: FAIL " + ", ".join(bad[:20]) + (" ..." if len(bad) > 20 else ""))
    return not bad, lines


def cmd_diff(args):
    got, _ = read_safetensors(args.a)
    ref, _ = read_safetensors(args.b)
    ok, lines = compare_outputs(got, ref, args.tol, args.tok_tol, args.verbose)
    print("\n".join(lines))
    print("PASS: same results within tolerance" if ok else "FAIL")
    return 0 if ok else 1


def cmd_io(args):
    """The peer's side of `diffuflow unet-io`: same inputs, same output tensor names."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    model = make_model(cfg)
    weights, _ = read_safetensors(args.weights)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    io, _ = read_safetensors(args.inputs)
    x = torch.from_numpy(io["x"]).requires_grad_("g_out" in io)
    t = torch.from_numpy(io["t"]).long()
    labels = torch.from_numpy(io["class_labels"]).long() if "class_labels" in io else None
    eps = model(x, t, labels)
    out = {"eps_out": eps.detach().numpy()}
    if "g_out" in io:
        (eps * torch.from_numpy(io["g_out"])).sum().backward()
        out["grad_x"] = x.grad.numpy()
        for name, p in model.named_parameters():
            out["grad." + name] = (p.grad if p.grad is not None else torch.zeros_like(p)).numpy()
    write_safetensors(args.out, out, {"producer": "torch_peer io"})
    print(f"wrote {args.out}: {len(out)} tensors")
    return 0


def cmd_fixture(args):
    """A parity fixture folder: config.json (as given), weights.safetensors (random, the fixtures'
    init; with --f16-weights rounded to float16 and stored as F16, which is exact, to halve the
    file), io.safetensors (x, t, class_labels when the model has a class embedding, g_out, and the
    peer's eps_out, grad_x, grad.<param> of L = sum(eps_out * g_out); with --max-grad-elements
    only the gradients of parameters up to that size, to keep the file small)."""
    import numpy as np
    import torch
    torch.set_num_threads(args.threads or 2)
    with open(args.config) as f:
        text = f.read()
    cfg = load_config(args.config)
    model = make_model(cfg)
    init_weights(model, args.seed)
    if args.f16_weights:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        f.write(text)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if args.f16_weights:
        sd = {k: v.astype(np.float16) for k, v in sd.items()}
    write_safetensors(os.path.join(args.out, "weights.safetensors"), sd, {"format": "pt"})

    size = cfg["sample_size"]
    h, w = (size, size) if not isinstance(size, (list, tuple)) else size
    rng = np.random.default_rng(args.seed + 1)
    n = args.batch
    x = rng.standard_normal((n, cfg["in_channels"], h, w)).astype(np.float32)
    t = np.array(args.t[:n] if args.t else rng.integers(0, 1000, size=n), dtype=np.int64)
    g_out = rng.standard_normal((n, cfg["out_channels"], h, w)).astype(np.float32)
    io = {"x": x, "t": t, "g_out": g_out}
    labels = None
    if cfg["num_class_embeds"] is not None:
        io["class_labels"] = (np.arange(n) * 3 % cfg["num_class_embeds"]).astype(np.int64)
        labels = torch.from_numpy(io["class_labels"])
    xt = torch.from_numpy(x).requires_grad_(True)
    eps = model(xt, torch.from_numpy(t), labels)
    (eps * torch.from_numpy(g_out)).sum().backward()
    io["eps_out"] = eps.detach().numpy()
    io["grad_x"] = xt.grad.numpy()
    for name, p in model.named_parameters():
        if args.max_grad_elements and p.numel() > args.max_grad_elements:
            continue
        io["grad." + name] = (p.grad if p.grad is not None else torch.zeros_like(p)).numpy()
    write_safetensors(os.path.join(args.out, "io.safetensors"), io, {"producer": "torch_peer fixture"})
    nparams = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {len(sd)} tensors, {nparams:,} parameters; batch {n}, t {t.tolist()}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="plain-PyTorch peer of diffuflow's U-Net "
                                             "(diffusers UNet2DModel names)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("check", help="compare against a parity fixture (forward and gradients)")
    c.add_argument("--fixture", required=True, help="folder with config.json, weights.safetensors, "
                                                   "io.safetensors")
    c.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    c.add_argument("--tol", type=float, default=1e-4,
                   help="abs tolerance for eps_out/grad_x; per weight-gradient tol*max(1,max|ref|)")
    c.add_argument("--tok-tol", type=float, default=1e-5, help="abs tolerance for to_k.bias grads")
    c.add_argument("-v", "--verbose", action="store_true", help="one line per gradient tensor")

    b = sub.add_parser("bench", help="time forward and training steps")
    b.add_argument("--config", default="unet-s", help="unet-s, unet-tiny, a config.json or its folder")
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    b.add_argument("--iters", type=int, default=10)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--mode", choices=["both", "forward", "train"], default="both")
    b.add_argument("--channels-last", action="store_true", help="NHWC activations and weights")
    b.add_argument("--bf16", action="store_true",
                   help="torch.autocast('cpu', bfloat16) around the forward pass (mixed precision)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", help="write the results here")

    sm = sub.add_parser("sample", help="time DDIM sampling as a plain PyTorch loop")
    sm.add_argument("--config", default="unet-s", help="unet-s, unet-tiny, a config.json or its folder")
    sm.add_argument("--batch", type=int, default=64)
    sm.add_argument("--count", type=int, default=256, help="images drawn (after one warm-up chain)")
    sm.add_argument("--steps", type=int, default=50)
    sm.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--json", help="write the results here")

    tr = sub.add_parser("train", help="the PyTorch reference recipe on MNIST, writing checkpoints "
                                      "diffuflow evaluate samples")
    tr.add_argument("--data", required=True, help="folder with train-images-idx3-ubyte[.gz]")
    tr.add_argument("--out", required=True)
    tr.add_argument("--config", default="unet-s")
    tr.add_argument("--batch", type=int, default=64)
    tr.add_argument("--lr", type=float, default=2e-4)
    tr.add_argument("--ema-decay", type=float, default=0.999)
    tr.add_argument("--max-time", type=float, default=1800, help="seconds of training")
    tr.add_argument("--save-every", type=float, default=300, help="seconds of training between checkpoints")
    tr.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    tr.add_argument("--channels-last", action="store_true", help="NHWC activations and weights")
    tr.add_argument("--seed", type=int, default=0)

    i = sub.add_parser("init", help="write random weights as safetensors")
    i.add_argument("--config", default="unet-s")
    i.add_argument("--out", required=True)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--io-out", help="also write random inputs x, t, g_out (for unet-io / io)")
    i.add_argument("--batch", type=int, default=2, help="batch of --io-out")

    df = sub.add_parser("diff", help="compare two unet-io style output files (A against "
                                     "reference B) with the fixtures' tolerances")
    df.add_argument("a")
    df.add_argument("b")
    df.add_argument("--tol", type=float, default=1e-4)
    df.add_argument("--tok-tol", type=float, default=1e-5)
    df.add_argument("-v", "--verbose", action="store_true")

    o = sub.add_parser("io", help="like `diffuflow unet-io`: run forward (and backward when the "
                                  "inputs hold g_out) on tensors from a file")
    o.add_argument("--config", required=True)
    o.add_argument("--weights", required=True)
    o.add_argument("--inputs", required=True, help="x F32 [N,C,H,W], t I64/I32 [N], optional g_out")
    o.add_argument("--out", required=True)
    o.add_argument("--threads", type=int, default=0)

    fx = sub.add_parser("fixture", help="write a parity fixture folder (config, weights, inputs and the "
                                        "peer's outputs and gradients)")
    fx.add_argument("--config", required=True, help="a config.json (copied into the folder as is)")
    fx.add_argument("--out", required=True)
    fx.add_argument("--seed", type=int, default=0)
    fx.add_argument("--batch", type=int, default=2)
    fx.add_argument("--t", type=int, nargs="*", help="the timesteps (default: random)")
    fx.add_argument("--f16-weights", action="store_true", help="store float16-exact weights as F16")
    fx.add_argument("--max-grad-elements", type=int, default=0,
                    help="store only the parameter gradients of at most this many elements (0: all)")
    fx.add_argument("--threads", type=int, default=2)

    args = ap.parse_args(argv)
    threads = getattr(args, "threads", 0)
    if threads:
        # before torch is imported: OpenMP (ATen, oneDNN) and OpenBLAS's own pool
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    _import_torch()
    return {"check": cmd_check, "bench": cmd_bench, "sample": cmd_sample, "init": cmd_init, "io": cmd_io,
            "diff": cmd_diff, "fixture": cmd_fixture, "train": cmd_train}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
