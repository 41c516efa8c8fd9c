"""Where a decode step's time goes: the kernels of one static decode step, by GPU time.

    python benchmarks/engine_profile.py [--shape 8b] [--width 1]

Runs the engine's static decode step eagerly (no CUDA graph, so each kernel is visible) on a
random-weight Llama of a real shape, and prints the kernels sorted by device time, their
count, the summed kernel time and the weight-streaming floor beside it: the gap between the
kernel sum and the floor is kernel inefficiency; between the graph step and the kernel sum,
gaps between kernels.
"""

from __future__ import annotations

import argparse

import torch
from engine_step import SHAPES, build
from torch.profiler import ProfilerActivity, profile

from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.model import CompactLM
from parafill.backends.engine.sampling import GenParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    ap.add_argument("--width", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--bandwidth", type=float, default=3350.0, help="GB/s (H100 SXM: 3350)")
    a = ap.parse_args()
    assert torch.cuda.is_available(), "this profile is of the CUDA step"
    model = build(a.shape, "cuda", torch.bfloat16)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = EngineConfig(rows=a.width, budget_tokens=a.width * 512, decode="static")
    eng = Engine(CompactLM(model, 4096), cfg)
    assert eng.decoder is not None
    eng.decoder.graphs = False
    for i in range(a.width):
        eng.submit([1 + i, 2, 3, 4, 5, 6, 7, 8], GenParams(max_tokens=a.steps + 8))
    for _ in range(3):
        eng.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(a.steps):
            eng.step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events) / a.steps / 1e3
    count = sum(e.count for e in events) / a.steps
    floor = weight_bytes / (a.bandwidth * 1e9) * 1e3
    print(
        f"{torch.cuda.get_device_name()}: {a.shape} width {a.width}: {count:.0f} kernels/step, "
        f"kernel time {total:.2f} ms/step, weight-streaming floor {floor:.2f} ms"
    )
    print("| kernel | per step | ms/step |")
    print("|---|---|---|")
    for e in events[:25]:
        print(
            f"| {e.key[:90]} | {e.count / a.steps:.0f} | {e.device_time_total / a.steps / 1e3:.3f} |"
        )


if __name__ == "__main__":
    main()
