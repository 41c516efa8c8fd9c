"""Weight formats for the engine's linear layers on this CPU: time of every projection of one
SmolLM2-135M forward (30 layers' qkv / o / gate_up / down, plus the 49,152-row LM head) at
1..64 rows, per kernel, measured side by side (interleaved repetitions, medians).

    python benchmarks/quant_kernels.py          # -> benchmarks/results/quant_kernels_cpu.md

Kernels: fp32 and bf16 through oneDNN (`mkldnn._linear_pointwise`, the engine's fp32 path) and
`F.linear`; weight-only int8 per channel (`_weight_int8pack_mm`) and int4 per group of 32
(`_weight_int4pack_mm_for_cpu`) with fp32 or bf16 activations. Weight values are random (time
does not depend on them).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
LAYERS = 30
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) per layer
HEAD = (49152, 576)
Kernel = Callable[[torch.Tensor], torch.Tensor]


def _onednn(w: torch.Tensor) -> Kernel:
    op = torch.ops.mkldnn._linear_pointwise
    return lambda x: op(x.to(w.dtype), w, None, "none", [], "")


def _flinear(w: torch.Tensor) -> Kernel:
    return lambda x: F.linear(x.to(w.dtype), w)


def _int8(w: torch.Tensor, act: torch.dtype) -> Kernel:
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127
    q = torch.round(w / scale[:, None]).to(torch.int8)
    s = scale.to(act)
    return lambda x: torch._weight_int8pack_mm(x.to(act), q, s)


def _int4(w: torch.Tensor, act: torch.dtype, group: int = 32) -> Kernel:
    n, k = w.shape
    g = w.view(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.view(n, k), 1)
    sz = torch.stack([scale.T, (lo + 8 * scale).T], -1).contiguous().to(act)
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(act), packed, group, sz)


FORMATS: dict[str, Callable[[torch.Tensor], Kernel]] = {
    "fp32 oneDNN": lambda w: _onednn(w),
    "fp32 F.linear": lambda w: _flinear(w),
    "bf16 oneDNN": lambda w: _onednn(w.bfloat16()),
    "int8 w / fp32 act": lambda w: _int8(w, torch.float32),
    "int8 w / bf16 act": lambda w: _int8(w, torch.bfloat16),
    "int4 g32 / fp32 act": lambda w: _int4(w, torch.float32),
    "int4 g32 / bf16 act": lambda w: _int4(w, torch.bfloat16),
}


def forward_fn(fmt: str, head: bool) -> Callable[[torch.Tensor], None]:
    """All projections of one forward in format `fmt`: one kernel per distinct shape, run 30
    times (the layers' weights differ only in values; streaming cost is the same)."""
    ins = [s[1] for s in SHAPES]
    lm = FORMATS[fmt](torch.randn(*HEAD) * 0.05) if head else None
    layers = [[FORMATS[fmt](torch.randn(*s) * 0.05) for s in SHAPES] for _ in range(LAYERS)]

    def run(x: torch.Tensor) -> None:
        for layer in layers:
            for kern, k in zip(layer, ins, strict=True):
                kern(x if k == 576 else torch.cat([x, x, x[:, :384]], 1))
        if lm is not None:
            lm(x)

    return run


def measure(rows: list[int], reps: int) -> dict[tuple[str, int], float]:
    fns = {f: forward_fn(f, head=True) for f in FORMATS}
    times: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for _ in range(reps):
            for r in rows:
                x = torch.randn(r, 576)
                for f, fn in fns.items():
                    fn(x)  # warm
                    t0 = time.perf_counter()
                    fn(x)
                    times.setdefault((f, r), []).append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/quant_kernels_cpu.md"))
    args = ap.parse_args()
    ms = measure(args.rows, args.reps)
    lines = [
        "# Linear-layer kernels per weight format (one SmolLM2-135M forward's projections)",
        "",
        f"- hardware: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; ms per forward (210 layer projections + LM head), "
        f"median of {args.reps} interleaved repetitions; `python benchmarks/quant_kernels.py`",
        "",
        "| format | " + " | ".join(f"{r} rows" for r in args.rows) + " |",
        "|---|" + "---|" * len(args.rows),
    ]
    lines += [
        f"| {f} | " + " | ".join(f"{ms[f, r]:.1f}" for r in args.rows) + " |" for f in FORMATS
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
