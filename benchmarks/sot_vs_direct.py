"""Skeleton-of-thought on parafill's engine vs the same model answering directly with HF generate.

    python benchmarks/sot_vs_direct.py [--questions 20] [--direct-tokens 256] [--engine-direct]

Questions: the first N of ../shared/data/mt_bench_dev.jsonl (MT-bench, FastChat, Apache-2.0;
a copy of the first 20 is vendored in benchmarks/data/). Prints a Markdown table: wall time
and tokens of each, the ratio per question, and the median. Greedy decoding throughout.
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
from parafill.planners.static import DirectPlanner

DATA = Path(__file__).parent / "data" / "mt_bench_first20.jsonl"


def hf_direct(hf, tok, question: str, max_tokens: int) -> tuple[float, int]:
    ids = tok.apply_chat_template([{"role": "user", "content": question}],
                                  add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens,
                      do_sample=False, pad_token_id=tok.eos_token_id)
    return time.perf_counter() - t0, out.shape[1] - len(ids)


async def main(args: argparse.Namespace) -> None:
    questions = [json.loads(line)["turns"][0] for line in DATA.read_text().splitlines()]
    questions = questions[: args.questions]
    hf, tok = load(None)
    planner = parafill.SkeletonPlanner(direct_tokens=args.direct_tokens)
    rows = []
    async with LocalBackend.open() as backend:
        for i, q in enumerate(questions, 1):
            sot = await parafill.arun(q, backend=backend, planner=planner)
            eng = (await parafill.arun(q, backend=backend, planner=DirectPlanner(
                args.direct_tokens)) if args.engine_direct else None)
            hf_s, hf_tok = hf_direct(hf, tok, q, args.direct_tokens)
            rows.append((i, sot, eng, hf_s, hf_tok))
            print(_row(rows[-1]), flush=True)
    _report(rows, args)


def _row(r) -> str:
    i, sot, eng, hf_s, hf_tok = r
    points = sum(1 for n in sot.plan.answer if n.startswith("point-"))
    eng_cell = f" {eng.seconds:.1f} s / {eng.tokens} |" if eng else ""
    return (f"| {i} | {points or 'direct'} | {sot.seconds:.1f} s / {sot.tokens} / "
            f"{sot.forward_passes} |{eng_cell} {hf_s:.1f} s / {hf_tok} | {hf_s / sot.seconds:.2f}× |")


def _report(rows, args) -> None:
    ratios = [hf_s / sot.seconds for _, sot, _, hf_s, _ in rows]
    print(f"\nhardware: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, fp32")
    print(f"median speed-up (HF generate time / parafill SoT time): "
          f"{statistics.median(ratios):.2f}× over {len(rows)} questions")
    fell_back = sum(1 for _, s, *_ in rows if "direct" in s.plan.answer)
    print(f"skeleton fell back to a direct answer on {fell_back} of {len(rows)}")
    print(f"total tokens: SoT {sum(s.tokens for _, s, *_ in rows)}, "
          f"HF direct {sum(r[4] for r in rows)}")


def _header(engine_direct: bool) -> str:
    eng = " engine direct s / tok |" if engine_direct else ""
    return ("| # | points | parafill SoT s / tok / passes |" + eng +
            " HF generate s / tok | speed-up |\n|---|---|---|" + ("---|" if engine_direct
                                                                    else "") + "---|---|")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--direct-tokens", type=int, default=256)
    ap.add_argument("--engine-direct", action="store_true")
    a = ap.parse_args()
    print(_header(a.engine_direct))
    anyio.run(main, a)
