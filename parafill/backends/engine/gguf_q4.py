"""A GGUF file's own 4-bit blocks for the compact forward's projections (int4 weights).

Q4_0 and Q4_1 store each row in blocks of 32 inputs: Q4_1 as fp16 d, fp16 m and 32 4-bit q
(w = d*q + m), Q4_0 as fp16 d and q (w = d*(q - 8)). `q4_blocks` reads them for every layer's
q/k/v, o, gate/up and down, fused in the compact forward's order, and keeps a projection only
where the blocks reproduce the loaded fp32 weight exactly — which also settles the row order
HF's loader gives llama's q/k (it un-permutes llama.cpp's rotary layout) and refuses blocks
that a merged adapter changed. Other block types (Q8_0, K-quants) are not mapped: int4 then
quantizes those projections from the fp32 weights.

Parsing a GGUF's metadata (its 49k-token vocabulary) costs ~3 s on the 2-core CPU, so the Q4
tensors' raw blocks are cached once as safetensors beside the converted model (weights.py's
cache, keyed by the file's path, size and mtime); later opens read them in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from parafill.backends.engine.weights import cache_root

if TYPE_CHECKING:
    from parafill.backends.engine.model import CompactLM

Blocks = tuple[Tensor, Tensor, Tensor]  # q (N, K) int32 0..15, d (N, K/32), m (N, K/32)
PARTS = {
    "qkv": ("attn_q", "attn_k", "attn_v"),
    "o": ("attn_output",),
    "gate_up": ("ffn_gate", "ffn_up"),
    "down": ("ffn_down",),
}


def q4_blocks(path: Path, lm: CompactLM) -> dict[str, Blocks]:
    """{"layers.i.qkv": (q, d, m), ...} for the projections whose GGUF blocks are Q4_0/Q4_1
    and reproduce `lm`'s current (dense) weights exactly."""
    tensors = _raw_tensors(path)
    s = lm.shapes
    out: dict[str, Blocks] = {}
    for i, layer in enumerate(lm.layers):
        for name, srcs in PARTS.items():
            dense = getattr(layer, name)
            if not isinstance(dense, Tensor):
                continue
            parts = [_read(tensors.get(f"blk.{i}.{src}.weight")) for src in srcs]
            if any(p is None for p in parts):
                continue
            heads = {"attn_q": s.heads, "attn_k": s.kv_heads}
            got = _match([p for p in parts if p is not None], srcs, heads, dense)
            if got is not None:
                out[f"layers.{i}.{name}"] = got
    return out


def _raw_tensors(path: Path) -> dict[str, tuple[str, Tensor]]:
    """{name: (kind, raw uint8 blocks (rows, bytes))} of the file's Q4_0 / Q4_1 tensors."""
    from safetensors.torch import load_file, save_file

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cached = cache_root() / "q4" / f"{path.stem}-{key.hexdigest()[:12]}.safetensors"
    if cached.is_file():
        try:
            with safe_open(str(cached), "pt") as f:
                kinds = f.metadata() or {}
            return {name: (kinds[name], t) for name, t in load_file(str(cached)).items()}
        except Exception:  # unreadable (truncated, overwritten): read the GGUF and rewrite it
            pass
    import gguf

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.tensor_type.name in ("Q4_0", "Q4_1"):
            raw = np.array(t.data, dtype=np.uint8)  # a copy: the reader maps the file read-only
            out[t.name] = (t.tensor_type.name, torch.from_numpy(raw.reshape(raw.shape[0], -1)))
    cached.parent.mkdir(parents=True, exist_ok=True)
    kinds = {name: kind for name, (kind, _) in out.items()}
    fd, tmp = tempfile.mkstemp(prefix=cached.name + ".tmp", dir=cached.parent)
    os.close(fd)
    try:  # a unique name per writer; the rename is atomic, so readers see a whole file
        save_file({name: t.contiguous() for name, (_, t) in out.items()}, tmp, kinds)
        os.replace(tmp, cached)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def _read(t: tuple[str, Tensor] | None) -> Blocks | None:
    """A Q4_0 / Q4_1 tensor's blocks (None where the file has none of that name)."""
    if t is None:
        return None
    kind, data = t
    size = 20 if kind == "Q4_1" else 18
    raw = data.numpy()
    rows = raw.shape[0]
    raw = raw.reshape(rows, -1, size)
    d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if kind == "Q4_1":
        m = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    else:
        m = -8.0 * d  # w = d*(q - 8); only used through the exactness check below
    qs = raw[..., size - 16 :]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, -1)  # low nibbles first
    return torch.from_numpy(q.astype(np.int32)), torch.from_numpy(d), torch.from_numpy(m)


def _match(
    parts: list[Blocks], srcs: tuple[str, ...], heads: dict[str, int], dense: Tensor
) -> Blocks | None:
    """The parts fused in order, with q/k rows in whichever order (llama.cpp's or HF's
    un-permuted one) reproduces `dense` exactly; None if neither does."""
    for permute in (False, True):
        fused = []
        for (q, d, m), src in zip(parts, srcs, strict=True):
            if permute and src in heads:
                idx = _unpermute(q.shape[0], heads[src])
                q, d, m = q[idx], d[idx], m[idx]
            fused.append((q, d, m))
        q, d, m = (torch.cat([f[j] for f in fused]) for j in range(3))
        if q.shape == dense.shape and torch.equal(_dequant(q, d, m), dense.float()):
            return q, d, m
    return None


def _dequant(q: Tensor, d: Tensor, m: Tensor) -> Tensor:
    """GGUF's own arithmetic (fp32): d*q + m per block (Q4_0's m = -8d gives d*q - 8d, which
    equals its d*(q - 8) only where rounding agrees: the exactness check decides)."""
    return d.repeat_interleave(32, 1) * q.float() + m.repeat_interleave(32, 1)


def _unpermute(n: int, n_head: int) -> Tensor:
    """Row order HF's loader gives a llama q/k weight (rows (head, pair, half) → (head, half,
    pair))."""
    dim = n // n_head // 2
    return torch.arange(n).reshape(n_head, dim, 2).transpose(1, 2).reshape(n)
