"""Skeleton-of-thought vs answering directly, same engine, same model, same generation guard.

    python benchmarks/sot_vs_direct.py [--questions 20] [--direct-tokens 512] [--guard 32]
                                       [--filler ngram] [--hf]

Questions: the first N of the vendored MT-bench set (benchmarks/data/mt_bench_first20.jsonl;
FastChat, Apache-2.0). Each question is answered twice on one local engine: skeleton-of-thought
(`SkeletonPlanner`: outline, then every point in parallel) and directly (`DirectPlanner`), both
with the same `RunConfig` — the same filler and the same loop guard (`stop_on_repeat`: a node
stops once its last N output tokens already occurred in its output; `--guard 0` turns it off).
Greedy decoding throughout. For every output the 8-gram repetition rate (1 - distinct/total
8-grams of its tokens) is printed beside its time, and whether it ran to its token cap: a
looping direct answer makes any "SoT is faster" ratio partly an artefact, so these are part of
the result. `--hf` adds HF `generate` (no guard: it has none of this kind) as a third column.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import anyio
import torch

import parafill
from parafill.backends.engine.weights import load
from parafill.backends.local import LocalBackend
from parafill.cli.view import repetition
from parafill.orchestrator.runner import RunConfig
from parafill.planners.static import DirectPlanner

DATA = Path(__file__).parent / "data" / "mt_bench_first20.jsonl"


def hf_direct(hf, tok, question: str, max_tokens: int) -> tuple[float, list[int]]:
    ids = tok.apply_chat_template([{"role": "user", "content": question}],
                                  add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens,
                      do_sample=False, pad_token_id=tok.eos_token_id)
    return time.perf_counter() - t0, out[0, len(ids):].tolist()


async def main(args: argparse.Namespace) -> None:
    questions = [json.loads(line)["turns"][0] for line in DATA.read_text().splitlines()]
    questions = questions[: args.questions]
    hf, tok = load(None)
    planner = parafill.SkeletonPlanner(direct_tokens=args.direct_tokens)
    direct = DirectPlanner(args.direct_tokens)
    run = RunConfig(filler=args.filler, stop_on_repeat=args.guard)
    rows = []
    async with LocalBackend.open() as backend:
        for i, q in enumerate(questions, 1):
            sot = await parafill.arun(q, backend=backend, planner=planner, config=run)
            one = await parafill.arun(q, backend=backend, planner=direct, config=run)
            hf_cell = hf_direct(hf, tok, q, args.direct_tokens) if args.hf else None
            rows.append((i, sot, one, hf_cell))
            print(_row(rows[-1], tok, args), flush=True)
    _report(rows, tok, args)


def _cell(r, tok) -> str:
    ids = tok.encode(r.answer)
    return f"{r.seconds:.1f} s / {r.tokens} / {r.forward_passes} / {repetition(ids):.2f}"


def _capped(r, cap: int) -> bool:
    return any(n.tokens >= cap for n in r.results.values())


def _row(r, tok, args) -> str:
    i, sot, one, hf_cell = r
    points = sum(1 for n in sot.plan.answer if n.startswith("point-"))
    hf_text = ""
    if hf_cell:
        hf_s, hf_ids = hf_cell
        hf_text = f" {hf_s:.1f} s / {len(hf_ids)} / {repetition(hf_ids):.2f} |"
    cap = " (cap)" if _capped(one, args.direct_tokens) else ""
    return (f"| {i} | {points or 'direct'} | {_cell(sot, tok)} | {_cell(one, tok)}{cap} |"
            f"{hf_text} {one.seconds / sot.seconds:.2f}× |")


def _report(rows, tok, args) -> None:
    ratios = [one.seconds / sot.seconds for _, sot, one, _ in rows]
    print(f"\nhardware: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, LocalConfig defaults "
          f"(embedded model int4, threads auto); filler "
          f"{args.filler}, loop guard stop_on_repeat={args.guard}")
    print(f"median speed-up (direct time / SoT time, same engine): "
          f"{statistics.median(ratios):.2f}× over {len(rows)} questions")
    fell_back = sum(1 for _, s, *_ in rows if "direct" in s.plan.answer)
    print(f"skeleton fell back to a direct answer on {fell_back} of {len(rows)}")
    capped = sum(_capped(one, args.direct_tokens) for _, _, one, _ in rows)
    print(f"direct answers that ran to the {args.direct_tokens}-token cap: {capped}")
    for name, k in (("SoT", 1), ("direct", 2)):
        reps = [repetition(tok.encode(r[k].answer)) for r in rows]
        loops = sum(x > 0.4 for x in reps)
        print(f"{name}: median 8-gram repetition {statistics.median(reps):.2f}, "
              f"{loops} outputs above 0.4, tokens {sum(r[k].tokens for r in rows)}")


def _header(hf: bool) -> str:
    extra = " HF generate s / tok / rep |" if hf else ""
    cols = "| # | points | SoT s / tok / passes / rep | direct s / tok / passes / rep |"
    return cols + extra + " speed-up |\n|---|---|---|---|" + ("---|" if hf else "") + "---|"


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--direct-tokens", type=int, default=512)
    ap.add_argument("--guard", type=int, default=32, help="stop_on_repeat for both sides")
    ap.add_argument("--filler", default="ngram")
    ap.add_argument("--hf", action="store_true", help="also HF generate (no guard)")
    a = ap.parse_args()
    print(_header(a.hf))
    anyio.run(main, a)
