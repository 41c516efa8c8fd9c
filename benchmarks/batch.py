"""Batch jobs on this machine: documents/s of the single-process runner at several
concurrencies, against one document at a time, and of the Ray runner with 1 and 2 actors.

    python benchmarks/batch.py --n 500      # -> benchmarks/results/batch_cpu.md

Workloads (the first --n of each): NER (PaDeLLM, the WNUT-16 labels, the LoRA adapter) on
the WNUT-16 dev tweets (../shared/data/wnut16_dev.conll), and short skeleton-of-thought
questions ("Name N ways to ...", small token budgets). Rows:
- one at a time: a plain loop awaiting the pipeline per document on one opened engine (no
  runner: the baseline for the runner's own cost);
- runner cN: `run_batch` with N documents in flight, records to a file;
- ray aA: `ray_batch` on a local Ray (num_cpus=4), A actors of 1 CPU, batch size 8, --calls
  batches at once per actor (default 2); each actor opens its own engine, so the time includes
  A model loads.
Every row opens the engine the same way (the embedded SmolLM2, fp32, rows mode).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import anyio

from parafill.backends.local import LocalBackend, LocalConfig
from parafill.jobs import BatchConfig, Entities, Pipeline, Questions, RayConfig, ray_batch
from parafill.jobs import run_batch as run_batch_async
from parafill.planners.ner import NerConfig, default_adapter
from parafill.planners.ner_data import WNUT_LABELS, read_conll
from parafill.planners.skeleton import SkeletonPlanner

ROOT = Path(__file__).resolve().parent.parent
CONLL = ROOT.parent / "shared/data/wnut16_dev.conll"
TOPICS = ["stay focused", "save money", "sleep better", "learn a language", "cook rice",
          "stay warm", "make friends", "write clearly", "run faster", "keep plants alive"]  # fmt: skip


def workloads(n: int, conll: Path) -> dict[str, tuple[Pipeline, LocalConfig, list[dict[str, Any]]]]:
    tweets = read_conll(conll)[:n]
    ner = Entities(NerConfig(WNUT_LABELS, max_mentions=2), "parallel")
    ner_docs = [{"id": f"t{i}", "text": t.text} for i, t in enumerate(tweets)]
    sot = Questions(SkeletonPlanner(3, 2, 32, 16, 48))
    sot_docs = [{"id": f"q{i}", "question": f"Name three ways to {TOPICS[i % len(TOPICS)]}."}
                for i in range(n)]  # fmt: skip
    return {
        "ner": (ner, LocalConfig(adapter=default_adapter(None)), ner_docs),
        "sot": (sot, LocalConfig(), sot_docs),
    }


async def one_at_a_time(pipeline: Pipeline, local: LocalConfig, docs: list[dict[str, Any]]
                        ) -> tuple[float, float]:  # fmt: skip
    """(seconds to run the documents, seconds to open the engine)."""
    t0 = time.perf_counter()
    async with LocalBackend.open(local) as backend:
        t1 = time.perf_counter()
        for doc in docs:
            fields = {k: v for k, v in doc.items() if k != "id"}
            await pipeline.run(fields, backend)
        return time.perf_counter() - t1, t1 - t0


async def with_runner(pipeline: Pipeline, local: LocalConfig, src: Path, dst: Path, c: int
                      ) -> tuple[float, float]:  # fmt: skip
    t0 = time.perf_counter()
    async with LocalBackend.open(local) as backend:
        t1 = time.perf_counter()
        s = await run_batch_async(pipeline, src, dst, BatchConfig(concurrency=c, overwrite=True),
                                  backend=backend)  # fmt: skip
        assert s.failed == 0, s
        return time.perf_counter() - t1, t1 - t0


def on_ray(pipeline: Pipeline, local: LocalConfig, src: Path, dst: Path, actors: int,
           calls: int = 2) -> float:  # fmt: skip
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        t = time.perf_counter()
        s = ray_batch(pipeline, src, dst, BatchConfig(overwrite=True),
                      RayConfig(actors=actors, batch_size=8, calls_per_actor=calls),
                      local=local)  # fmt: skip
        assert s.failed == 0, s
        return time.perf_counter() - t
    finally:
        ray.shutdown()


def measure(name: str, job: tuple[Pipeline, LocalConfig, list[dict[str, Any]]], tmp: Path,
            ray_too: bool, ray_only: bool = False,
            calls: tuple[int, ...] = (2,)) -> list[tuple[str, str, float, str]]:  # fmt: skip
    pipeline, local, docs = job
    src, dst = tmp / f"{name}.jsonl", tmp / f"{name}.out.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    n = len(docs)
    rows: list[tuple[str, str, float, str]] = []
    for c in () if ray_only else (0, 1, 8, 32):
        if c == 0:
            secs, load = anyio.run(one_at_a_time, pipeline, local, docs)
            rows.append((name, "one at a time", n / secs, f"engine load {load:.1f} s"))
            print(rows[-1], flush=True)
            continue
        secs, load = anyio.run(with_runner, pipeline, local, src, dst, c)
        rows.append((name, f"runner c{c}", n / secs, f"engine load {load:.1f} s"))
        print(rows[-1], flush=True)
    for actors in (1, 2) if ray_too else ():
        for k in calls:
            secs = on_ray(pipeline, local, src, dst, actors, k)
            how = f"ray a{actors}" + (f" calls {k}" if len(calls) > 1 else "")
            rows.append((name, how, n / secs, "incl. Ray start-up of actors + loads"))
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--conll", type=Path, default=CONLL)
    ap.add_argument("--only", choices=["ner", "sot"], default=None)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--ray-only", action="store_true")
    ap.add_argument("--calls", type=int, nargs="+", default=[2],
                    help="Ray: batches each actor runs at once (one row per value)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/batch_cpu.md")
    args = ap.parse_args()
    tmp = Path("/tmp/parafill-batch-bench")
    tmp.mkdir(exist_ok=True)
    rows: list[tuple[str, str, float, str]] = []
    for name, job in workloads(args.n, args.conll).items():
        if args.only in (None, name):
            rows += measure(name, job, tmp, not args.no_ray, args.ray_only, tuple(args.calls))
    lines = [f"# Batch jobs on this CPU ({platform.processor() or platform.machine()}, "
             f"n={args.n} documents per workload)", "",
             "`python benchmarks/batch.py --n " + str(args.n) + "`", "",
             "| workload | how | docs/s | note |", "|---|---|---:|---|"]  # fmt: skip
    lines += [f"| {w} | {how} | {rate:.2f} | {note} |" for w, how, rate, note in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
