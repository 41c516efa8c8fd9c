"""parafill's own CPU kernels (kernels.c): packed-weight linear layers and ordered attention.

The C file is compiled once per machine with the system C compiler into the cache
(`$PARAFILL_CACHE/kernels/<hash>.so`, a file lock shared by concurrent first runs) and called
through ctypes; the OpenMP runtime is torch's own (the same `libgomp.so.1`), and each call takes
torch's current thread count. Without a compiler (or with `PARAFILL_KERNELS=0`) `available()` is
False and the engine uses torch's kernels instead (float64 attention for packed weights, as
before). Both kernels are batch-invariant (kernels.c says how); they run on CPU tensors only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import Tensor

from parafill.backends.engine.weights import cache_root

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O2", "-fPIC", "-shared", "-fopenmp", "-fno-fast-math"]
log = logging.getLogger(__name__)

_P = ctypes.c_void_p
_I = ctypes.c_int64


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build() -> Path | None:
    cc = _compiler()
    if cc is None:
        return None
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        SOURCE.read_bytes() + version.encode() + platform.machine().encode() + str(FLAGS).encode()
    ).hexdigest()[:16]
    out = cache_root() / "kernels" / f"{key}.so"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if out.is_file():
            return out
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            done = subprocess.run(
                [cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True
            )
            if done.returncode:
                log.warning("building parafill's CPU kernels failed:\n%s", done.stderr[-2000:])
                return None
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return out


@functools.cache
def _lib() -> ctypes.CDLL | None:
    if os.environ.get("PARAFILL_KERNELS", "1") == "0":
        return None
    try:
        path = _build()
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.warning("parafill's CPU kernels are unavailable: %s", exc)
        return None
    lib.pf_linear.argtypes = [_P, _I, _I, _P, _I, _P, ctypes.c_int, ctypes.c_int]
    lib.pf_linear.restype = None
    lib.pf_linear_portable.argtypes = lib.pf_linear.argtypes[:-1]
    lib.pf_linear_portable.restype = None
    lib.pf_attention.argtypes = [
        _P, _I, _I, _I, _I, _P, _P, _I, _I, _P, _P, _P, ctypes.c_float, _P, ctypes.c_int,
    ]  # fmt: skip
    lib.pf_attention.restype = None
    lib.pf_has_avx2.restype = ctypes.c_int
    lib.pf_forward.argtypes = [_P, _P, _P, _I, _P, _P, ctypes.c_int]
    lib.pf_forward.restype = None
    return lib


def available() -> bool:
    """Whether the kernels are built and loaded (building them on first use)."""
    return _lib() is not None


def simd() -> str:
    lib = _lib()
    if lib is None:
        return "none"
    return "avx2+fma" if lib.pf_has_avx2() else "portable C"


def linear(x: Tensor, blob: Tensor, n: int, bits: int, portable: bool = False) -> Tensor:
    """x (M, K) fp32 @ W.T for W packed by `block` (4- or 8-bit groups of 32, N outputs).
    `portable`: the plain C path, one thread (tests: it must equal the SIMD path bit for bit)."""
    lib = _lib()
    assert lib is not None
    x = x.contiguous()
    m, k = x.shape
    y = torch.empty(m, n, dtype=torch.float32)
    if portable:
        lib.pf_linear_portable(x.data_ptr(), m, k, blob.data_ptr(), n, y.data_ptr(), bits)
    else:
        lib.pf_linear(
            x.data_ptr(), m, k, blob.data_ptr(), n, y.data_ptr(), bits, torch.get_num_threads()
        )
    return y


NB = 4  # output features per block (kernels.c)


def block(q: Tensor, d: Tensor, m: Tensor, bits: int) -> Tensor:
    """The kernels' layout (kernels.c) of w = d * q + m: q (N, K) integers (4-bit: 0..15; 8-bit:
    -128..127), d and m (N, K/32). Per block of 4 outputs and pair of groups, one record: the
    values, then d and m. Zero padding to whole blocks and pairs."""
    n, k = q.shape
    g = k // 32
    if bits == 4:
        qg = q.to(torch.uint8).view(n, g, 32)
        per = qg[..., :16] | (qg[..., 16:] << 4)  # (N, G, 16): GGUF's nibble order
    else:
        per = q.to(torch.int8).view(torch.uint8).view(n, g, 32)
    nb, gp = -(-n // NB), g + g % 2
    vals = torch.zeros(nb * NB, gp, per.shape[-1], dtype=torch.uint8)
    vals[:n, :g] = per
    dd = torch.zeros(nb * NB, gp, dtype=torch.float32)
    mm = torch.zeros(nb * NB, gp, dtype=torch.float32)
    dd[:n, :g], mm[:n, :g] = d.float(), m.float()
    p = gp // 2

    def records(t: Tensor) -> Tensor:  # (N', G', X) -> (blocks, pairs, 4 * 2 * X)
        x = t.shape[-1]
        return t.reshape(nb, NB, p, 2 * x).permute(0, 2, 1, 3).reshape(nb, p, NB * 2 * x)

    scales = [records(t[..., None]).contiguous().view(torch.uint8) for t in (dd, mm)]
    return torch.cat([records(vals), *scales], dim=-1).contiguous()


def unblock(blob: Tensor, n: int, k: int, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """`block`'s inverse: (q (N, K) int32, d, m (N, K/32))."""
    g = k // 32
    nb, p, rec = blob.shape
    per = 16 if bits == 4 else 32
    vals = blob[..., : NB * 2 * per].reshape(nb, p, NB, 2, per).permute(0, 2, 1, 3, 4)
    vals = vals.reshape(nb * NB, 2 * p, per)[:n, :g]
    if bits == 4:
        q = torch.cat([vals & 15, vals >> 4], dim=-1).to(torch.int32)
    else:
        q = vals.contiguous().view(torch.int8).to(torch.int32)

    def scale(at: int) -> Tensor:
        raw = blob[..., at : at + 32].contiguous().view(torch.float32)  # (nb, p, 8)
        return raw.reshape(nb, p, NB, 2).permute(0, 2, 1, 3).reshape(nb * NB, 2 * p)[:n, :g]

    return q.reshape(n, k), scale(NB * 2 * per), scale(NB * 2 * per + 32)


def attention(
    q: Tensor, k_layer: Tensor, v_layer: Tensor, keys: tuple[Tensor, Tensor, Tensor], scale: float
) -> Tensor:
    """q (T, H, D) fp32; one layer's caches (R, Hkv, W, D) fp32; `keys` = (rows (T,) int32,
    column-array addresses (T,) int64, lengths (T,) int32): query i attends to the keys at its
    columns, in that order. Returns (T, H, D)."""
    lib = _lib()
    assert lib is not None
    q = q.contiguous()
    t, h, dim = q.shape
    _, hkv, width, _ = k_layer.shape
    out = torch.empty_like(q)
    rows, ptrs, lens = keys
    lib.pf_attention(
        q.data_ptr(), t, h, hkv, dim, k_layer.data_ptr(), v_layer.data_ptr(),
        hkv * width * dim, width, rows.data_ptr(), ptrs.data_ptr(), lens.data_ptr(), scale,
        out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out


class _QW(ctypes.Structure):
    _fields_ = [("blob", _P), ("bias", _P), ("n", _I), ("k", _I), ("bits", _I)]


class _LW(ctypes.Structure):
    _fields_ = [("ln1", _P), ("ln2", _P), ("qkv", _QW), ("o", _QW), ("gate_up", _QW), ("down", _QW)]


class _Dims(ctypes.Structure):
    _fields_ = [
        ("hidden", _I), ("heads", _I), ("kv_heads", _I), ("head_dim", _I), ("inter", _I),
        ("eps", ctypes.c_double), ("scale", ctypes.c_double),
    ]  # fmt: skip


class _Step(ctypes.Structure):
    _fields_ = [
        ("t", _I), ("pos", _P), ("cos", _P), ("sin", _P), ("rows", _P), ("cols", _P),
        ("key_ptrs", _P), ("key_lens", _P), ("kc", _P), ("vc", _P), ("cache_rows", _I),
        ("width", _I),
    ]  # fmt: skip


Proj = tuple[Tensor, tuple[int, int], int, Tensor | None]


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer for `Layers`: norms (fp32) and packed projections, each
    (blob, (N, K), bits, bias or None)."""

    ln1: Tensor
    ln2: Tensor
    qkv: Proj
    o: Proj
    gate_up: Proj
    down: Proj


class Layers:
    """Whole decoder layers in one call (`pf_forward`): the residual stream in, updated in
    place; K/V written to the caches; attention over each query's ordered key list."""

    def __init__(
        self, layers: list[LayerWeights], dims: tuple[int, int, int, int, int], eps: float
    ) -> None:
        lib = _lib()
        assert lib is not None
        self._lib = lib
        self._keep = layers  # the tensors the structures point into
        self._arr = (_LW * len(layers))(*[_lw(x) for x in layers])
        hidden, heads, kv_heads, head_dim, inter = dims
        self._dims = _Dims(hidden, heads, kv_heads, head_dim, inter, eps, head_dim**-0.5)
        self._all = torch.arange(len(layers), dtype=torch.int32)

    def run(
        self,
        x: Tensor,
        step: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
        caches: tuple[Tensor, Tensor],
        layers: Tensor | None = None,
    ) -> Tensor:
        """x (T, hidden) fp32; `step` = (positions int64, cos, sin, rows int32, cols int32,
        key addresses int64, key lengths int32); caches (layers, R, Hkv, W, D) fp32;
        `layers`: int32 indices to run (None: all). Returns x, updated in place."""
        pos, cos, sin, rows, cols, ptrs, lens = step
        k, v = caches
        x = x.contiguous()
        which = self._all if layers is None else layers
        st = _Step(
            x.shape[0], pos.data_ptr(), cos.data_ptr(), sin.data_ptr(), rows.data_ptr(),
            cols.data_ptr(), ptrs.data_ptr(), lens.data_ptr(), k.data_ptr(), v.data_ptr(),
            k.shape[1], k.shape[3],
        )  # fmt: skip
        self._lib.pf_forward(
            x.data_ptr(), ctypes.addressof(self._arr), which.data_ptr(), which.numel(),
            ctypes.byref(self._dims), ctypes.byref(st), torch.get_num_threads(),
        )  # fmt: skip
        return x


def _qw(p: Proj) -> _QW:
    blob, (n, k), bits, bias = p
    return _QW(blob.data_ptr(), bias.data_ptr() if bias is not None else None, n, k, bits)


def _lw(x: LayerWeights) -> _LW:
    return _LW(
        x.ln1.data_ptr(), x.ln2.data_ptr(), _qw(x.qkv), _qw(x.o), _qw(x.gate_up), _qw(x.down)
    )


__all__ = ["LayerWeights", "Layers", "available", "attention", "block", "linear", "simd", "unblock"]
