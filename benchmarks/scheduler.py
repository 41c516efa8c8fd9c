"""Orchestration overhead alone: run_plan on the fake backend with no delay, by plan size and shape.

    python benchmarks/scheduler.py [--sizes 1000 10000 100000] [--shapes independent chain wide]

Shapes: `independent` (no edges), `chain` (each node depends on the one before), `wide`
(blocks of a hub, `--width` nodes that each depend on it, and a join that depends on all of
them; the join is the next block's hub). The fake backend answers two words per node with no
sleep, so the times are the scheduler's and the runner's own cost (tasks, events, prompts),
not generation. Prints one markdown table: nodes x shape -> seconds, nodes/s; best of `--reps`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import anyio

from parafill.backends.fake import FakeBackend
from parafill.orchestrator.plan import Node, Plan
from parafill.orchestrator.runner import RunConfig, run_plan


def independent(n: int, width: int) -> Plan:
    return Plan(tuple(Node(f"n{i}", f"p{i}", max_tokens=4) for i in range(n)))


def chain(n: int, width: int) -> Plan:
    nodes = [Node("n0", "p0", max_tokens=4)]
    nodes += [Node(f"n{i}", f"p{i} after {{{{n{i - 1}}}}}", (f"n{i - 1}",), 4) for i in range(1, n)]
    return Plan(tuple(nodes))


def wide(n: int, width: int) -> Plan:
    """hub -> `width` workers -> join (= next hub) -> ..., `n` nodes in all."""
    nodes, hub = [Node("h0", "hub", max_tokens=4)], "h0"
    while len(nodes) < n:
        workers = [
            Node(f"{hub}.w{j}", f"work {j} on {{{{{hub}}}}}", (hub,), 4)
            for j in range(min(width, n - len(nodes)))
        ]
        nodes += workers
        if len(nodes) < n:
            hub = f"h{len(nodes)}"
            nodes.append(Node(hub, "join", tuple(w.id for w in workers), 4))
    return Plan(tuple(nodes))


SHAPES = {"independent": independent, "chain": chain, "wide": wide}


async def once(plan: Plan, concurrency: int) -> float:
    fake = FakeBackend(delay=0.0)
    t0 = time.perf_counter()
    result = await run_plan(plan, fake, RunConfig(max_concurrency=concurrency))
    seconds = time.perf_counter() - t0
    assert len(result.results) == len(plan.nodes)
    return seconds


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 10000, 100000])
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--width", type=int, default=100, help="fan-out of the wide shape")
    ap.add_argument("--concurrency", type=int, default=64, help="RunConfig.max_concurrency")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), {platform.platform()}")
    print(
        f"Python {platform.python_version()}, anyio {version('anyio')}; fake backend, delay 0, "
        f"max_concurrency {args.concurrency}, wide width {args.width}"
    )
    print()
    print("| nodes | shape | seconds | nodes/s |")
    print("|---:|---|---:|---:|")
    for n in args.sizes:
        for shape in args.shapes:
            plan = SHAPES[shape](n, args.width)
            best = min(anyio.run(once, plan, args.concurrency) for _ in range(args.reps))
            print(f"| {n:,} | {shape} | {best:.2f} | {n / best:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
