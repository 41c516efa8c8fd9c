"""Weight formats for the compact forward's linear layers: fp32, bf16, int8 and int4.

The residual stream and norms stay in the model's dtype (attention and the KV cache too, or
float64 with int8 / int4: model.kv_dtype); only each projection's weights change format, and its
input is cast to bf16 for the kernel and its output back. Measured on the 2-core x86 CPU
(benchmarks/results/quant_kernels_cpu.md, all projections of one SmolLM2-135M forward): fp32
through oneDNN 18 ms at 1 row, 29 at 8, 62 at 64; int8 per channel (`_weight_int8pack_mm`) 5.6 /
10.8 / 81 and int4 per group of 32 (`_weight_int4pack_mm_for_cpu`) 6.5 / 8.8 / 74 with bf16
activations (with fp32 activations both kernels take a reference path 3-100x slower, so
activations are bf16); bf16 weights through oneDNN 18 / 18 / 37. Quantized weights win at the
narrow widths where decoding lives and lose from ~32 rows on (the kernels' own cost grows with
rows, oneDNN's barely does).

int4 is per group of 32 inputs, w = d*q + m (Q4_1's rule). It keeps a GGUF's own Q4_0 / Q4_1
values where the model came from one: those blocks are exactly the kernel's (q - 8) * scale +
zero with scale = d, zero = m + 8d (`gguf_q4.py`; used only where the blocks reproduce the
loaded weights exactly). int8 is 8 bits per group of 32 (llama.cpp's 8-bit granularity; per
output channel it agreed with fp32 on only 96.1% of greedy tokens even in fp32 arithmetic, the
embedded model's rows spanning very different group scales), run as two 4-bit halves through
the int4 kernel (q = 16*hi + lo, the outputs summed in fp32): no torch CPU kernel takes 8-bit
group scales. From GGUF Q4 blocks int8 holds the same values as int4.

The LM head of an int4 / int8 model is int8 per output channel (as llama.cpp keeps Q8_0 / Q6_K
for it: its 49k rows are a third of SmolLM2's weights), and its top logits are recomputed from
the dense head (`model._refine`; the embedding's storage when tied): the bf16 output of the
packed head flips near ties, which cost 1.7 points of greedy agreement with fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from parafill.backends.engine.model import CompactLM

Format = Literal["fp32", "bf16", "int8", "int4"]
FORMATS: tuple[Format, ...] = ("fp32", "bf16", "int8", "int4")
GROUP = 32  # int4 group size (GGUF's block)
_ACT = torch.bfloat16  # the quantized kernels' activation dtype


class WeightFormatError(ValueError):
    """An unknown weight format, or one the model cannot use (the HF fallback's models)."""


def check_format(name: str) -> Format:
    if name not in FORMATS:
        raise WeightFormatError(
            f"unknown weight format {name!r}; choose one of {', '.join(FORMATS)}"
        )
    return name


@dataclass(frozen=True)
class Packed:
    """A linear layer's weight in a packed format; `matmul(x)` is x @ W.T in x's dtype."""

    kind: Literal["bf16", "int8", "int4", "int8c", "q4", "q8"]
    data: Tensor  # bf16 (N, K) | int4: uint8 (N, K/2) in the int4 kernel's layout | int8: two
    scales: Tensor | None  # int4: (K/GROUP, N, 2) bf16 (scale, zero) | int8: two
    shape: tuple[int, int]  # (N, K): output and input features

    def matmul(self, x: Tensor, out: torch.dtype | None = None) -> Tensor:
        """x @ W.T in `out` (default x's dtype): x is cast to bf16 for the kernel."""
        out = out or x.dtype
        if self.kind in ("q4", "q8"):  # parafill's own kernels: fp32 activations
            from parafill.backends.engine import kernels

            bits = 4 if self.kind == "q4" else 8
            return kernels.linear(x.float(), self.data, self.shape[0], bits).to(out)
        a = x.to(_ACT)
        if self.kind == "bf16":
            y = _bf16_linear(a, self.data)
        elif self.kind == "int8":  # two 4-bit halves, summed in fp32
            assert self.scales is not None
            mm = torch.ops.aten._weight_int4pack_mm_for_cpu
            hi: Tensor = mm(a, self.data[0], GROUP, self.scales[0])
            lo: Tensor = mm(a, self.data[1], GROUP, self.scales[1])
            return (hi.float() + lo.float()).to(out)
        elif self.kind == "int8c":
            assert self.scales is not None
            y = torch._weight_int8pack_mm(a, self.data, self.scales)
        else:
            assert self.scales is not None
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(a, self.data, GROUP, self.scales)
        return y.to(out)

    @property
    def nbytes(self) -> int:
        extra = self.scales.numel() * self.scales.element_size() if self.scales is not None else 0
        return self.data.numel() * self.data.element_size() + extra


def _bf16_linear(a: Tensor, w: Tensor) -> Tensor:
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is not None and a.device.type == "cpu" and not torch.is_grad_enabled():
        if torch.compiler.is_compiling():  # inductor cannot lower the oneDNN op
            return torch.nn.functional.linear(a, w)
        try:
            return op(a, w, None, "none", [], "")  # type: ignore[no-any-return]
        except RuntimeError:  # no oneDNN bf16 primitive for this shape (AVX2-only CPUs)
            return torch.nn.functional.linear(a, w)
    return torch.nn.functional.linear(a, w)


def pack_bf16(w: Tensor) -> Packed:
    return Packed("bf16", w.detach().to(torch.bfloat16).contiguous(), None, _shape(w))


def pack_int8_channels(w: Tensor) -> Packed:
    """Symmetric per output channel: w ≈ scale[n] * q[n, k], q in -127..127 (LM heads)."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return Packed("int8c", q.contiguous(), scale.to(_ACT), _shape(w))


def pack_int8(w: Tensor) -> Packed:
    """Asymmetric per group of 32 inputs (llama.cpp's 8-bit granularity): w ≈ d * q + m, q in
    0..255."""
    q, d, low = _groups(w, 255)
    if _own_kernels():
        return pack_q8_blocks(q, d, low)
    return pack_int8_blocks(q, d, low)


def pack_int8_blocks(q: Tensor, d: Tensor, m: Tensor, levels: int = 256) -> Packed:
    """w = d * q + m per group of 32 inputs, q in 0..levels-1 (Q4_1 blocks: levels 16, kept
    exactly as q * 17 over d / 17). Stored as two 4-bit halves, q = 16 * hi + lo, each run
    through the int4 kernel: y = y_hi + y_lo."""
    if levels == 16:
        q, d = q * 17, d / 17.0
    hi, lo = pack_int4_blocks(q // 16, 16.0 * d, m), pack_int4_blocks(q % 16, d, 0.0 * m)
    assert hi.scales is not None and lo.scales is not None
    return Packed(
        "int8", torch.stack([hi.data, lo.data]), torch.stack([hi.scales, lo.scales]), hi.shape
    )


def pack_int4(w: Tensor) -> Packed:
    """Asymmetric per group of 32 inputs (Q4_1's rule): w ≈ d * q + m, q in 0..15."""
    if _own_kernels():
        return pack_q4_blocks(*_groups(w, 15))
    return pack_int4_blocks(*_groups(w, 15))


def pack_q4_blocks(q: Tensor, d: Tensor, m: Tensor) -> Packed:
    """For parafill's kernels (kernels.c, `kernels.block`'s layout): q (N, K) in 0..15, d and m
    (N, K/32), w = d * q + m; two values a byte as in GGUF blocks, d and m in fp32 (a GGUF's
    fp16 scales exactly)."""
    from parafill.backends.engine import kernels

    n, k = q.shape
    return Packed("q4", kernels.block(q, d, m, 4), None, (n, k))


def pack_q8_blocks(q: Tensor, d: Tensor, m: Tensor) -> Packed:
    """For parafill's kernels: q (N, K) integers, d and m (N, K/32), w = d * q + m, stored as
    signed bytes (values past 127 shifted down by 128, m taking 128 * d)."""
    from parafill.backends.engine import kernels

    n, k = q.shape
    q, d, m = q.to(torch.int32), d.float(), m.float()
    if int(q.max()) > 127:
        q, m = q - 128, m + 128.0 * d
    return Packed("q8", kernels.block(q, d, m, 8), None, (n, k))


def _own_kernels() -> bool:
    from parafill.backends.engine import kernels

    return kernels.available()


def _groups(w: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """Round each group of GROUP inputs onto 0..top by its min and max: (q (N, K), d, min)."""
    w = w.detach().float()
    n, k = w.shape
    if k % GROUP:
        raise ValueError(f"packed weights need input features divisible by {GROUP}, not {k}")
    g = w.view(n, k // GROUP, GROUP)
    low, high = g.amin(-1), g.amax(-1)
    d = ((high - low) / top).clamp(min=1e-12)
    q = torch.round((g - low[..., None]) / d[..., None]).clamp(0, top).to(torch.int32)
    return q.view(n, k), d, low


def pack_int4_blocks(q: Tensor, d: Tensor, m: Tensor) -> Packed:
    """From Q4_1-style blocks: q (N, K) in 0..15, d and m (N, K/32): w = d * q + m."""
    n, k = q.shape
    data = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
    # the kernel computes (q - 8) * scale + zero
    sz = torch.stack([d.float().T, (m.float() + 8.0 * d.float()).T], dim=-1)
    return Packed("int4", data, sz.to(_ACT).contiguous(), (n, k))


def _shape(w: Tensor) -> tuple[int, int]:
    return int(w.shape[0]), int(w.shape[1])


def dequantize(p: Packed) -> Tensor:
    """The fp32 weight a packed one stands for (tests and quality checks). int4's layout is the
    kernel's own, so it is read through the kernel (rounded to bf16 on the way out)."""
    if p.kind == "bf16":
        return p.data.float()
    if p.kind == "int8c":
        assert p.scales is not None
        return p.data.float() * p.scales.float()[:, None]
    if p.kind in ("q4", "q8"):
        from parafill.backends.engine import kernels

        n, k = p.shape
        q, d, m = kernels.unblock(p.data, n, k, 4 if p.kind == "q4" else 8)
        g = q.view(n, k // GROUP, GROUP).float()
        return (g * d[..., None] + m[..., None]).view(n, k)
    eye = torch.eye(p.shape[1], dtype=_ACT)
    return p.matmul(eye).float().T.contiguous()


@dataclass(frozen=True)
class QuantReport:
    format: Format
    bytes_before: int
    bytes_after: int
    from_gguf: int  # projections whose int4 values are the GGUF file's own blocks
    notes: tuple[str, ...] = ()


def quantize(
    lm: CompactLM,
    fmt: str,
    blocks: dict[str, tuple[Tensor, Tensor, Tensor]] | None = None,
    wide: set[str] | frozenset[str] = frozenset(),
) -> QuantReport:
    """Replace `lm`'s projection weights (and LM head) with `fmt`, in place. `blocks` maps a
    projection ("layers.3.qkv", ...) to GGUF Q4 blocks (q, d, m) that reproduce its weight
    exactly (gguf_q4.py); int4 uses them instead of re-quantizing. `wide`: projections whose
    source tensors are stored wider than 4 bits: kept at 8 bits under int4."""
    fmt = check_format(fmt)
    if fmt == "fp32":
        return QuantReport(fmt, 0, 0, 0)
    if lm.device.type != "cpu":
        raise WeightFormatError(
            f"weight format {fmt!r} is for the CPU; this model is on {lm.device}"
        )
    before = after = used = 0
    layers = []
    for i, layer in enumerate(lm.layers):
        packed: dict[str, Packed] = {}
        for name in ("qkv", "o", "gate_up", "down"):
            w = getattr(layer, name)
            got = (blocks or {}).get(f"layers.{i}.{name}") if fmt in ("int4", "int8") else None
            fixed = _from_blocks(fmt, got) if got else None
            if f"layers.{i}.{name}" in wide and fmt == "int4" and _own_kernels():
                # a wider source tensor: 8 bits (its own values where they are 8-bit blocks)
                fixed = fixed if fixed is not None and fixed.kind == "q8" else None
                packed[name] = fixed if fixed is not None else pack_int8(w)
            else:
                packed[name] = fixed if fixed is not None else _pack(fmt, w)
            used += fixed is not None
            before += w.numel() * w.element_size()
            after += packed[name].nbytes
        layers.append(
            replace(
                layer, qkv=packed["qkv"], o=packed["o"], gate_up=packed["gate_up"],
                down=packed["down"],
            )
        )  # fmt: skip
    lm.layers = layers
    head = lm.lm_head
    assert isinstance(head, Tensor)
    if fmt in ("int4", "int8"):  # 8 bits per group with our kernels, else per channel
        lm.lm_head = pack_int8(head) if _own_kernels() else pack_int8_channels(head)
    else:
        lm.lm_head = _pack(fmt, head)
    lm.head_exact = head  # top logits recomputed from it (model._refine); tied: no extra bytes
    before += head.numel() * head.element_size()
    after += lm.lm_head.nbytes
    return QuantReport(fmt, before, after, used)


def _from_blocks(fmt: Format, blocks: tuple[Tensor, Tensor, Tensor]) -> Packed | None:
    """A GGUF tensor's own groups: 4-bit values stay 4-bit in int4 (8-bit in int8), wider
    ones 8-bit (parafill's kernels; None without them: torch's kernels take 4-bit only)."""
    q = blocks[0]
    four = int(q.min()) >= 0 and int(q.max()) <= 15
    if _own_kernels():
        return (pack_q4_blocks if fmt == "int4" and four else pack_q8_blocks)(*blocks)
    if not four:
        return None
    return pack_int4_blocks(*blocks) if fmt == "int4" else pack_int8_blocks(*blocks, levels=16)


def _pack(fmt: Format, w: Tensor) -> Packed:
    return {"bf16": pack_bf16, "int8": pack_int8, "int4": pack_int4}[fmt](w)
