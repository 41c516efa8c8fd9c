"""NER on the held-out WNUT-16 tweets: PaDeLLM (parallel) vs one autoregressive output (AR).

Entity-level precision / recall / F1 (exact span text and type) and wall time, both modes on
the same engine and model, each tweet run parallel then AR back to back (same load).
The held-out split is the last 500 tweets of wnut16_dev.conll; the adapter never saw them.

    python benchmarks/ner_eval.py --limit 40            # -> benchmarks/results/ner_wnut16_cpu.md
    python benchmarks/ner_eval.py --filler autoregressive   # every node one token per pass

Without --filler each node decodes with its planner's filler (mention nodes and the AR list:
ngram, count nodes: the backend's autoregressive default).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import anyio
import torch

from parafill.backends.local import LocalBackend, LocalConfig
from parafill.orchestrator.runner import RunConfig
from parafill.planners.ner import ADAPTER, NerConfig, NerResult, extract
from parafill.planners.ner_data import Entity, Score, read_conll, score, split

MODES = ("parallel", "ar")


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, fp32"


async def evaluate(args: argparse.Namespace) -> dict[str, list[NerResult]]:
    _, held_out = split(read_conll(args.data))
    tweets = held_out[: args.limit]
    local = LocalConfig(adapter=None if args.no_adapter else str(args.adapter))
    runs: dict[str, list[NerResult]] = {m: [] for m in MODES}
    run = RunConfig(filler=args.filler)
    async with LocalBackend.open(local) as backend:
        await extract("warm up Paris", backend, NerConfig(), "ar")  # first-call costs
        for i, tweet in enumerate(tweets, 1):
            for mode in MODES:
                got = await extract(tweet.text, backend, NerConfig(), mode, run)
                runs[mode].append(got)
            p, a = runs["parallel"][-1], runs["ar"][-1]
            print(
                f"[{i}/{len(tweets)}] parallel {p.seconds:.2f} s {len(p.entities)} ent | "
                f"ar {a.seconds:.2f} s {len(a.entities)} ent",
                flush=True,
            )
    return runs


def table(gold: list[set[Entity]], runs: dict[str, list[NerResult]]) -> list[str]:
    rows = [
        "| mode | P | R | F1 | wall s (sum) | tokens | forward passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, results in runs.items():
        s: Score = score(gold, [set(r.entities) for r in results])
        secs = sum(r.seconds for r in results)
        toks = sum(r.tokens for r in results)
        fps = sum(r.forward_passes or 0 for r in results)
        rows.append(
            f"| {mode} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} | "
            f"{secs:.1f} | {toks} | {fps} |"
        )
    return rows


def report(args: argparse.Namespace, runs: dict[str, list[NerResult]], wall: float) -> str:
    _, held_out = split(read_conll(args.data))
    gold = [set(t.entities) for t in held_out[: len(runs["parallel"])]]
    par = sum(r.seconds for r in runs["parallel"])
    ar = sum(r.seconds for r in runs["ar"])
    adapter = "none (plain model)" if args.no_adapter else _shown(args.adapter)
    lines = [
        "# PaDeLLM-NER vs AR on WNUT-16 (held-out tweets)",
        "",
        f"- tweets: first {len(gold)} of the 500 held out (wnut16_dev.conll tweets 1296-1795), "
        f"{sum(map(len, gold))} gold entities",
        f"- model: embedded SmolLM2-135M-Instruct; adapter: {adapter}",
        f"- hardware: {hardware()} — {args.hardware_note}",
        f"- fillers: {args.filler or 'the planner defaults (mentions and the AR list: ngram)'}",
        f"- whole run {wall:.0f} s; speed-up (AR wall / parallel wall): {ar / max(par, 1e-9):.2f}x",
        "",
        *table(gold, runs),
        "",
        "Scores are micro, per tweet as sets of (type, exact span text). Wall time is the sum of",
        "per-tweet times (planning, all nodes, parsing), parallel and AR alternating per tweet.",
    ]
    return "\n".join(lines) + "\n"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/wnut16_dev.conll")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--adapter", type=Path, default=ADAPTER)
    ap.add_argument("--no-adapter", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--filler", default=None, help="every node's filler (default: the planner's)")
    ap.add_argument("--hardware-note", default="2-core CPU, shared with other jobs (loaded)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ner_wnut16_cpu.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    runs = anyio.run(evaluate, args)
    text = report(args, runs, time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
