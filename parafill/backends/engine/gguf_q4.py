"""A GGUF file's own blocks for the compact forward's projections (packed weights).

Every mapped type comes down to groups of 32 inputs with w = d*q + m: Q4_1 (fp16 d, m, 4-bit
q), Q4_0 (w = d*(q - 8)), Q4_K (super-blocks of 256 whose eight sub-blocks of 32 have 6-bit
scale and min: d = d0*sc, m = -dmin*mn, q 4-bit), Q5_K (the same with 5-bit q), Q5_0 (q - 16,
signed) and Q8_0 (signed 8-bit q, m = 0). `q4_blocks` reads them for every layer's q/k/v, o,
gate/up and down, fused in the compact forward's order, and keeps a projection only where the
blocks reproduce the loaded fp32 weight exactly — which also settles the row order HF's loader
gives llama's q/k (it un-permutes llama.cpp's rotary layout) and refuses blocks that a merged
adapter changed. 4-bit q (0..15) become int4 weights; wider q become 8-bit groups
(quant.py), so a file's higher-precision tensors keep their precision. Q6_K (sub-blocks of 16
with their own scales, not expressible per 32) is not mapped: those projections are quantized
from the fp32 weights.

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

Blocks = tuple[Tensor, Tensor, Tensor]  # q (N, K) int32, d (N, K/32), m (N, K/32)
MAPPED = ("Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q5_0", "Q8_0")
FOUR_BIT = ("Q4_0", "Q4_1", "Q4_K", "IQ4_NL", "IQ4_XS", "Q3_K", "Q2_K")  # or fewer bits
_SIZES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34, "Q5_0": 22, "Q4_K": 144, "Q5_K": 176}
PARTS = {
    "qkv": ("attn_q", "attn_k", "attn_v"),
    "o": ("attn_output",),
    "gate_up": ("ffn_gate", "ffn_up"),
    "down": ("ffn_down",),
}


def q4_blocks(path: Path, lm: CompactLM) -> dict[str, Blocks]:
    """{"layers.i.qkv": (q, d, m), ...} for the projections whose GGUF blocks are of a mapped
    type and reproduce `lm`'s current (dense) weights exactly."""
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


def wide(path: Path, lm: CompactLM) -> set[str]:
    """The projections ("layers.i.down", ...) with a source tensor stored wider than 4 bits
    (Q5_*, Q6_K, Q8_0, F16, ...): a file's mixed-precision choice (Q4_K_M keeps attn_v and
    some ffn_down at Q6_K), which int4 weights keep at 8 bits."""
    kinds = _kinds(path)
    out = set()
    for i in range(len(lm.layers)):
        for name, srcs in PARTS.items():
            got = [kinds.get(f"blk.{i}.{src}.weight") for src in srcs]
            if any(k is not None and k not in FOUR_BIT for k in got):
                out.add(f"layers.{i}.{name}")
    return out


def _kinds(path: Path) -> dict[str, str]:
    """Every tensor's type, from the cached blocks' metadata (written with them)."""
    meta = _metadata(_cache_file(path))
    if meta is None:  # not written yet, or unreadable: (re)write it
        _raw_tensors(path, fresh=True)
        meta = _metadata(_cache_file(path)) or {}
    return {k.removeprefix("type:"): v for k, v in meta.items() if k.startswith("type:")}


def _metadata(cached: Path) -> dict[str, str] | None:
    try:
        with safe_open(str(cached), "pt") as f:
            return f.metadata() or {}
    except Exception:
        return None


def _cache_file(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"v3:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_root() / "q4" / f"{path.stem}-{key.hexdigest()[:12]}.safetensors"


def _raw_tensors(path: Path, fresh: bool = False) -> dict[str, tuple[str, Tensor]]:
    """{name: (kind, raw uint8 blocks (rows, bytes))} of the file's mapped tensors; every
    tensor's type goes into the cache file's metadata too ("type:NAME")."""
    from safetensors.torch import load_file, save_file

    cached = _cache_file(path)
    if cached.is_file() and not fresh:
        try:
            with safe_open(str(cached), "pt") as f:
                kinds = f.metadata() or {}
            return {name: (kinds[name], t) for name, t in load_file(str(cached)).items()}
        except Exception:  # unreadable (truncated, overwritten): read the GGUF and rewrite it
            pass
    import gguf

    out = {}
    every = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        every[t.name] = t.tensor_type.name
        if t.tensor_type.name in MAPPED:
            raw = np.array(t.data, dtype=np.uint8)  # a copy: the reader maps the file read-only
            out[t.name] = (t.tensor_type.name, torch.from_numpy(raw.reshape(raw.shape[0], -1)))
    cached.parent.mkdir(parents=True, exist_ok=True)
    kinds = {name: kind for name, (kind, _) in out.items()}
    kinds.update({f"type:{name}": kind for name, kind in every.items()})
    fd, tmp = tempfile.mkstemp(prefix=cached.name + ".tmp", dir=cached.parent)
    os.close(fd)
    try:  # a unique name per writer; the rename is atomic, so readers see a whole file
        save_file({name: t.contiguous() for name, (_, t) in out.items()}, tmp, kinds)
        os.replace(tmp, cached)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def _read(t: tuple[str, Tensor] | None) -> Blocks | None:
    """A mapped tensor's groups of 32 (None where the file has none of that name)."""
    if t is None:
        return None
    kind, data = t
    raw = data.numpy()
    rows = raw.shape[0]
    raw = raw.reshape(rows, -1, _SIZES[kind])
    if kind in ("Q4_K", "Q5_K"):
        q, d, m = _k_quant(kind, raw)
    else:
        d = _f16(raw[..., 0:2])
        if kind == "Q8_0":
            q, m = raw[..., 2:].copy().view(np.int8).astype(np.int32), np.zeros_like(d)
        elif kind == "Q5_0":
            qh = raw[..., 2:6].copy().view(np.uint32)  # (rows, blocks, 1): bit j is q_j's 5th
            lo = _nibbles(raw[..., 6:])
            hi = (qh >> np.arange(32, dtype=np.uint32)) & 1
            q, m = (lo | (hi << 4)).astype(np.int32) - 16, np.zeros_like(d)
        else:  # Q4_1: fp16 d, fp16 m; Q4_0: w = d*(q - 8), only used through the check below
            m = _f16(raw[..., 2:4]) if kind == "Q4_1" else -8.0 * d
            q = _nibbles(raw[..., -16:]).astype(np.int32)
    return (
        torch.from_numpy(np.ascontiguousarray(q.reshape(rows, -1))),
        torch.from_numpy(np.ascontiguousarray(d.reshape(rows, -1))),
        torch.from_numpy(np.ascontiguousarray(m.reshape(rows, -1))),
    )


def _f16(b: np.ndarray) -> np.ndarray:
    return b.copy().view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 values: the low nibbles first (GGUF's order within a block)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _k_quant(kind: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K / Q5_K super-blocks as eight groups of 32: q (rows, blocks * 8, 32), d, m
    (rows, blocks * 8), with gguf's own arithmetic for the groups' scales and minimums."""
    from gguf.quants import Q4_K

    rows, nb, _ = raw.shape
    flat = raw.reshape(rows * nb, -1)
    d0, dmin = _f16(flat[:, 0:2][:, None])[:, 0], _f16(flat[:, 2:4][:, None])[:, 0]
    sc, mn = Q4_K.get_scale_min(flat[:, 4:16])
    d = d0[:, None] * sc.astype(np.float32)
    m = -(dmin[:, None] * mn.astype(np.float32))
    if kind == "Q4_K":
        qs = flat[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8)[:, None]
        q = (qs & 0x0F).reshape(-1, 8, 32).astype(np.int32)
    else:
        qh = flat[:, 16:48].reshape(-1, 1, 32) >> np.arange(8, dtype=np.uint8)[:, None]
        qs = flat[:, 48:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8)[:, None]
        lo = (qs & 0x0F).reshape(-1, 8, 32)
        q = (lo | ((qh & 1).reshape(-1, 8, 32) << 4)).astype(np.int32)
    return q.reshape(rows, -1), d.reshape(rows, -1), m.reshape(rows, -1)


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
    """GGUF's own arithmetic (fp32): d*q + m per group (K-quants: d*q - dmin*mn, the same
    operations; Q4_0's m = -8d gives d*q - 8d, which equals its d*(q - 8) only where rounding
    agrees: the exactness check decides)."""
    return d.repeat_interleave(32, 1) * q.float() + m.repeat_interleave(32, 1)


def _unpermute(n: int, n_head: int) -> Tensor:
    """Row order HF's loader gives a llama q/k weight (rows (head, pair, half) → (head, half,
    pair))."""
    dim = n // n_head // 2
    return torch.arange(n).reshape(n_head, dim, 2).transpose(1, 2).reshape(n)
