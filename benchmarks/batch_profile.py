"""Where the batch runner's time goes: a plain loop vs `run_batch` at concurrency 1, alternating,
on one opened engine, each under cProfile (the event-loop thread; the engine runs in its own).

    python benchmarks/batch_profile.py [--n 60] [--pairs 2] [--workload ner|sot]
    # -> benchmarks/results/batch_profile_cpu.md (sot: batch_profile_sot_cpu.md)

NER (PaDeLLM, the packaged WNUT-16 adapter) on the first --n WNUT-16 dev tweets, or the short
SoT questions, as benchmarks/batch.py runs them; five documents first, untimed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import time
from pathlib import Path
from typing import Any

import anyio
import torch
from batch import CONLL, ROOT, workloads

from parafill.backends.local import LocalBackend
from parafill.jobs import BatchConfig, run_batch

WHAT = {"ner": "NER on {n} WNUT-16 tweets", "sot": "short SoT questions, {n} documents"}


async def timed(name: str, pipeline: Any, docs: list[dict[str, Any]], src: Path, dst: Path,
                backend: LocalBackend) -> tuple[float, cProfile.Profile]:  # fmt: skip
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    if name == "loop":
        for d in docs:
            await pipeline.run({k: v for k, v in d.items() if k != "id"}, backend)
    else:
        await run_batch(pipeline, src, dst, BatchConfig(concurrency=1, overwrite=True),
                        backend=backend)  # fmt: skip
    prof.disable()
    return len(docs) / (time.perf_counter() - t0), prof


async def main(a: argparse.Namespace) -> str:
    pipeline, local, docs = workloads(a.n, CONLL)[a.workload]
    src, dst = Path(a.tmp) / f"{a.workload}.jsonl", Path(a.tmp) / f"{a.workload}.out.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    rows, waits = [], {}
    async with LocalBackend.open(local) as backend:
        for d in docs[:5]:
            await pipeline.run({k: v for k, v in d.items() if k != "id"}, backend)
        for _ in range(a.pairs):
            for name in ("loop", "runner c1"):
                rate, prof = await timed(name, pipeline, docs, src, dst, backend)
                waits[name] = io.StringIO()
                stats = pstats.Stats(prof, stream=waits[name])
                total = stats.total_tt  # type: ignore[attr-defined]
                wait = sum(v[2] for k, v in stats.stats.items() if "poll" in k[2])  # type: ignore[attr-defined]
                rows.append(f"| {name} | {rate:.2f} | {total:.1f} | {100 * wait / total:.0f}% |")
                stats.sort_stats("tottime").print_stats(8)
                print(rows[-1], flush=True)
    head = [
        "# Batch runner vs a plain loop, profiled (CPU)", "",
        f"- hardware: {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; `python benchmarks/batch_profile.py --n {a.n} "
        f"--workload {a.workload}`",
        f"- {WHAT[a.workload].format(n=a.n)}, one engine, runs alternating", "",
        "| run | docs/s | event-loop thread s | of it waiting on the engine (epoll) |",
        "|---|---|---|---|",
    ]  # fmt: skip
    tail = ["", "Top of the last profile of each (event-loop thread, by own time):", ""]
    for name, text in waits.items():
        tail += [f"{name}:", "", "```", text.getvalue().strip(), "```", ""]
    return "\n".join(head + rows + tail) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--workload", choices=["ner", "sot"], default="ner")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    name = "batch_profile_cpu.md" if args.workload == "ner" else "batch_profile_sot_cpu.md"
    args.out = args.out or str(ROOT / "benchmarks/results" / name)
    report = anyio.run(main, args)
    print(report)
    Path(args.out).write_text(report)
