"""The engine's decode speed when the CPU is shared: idle, beside a busy process, beside a second
engine — with every thread (torch's default), one thread, and the thread tuner (`threads="auto"`).

    python benchmarks/neighbour.py [--widths 1 8] [--tokens 64] [--rounds 2]
    # -> benchmarks/results/neighbour_cpu.md

Each cell: tokens/s of `width` concurrent greedy requests (`--tokens` each) on the embedded model
with today's default weights, in this process (LocalBackend, no HTTP); median of --rounds.
Neighbours: `spin` is one Python process spinning (one core taken); `twin` is a second process
running this same engine and setting, decoding without pause. Every row is measured in one run,
one setting after another, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
import torch
from cpu_peer import local_level
from hardware import describe

from parafill.backends.local import LocalBackend, LocalConfig

OUT = Path(__file__).parent / "results" / "neighbour_cpu.md"
DEFAULT_THREADS = torch.get_num_threads()
SETTINGS = {"all threads": os.cpu_count() or 1, "one thread": 1, "auto": "auto"}


def neighbour(kind: str, setting: str) -> subprocess.Popen[bytes] | None:
    if kind == "idle":
        return None
    code = "while True: pass" if kind == "spin" else None
    cmd = [sys.executable, "-c", code] if code else [sys.executable, __file__, "--twin", setting]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8 if kind == "twin" else 1)  # the twin opens its model first
    return proc


async def measure(args: argparse.Namespace) -> dict[tuple[str, str, int], float]:
    rates: dict[tuple[str, str, int], list[float]] = {}
    for name, threads in SETTINGS.items():
        async with LocalBackend.open(LocalConfig(threads=threads)) as backend:  # type: ignore[arg-type]
            await local_level(backend, 1, 8)  # warm-up
            for kind in ("idle", "spin", "twin"):
                proc = neighbour(kind, name)
                try:
                    for _ in range(args.rounds):
                        for w in args.widths:
                            got = await local_level(backend, w, args.tokens)
                            rates.setdefault((kind, name, w), []).append(got)
                finally:
                    if proc is not None:
                        proc.kill()
                        proc.wait()
    return {k: statistics.median(v) for k, v in rates.items()}


async def twin(setting: str) -> None:
    async with LocalBackend.open(LocalConfig(threads=SETTINGS[setting])) as backend:  # type: ignore[arg-type]
        while True:
            await local_level(backend, 4, 64)


def report(med: dict[tuple[str, str, int], float], args: argparse.Namespace) -> str:
    lines = [
        "# Decode speed on a shared CPU: idle, beside a busy process, beside a second engine", "",
        f"- hardware: {describe()} (default {DEFAULT_THREADS} "
        f"threads); embedded SmolLM2-135M-Instruct, default weights; greedy, {args.tokens} "
        f"tokens a request; median of {args.rounds}; `python benchmarks/neighbour.py`", "",
        "| neighbour | setting | " + " | ".join(f"width {w} tok/s" for w in args.widths) + " |",
        "|---|---|" + "---|" * len(args.widths),
    ]  # fmt: skip
    for kind in ("idle", "spin", "twin"):
        for name in SETTINGS:
            cells = []
            for w in args.widths:
                base = med[kind, "all threads", w]
                cells.append(f"{med[kind, name, w]:.1f} ({med[kind, name, w] / base:.2f}x)")
            lines.append(f"| {kind} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--twin", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.twin:
        anyio.run(twin, args.twin)
        return
    text = report(anyio.run(measure, args), args)
    print(text)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
