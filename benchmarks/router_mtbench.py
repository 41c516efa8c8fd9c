"""Router vs always-decompose vs direct on MT-bench questions, on parafill's engine.

    python benchmarks/router_mtbench.py [--limit 20] [--data PATH] [--out FILE]

Each question is answered directly and with skeleton-of-thought (greedy, same engine); the
router's column is the path it chose for that question (greedy decoding is deterministic,
so re-running the chosen path would repeat the same tokens; its own decision costs no model
call). Writes a Markdown file with the table and every answer side by side.
Data: benchmarks/data/mt_bench_first20.jsonl (MT-bench, FastChat, Apache-2.0) or --data.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import anyio
import torch

import parafill
from parafill.backends.local import LocalBackend
from parafill.planners.costs import measure
from parafill.planners.router import RouterPlanner
from parafill.planners.skeleton import SkeletonPlanner
from parafill.planners.static import DirectPlanner

DATA = Path(__file__).parent / "data" / "mt_bench_first20.jsonl"


async def collect(rows: list[dict], a: argparse.Namespace):
    direct = DirectPlanner(a.direct_tokens)
    sot = SkeletonPlanner(direct_tokens=a.direct_tokens)
    out = []
    async with LocalBackend.open() as backend:
        cost = await measure(backend)
        router = RouterPlanner(cost=cost, skeleton=sot, direct=direct)
        for i, row in enumerate(rows, 1):
            q = row["turns"][0]
            d = await parafill.arun(q, backend=backend, planner=direct)
            s = await parafill.arun(q, backend=backend, planner=sot)
            decision = router.decide(q)
            out.append((row, d, s, decision))
            r = s if decision.decompose else d
            print(f"{i:2d} {row['category']:10s} direct {d.seconds:6.1f}s  sot {s.seconds:6.1f}s"
                  f"  router→{'sot' if decision.decompose else 'direct'} {r.seconds:6.1f}s",
                  flush=True)
    return out, cost


def report(out, cost, a) -> str:
    hw = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    tot = {"direct": 0.0, "sot": 0.0, "router": 0.0}
    toks = {"direct": 0, "sot": 0, "router": 0}
    lines = ["| # | category | router | direct s / tok | SoT s / tok / passes | router s |",
             "|---|---|---|---|---|---|"]
    for i, (row, d, s, dec) in enumerate(out, 1):
        r = s if dec.decompose else d
        for k, res in (("direct", d), ("sot", s), ("router", r)):
            tot[k] += res.seconds
            toks[k] += res.tokens
        lines.append(f"| {i} | {row['category']} | {'SoT' if dec.decompose else 'direct'} | "
                     f"{d.seconds:.1f} / {d.tokens} | {s.seconds:.1f} / {s.tokens} / "
                     f"{s.forward_passes} | {r.seconds:.1f} |")
    head = [
        "# Router vs always-decompose vs direct (MT-bench)", "",
        f"- hardware: {hw}; model: embedded SmolLM2-135M-Instruct fp32; greedy; {a.note}",
        f"- cost model measured at start: step(K) = {cost.base * 1e3:.1f} ms + "
        f"{cost.per_branch * 1e3:.1f} ms × K",
        f"- direct answers capped at {a.direct_tokens} tokens", "",
        f"**Totals over {len(out)} questions** — direct {tot['direct']:.1f} s ({toks['direct']} "
        f"tokens), always SoT {tot['sot']:.1f} s ({toks['sot']} tokens), router "
        f"{tot['router']:.1f} s ({toks['router']} tokens). Speed-up vs direct: always SoT "
        f"{tot['direct'] / tot['sot']:.2f}×, router {tot['direct'] / tot['router']:.2f}×.", "",
    ]
    answers = []
    for i, (row, d, s, dec) in enumerate(out, 1):
        answers += [f"## {i}. {row['category']}", "", "> " + row["turns"][0].replace("\n", "\n> "),
                    "", f"**Router:** {'skeleton-of-thought' if dec.decompose else 'direct'} — "
                    f"{dec.reason}", "", f"### Direct ({d.seconds:.1f} s, {d.tokens} tokens)", "",
                    d.answer, "", f"### Skeleton-of-thought ({s.seconds:.1f} s, {s.tokens} tokens"
                    f"{'; ' + '; '.join(s.notes) if s.notes else ''})", "", s.answer, ""]
    return "\n".join(head + lines + ["", "# Answers", ""] + answers)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--direct-tokens", type=int, default=384)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "router_mtbench_cpu.md"))
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    questions = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    results, costs = anyio.run(collect, questions[: args.limit], args)
    Path(args.out).write_text(report(results, costs, args))
    print(f"wrote {args.out}")
