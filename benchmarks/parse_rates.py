"""Planner parse rates on the embedded SmolLM2 (greedy), free text vs grammar-constrained.

Each planner's own planning node (skeleton, DAG steps, document outline) runs on every question
of its set, once with the planner's constraint and once without, all questions of a set batched
in one run; the planner's expand hook then reads the output exactly as in a real run, and a
plan "parses" when it does not fall back to a direct answer. NER (PaDeLLM, the shipped adapter):
mentions that are not spans of the tweet (dropped by the parser), and F1, on held-out tweets.

    python benchmarks/parse_rates.py          # -> benchmarks/results/parse_rates_cpu.md

Sets: the 20 vendored MT-bench questions (benchmarks/data/mt_bench_first20.jsonl, FastChat,
Apache-2.0), the 18 DAG questions and 24 outline topics captured in tests/planners/data, the
first --ner-limit held-out WNUT-16 tweets (../shared/data/wnut16_dev.conll).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import torch

from parafill.backends.local import LocalBackend, LocalConfig
from parafill.orchestrator.plan import Plan
from parafill.orchestrator.runner import RunConfig, run_plan
from parafill.planners.base import Planner
from parafill.planners.dag import DagPlanner
from parafill.planners.document import DocumentPlanner
from parafill.planners.ner import NerConfig, default_adapter, extract
from parafill.planners.ner_data import read_conll, score, split
from parafill.planners.skeleton import SkeletonPlanner

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "planners" / "data"
MODES = ("free text", "grammar")


@dataclass(frozen=True)
class Outcome:
    parsed: int
    total: int
    seconds: float
    tokens: int
    failures: tuple[str, ...]  # the fallback notes


def question_sets() -> dict[str, tuple[Callable[[bool], Planner], list[str]]]:
    mt = [
        json.loads(line)["turns"][0]
        for line in (ROOT / "benchmarks/data/mt_bench_first20.jsonl").open()
    ]
    dag = [c["question"] for c in json.loads((DATA / "smollm2_dag_plans.json").read_text())]
    outlines = json.loads((DATA / "smollm2_outlines.json").read_text())["outlines"]
    topics = [c["topic"] for c in outlines if c["prompt"] == "final"]
    return {
        "skeleton (MT-bench 20)": (lambda c: SkeletonPlanner(constrained=c), mt),
        "DAG steps (captured 18)": (lambda c: DagPlanner(constrained=c), dag),
        "outline (captured 24)": (lambda c: DocumentPlanner(constrained=c), topics),
    }  # fmt: skip


async def planner_rate(
    backend: LocalBackend, planner: Planner, questions: Sequence[str]
) -> Outcome:
    """Every question's planning node in one run (no growth), then the planner's own hook; a
    hook that asks for a continuation of the plan (a node with its own hook, e.g. the skeleton
    continued after repeated points) gets it run too, in one more batch, time and tokens
    counted, until every hook decides."""
    todo = {f"q{i}": (i, planner.plan(q).nodes[0]) for i, q in enumerate(questions)}
    secs, tokens, failures = 0.0, 0, []
    while todo:
        nodes = tuple(replace(n, id=key, expand=None) for key, (_, n) in todo.items())
        t0 = time.perf_counter()
        result = await run_plan(Plan(nodes), backend, RunConfig(max_concurrency=8))
        secs, tokens = secs + time.perf_counter() - t0, tokens + result.tokens
        more = {}
        for key, (i, node) in todo.items():
            growth = planner.expanders[node.expand or ""](node, result.results[key].text)
            if growth.answer == ("direct",):
                failures.append(f"{questions[i][:40]!r}: {growth.note}")
            elif growth.answer is None and len(growth.nodes) == 1 and growth.nodes[0].expand:
                more[f"{key}+"] = (i, growth.nodes[0])
        todo = more
    n = len(questions)
    return Outcome(n - len(failures), n, secs, tokens, tuple(failures))


async def ner_rates(limit: int, data: str) -> dict[str, tuple[int, int, float, float]]:
    """Per mode: (mentions not in the tweet, mention nodes, F1, seconds)."""
    tweets = split(read_conll(data))[1][:limit]
    out = {}
    async with LocalBackend.open(LocalConfig(adapter=default_adapter(None))) as backend:
        for mode in MODES:
            cfg = NerConfig(constrained=mode == "grammar")
            t0 = time.perf_counter()
            runs = [await extract(t.text, backend, cfg, "parallel") for t in tweets]
            bad = sum("is not in the text" in n for r in runs for n in r.notes)
            mentions = sum(i.startswith("mention:") for r in runs for i in r.run.results)
            f1 = score([set(t.entities) for t in tweets], [set(r.entities) for r in runs]).f1
            out[mode] = (bad, mentions, f1, time.perf_counter() - t0)
    return out


async def measure(args: argparse.Namespace) -> list[str]:
    rows = ["| planner node (set) | free text parses | grammar parses | s free / grammar | tokens free / grammar |",
            "|---|---|---|---|---|"]  # fmt: skip
    details: list[str] = []
    async with LocalBackend.open(LocalConfig()) as backend:
        for name, (make, questions) in question_sets().items():
            got = {m: await planner_rate(backend, make(m == "grammar"), questions) for m in MODES}
            f, g = got["free text"], got["grammar"]
            rows.append(f"| {name} | {f.parsed}/{f.total} | {g.parsed}/{g.total} | "
                        f"{f.seconds:.1f} / {g.seconds:.1f} | {f.tokens} / {g.tokens} |")  # fmt: skip
            print(rows[-1], flush=True)
            for m in MODES:
                details += [f"- {name}, {m}: {x}" for x in got[m].failures]
    if args.ner_limit:
        ner = await ner_rates(args.ner_limit, args.data)
        rows += ["", "| NER parallel (WNUT-16 held out) | mentions not in the tweet | F1 | s |",
                 "|---|---|---|---|"]  # fmt: skip
        for m, (bad, n, f1, secs) in ner.items():
            rows.append(f"| {m} | {bad} of {n} mention nodes | {f1:.3f} | {secs:.1f} |")
            print(rows[-1], flush=True)
    return [*rows, "", "Fallbacks (the planner's note):", "", *(details or ["- none"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ner-limit", type=int, default=40, help="held-out tweets (0: skip NER)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/wnut16_dev.conll"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hardware-note", default="2-core CPU")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/parse_rates_cpu.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = anyio.run(measure, args)
    cpu = platform.processor() or platform.machine()
    head = [
        "# Planner parse rates: free text vs grammar-constrained (embedded SmolLM2, greedy)",
        "",
        f"- hardware: {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"fp32 — {args.hardware_note}",
        "- model: embedded SmolLM2-135M-Instruct (Q4_1 GGUF dequantized); NER with the shipped "
        "adapter",
        "- each set's planning nodes batched in one run (8 at a time); a plan parses when the "
        "planner's own hook does not fall back to a direct answer",
        f"- whole run {time.perf_counter() - t0:.0f} s (`python benchmarks/parse_rates.py`)",
        "",
    ]
    text = "\n".join(head + rows) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
