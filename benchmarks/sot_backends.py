"""Skeleton-of-thought through a llama.cpp server vs asking it directly, vs parafill's own engine.

    python benchmarks/sot_backends.py [--server llama-server] [--slots 8] [--weights int4]
    # -> benchmarks/results/sot_llama_server_cpu.md (--server llama-cpp-python:
    #    benchmarks/results/sot_backends_cpu.md)

Questions: the first --limit of benchmarks/data/mt_bench_first20.jsonl (MT-bench, Apache-2.0).
Per question, in one run and back to back: (1) parafill SoT over the server (embedded SmolLM2
Q4_1 GGUF, started on 127.0.0.1 as the tests do) through OpenAIBackend, (2) the same server
answering directly, (3) SoT on parafill's LocalBackend (SmolLM2 in --weights), (4) LocalBackend
answering directly, and with llama-server (5) the same SoT on a second llama-server without
sharing the points' prefix across slots (`share_prefix=False`; a second server, so that the
first one's caches of this question do not serve it). Greedy throughout. llama.cpp's `llama-server` runs --slots requests at once
(SoT's points in parallel slots), continues the prefilled "1." and gets the skeleton's grammar
as GBNF; llama-cpp-python's server runs one request at a time and takes neither.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import anyio
import torch

import parafill
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig
from parafill.orchestrator.plan import RunResult
from parafill.planners.static import DirectPlanner

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "backends"))
from llama_server import llama_server, skip_reason  # noqa: E402

DATA = Path(__file__).parent / "data" / "mt_bench_first20.jsonl"
RESULTS = Path(__file__).parent / "results"
OUT = {"llama-server": "sot_llama_server_cpu.md", "llama-cpp-python": "sot_backends_cpu.md"}
FELL_BACK = "did not parse"  # the skeleton planner's note when a skeleton falls back
COLUMNS = ("llama SoT", "llama direct", "local SoT", "local direct", "llama SoT unshared")


def cell(r: RunResult) -> str:
    return f"{r.seconds:.1f} s / {r.tokens}"


def points(r: RunResult) -> str:
    n = sum(1 for a in r.plan.answer if a.startswith("point-"))
    if n:
        return str(n)
    return "fell back" if any(FELL_BACK in note for note in r.notes) else "direct"


async def one_question(
    q: str,
    llama: OpenAIBackend,
    local: LocalBackend,
    args: argparse.Namespace,
    unshared: OpenAIBackend | None = None,
) -> list[RunResult]:
    sot = parafill.SkeletonPlanner(
        skeleton_tokens=args.skeleton_tokens,
        point_tokens=args.point_tokens,
        direct_tokens=args.direct_tokens,
    )
    direct = DirectPlanner(args.direct_tokens)
    out = []
    log = Path(args.log)
    runs = [(llama, sot), (llama, direct), (local, sot), (local, direct)]
    if unshared is not None:  # a second server: the first one's prompt cache holds this SoT
        runs.append((unshared, sot))
    for i, (backend, planner) in enumerate(runs):
        at = size(log)
        out.append(await parafill.arun(q, backend=backend, planner=planner))
        if i < 2:  # where the server's time went: its own per-request timings
            add_timings(TIMINGS[i], read_from(log, at))
    return out


# llama-server's print_timing lines: prompt eval (prefill) and eval (decode), per request
_TIMING = re.compile(r"(prompt eval|\seval) time =\s+([0-9.]+) ms /\s+(\d+) tokens")
TIMINGS: list[dict[str, float]] = [{}, {}]  # SoT, direct: summed over all questions


def size(path: Path) -> int:
    return path.stat().st_size


def read_from(path: Path, at: int) -> str:
    with path.open(errors="replace") as f:
        f.seek(at)
        return f.read()


def add_timings(into: dict[str, float], text: str) -> None:
    for kind, ms, n in _TIMING.findall(text):
        key = "prefill" if kind == "prompt eval" else "decode"
        into[f"{key} ms"] = into.get(f"{key} ms", 0.0) + float(ms)
        into[f"{key} tokens"] = into.get(f"{key} tokens", 0.0) + int(n)
        into[f"{key} requests"] = into.get(f"{key} requests", 0.0) + 1


def timing_lines() -> list[str]:
    if not TIMINGS[0]:
        return []
    out = ["", "llama-server's own timings (its log; per request, summed: slots overlap, so the "
           "sums exceed wall time):", "", "| | requests | prefill tokens | prefill s | "
           "decode tokens | decode s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, t in zip(("SoT", "direct"), TIMINGS[:2], strict=True):
        out.append(f"| {name} | {t.get('prefill requests', 0):.0f} | "
                   f"{t.get('prefill tokens', 0):.0f} | {t.get('prefill ms', 0) / 1e3:.1f} | "
                   f"{t.get('decode tokens', 0):.0f} | {t.get('decode ms', 0) / 1e3:.1f} |")  # fmt: skip
    return out


def summary(rows: list[list[RunResult]]) -> list[str]:
    cols = len(rows[0])
    total = [sum(r[i].seconds for r in rows) for i in range(cols)]
    med = [
        statistics.median(r[a].seconds / r[b].seconds for r in rows)
        for a, b in ((1, 0), (3, 2), (0, 2), (1, 3))
    ]
    out = [
        "",
        "| | " + " | ".join(COLUMNS[:cols]) + " |",
        "|---" * (cols + 1) + "|",
        "| total wall s | " + " | ".join(f"{t:.1f}" for t in total) + " |",
        "| total tokens | "
        + " | ".join(str(sum(r[i].tokens for r in rows)) for i in range(cols))
        + " |",
        "",
        f"- SoT speed-up on llama.cpp (direct / SoT, median per question): {med[0]:.2f}× "
        f"(totals {total[1] / total[0]:.2f}×)",
        f"- SoT speed-up on parafill's engine (direct / SoT, median): {med[1]:.2f}× "
        f"(totals {total[3] / total[2]:.2f}×)",
        f"- SoT: llama.cpp time / parafill-engine time (median; > 1: the engine is faster): "
        f"{med[2]:.2f}×",
        f"- direct: llama.cpp time / parafill-engine time (median): {med[3]:.2f}×",
        f"- skeletons that fell back (llama / local): {fell(rows, 0)} / {fell(rows, 2)} of "
        f"{len(rows)}",
        f"- SoT on the engine vs asking the server directly (totals; > 1: the engine's SoT is "
        f"faster): {total[1] / total[2]:.2f}×",
    ]
    if cols > 4:
        shared = statistics.median(r[4].seconds / r[0].seconds for r in rows)
        out += [
            f"- llama.cpp SoT without / with the points' prefix shared across slots (median): "
            f"{shared:.2f}× (totals {total[4] / total[0]:.2f}×); direct / unshared SoT totals "
            f"{total[1] / total[4]:.2f}×; skeletons that fell back unshared: {fell(rows, 4)}",
        ]
    return out


def fell(rows: list[list[RunResult]], col: int) -> int:
    return sum(points(r[col]) == "fell back" for r in rows)


def describe(args: argparse.Namespace) -> str:
    threads = os.environ.get("PARAFILL_LLAMA_THREADS", "1")
    if args.server == "llama-server":
        llama = (f"llama.cpp's `llama-server` (SmolLM2-135M Q4_1, {threads} thread(s), "
                 f"--parallel {args.slots}; the skeleton's grammar sent as GBNF, the prefilled "
                 "\"1.\" continued, the points' common prefix prefilled once and loaded by "
                 "each point's slot from the server's prompt cache; 'llama SoT unshared': the "
                 "same on a second llama-server without that sharing)")  # fmt: skip
    else:
        llama = (f"`python -m llama_cpp.server` (SmolLM2-135M Q4_1, {threads} thread(s), one "
                 "request at a time: no parallel slots in llama-cpp-python's server)")  # fmt: skip
    return (f"Cells: wall s / tokens. llama = {llama}; local = parafill LocalBackend "
            f"(SmolLM2-135M {args.weights} weights, {args.mode} mode). Greedy; skeleton {args.skeleton_tokens}"
            f", point {args.point_tokens}, direct max {args.direct_tokens} tokens. 'fell back': "
            "the skeleton did not parse and the question was answered directly.\n")  # fmt: skip


async def main(args: argparse.Namespace, qs: list[str]) -> str:
    cols = 5 if args.server == "llama-server" else 4
    lines = [
        f"# SoT over llama.cpp vs parafill's engine\n\n{hardware(args)}\n",
        describe(args),
        "| # | points (llama / local) | " + " | ".join(COLUMNS[:cols]) + " |",
        "|---" * (cols + 2) + "|",
    ]
    rows = []
    slots = args.slots if args.server == "llama-server" else 1
    binary = args.server == "llama-server"
    log2 = Path(args.log).with_suffix(".unshared.log")
    with (llama_server(Path(args.log), args.server, n_ctx=2048, slots=slots) as server,
          llama_server(log2, args.server, n_ctx=2048, slots=slots) as server2):  # fmt: skip
        mode = "llama.cpp" if binary else "openai"
        cfg = OpenAIConfig(base_urls=(server.url,), model=server.model, timeout=600,
                           max_concurrency=slots, constraints=mode, share_prefix=binary)  # fmt: skip
        cfg2 = replace(cfg, base_urls=(server2.url,), share_prefix=False)
        local_cfg = LocalConfig(weights=args.weights, mode=args.mode)
        async with (OpenAIBackend(cfg) as llama, OpenAIBackend(cfg2) as unshared,
                    LocalBackend.open(local_cfg) as local):  # fmt: skip
            for i, q in enumerate(qs, 1):
                rows.append(await one_question(q, llama, local, args, unshared if binary else None))
                r = rows[-1]
                lines.append(
                    f"| {i} | {points(r[0])} / {points(r[2])} | "
                    + " | ".join(cell(x) for x in r)
                    + " |"
                )
                print(lines[-1], flush=True)
    return "\n".join(lines + summary(rows) + timing_lines()) + "\n"


def hardware(args: argparse.Namespace) -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"hardware: {cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; "
        f"{args.note}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--skeleton-tokens", type=int, default=128)
    ap.add_argument("--point-tokens", type=int, default=96)
    ap.add_argument("--direct-tokens", type=int, default=256)
    ap.add_argument(
        "--server", choices=["llama-server", "llama-cpp-python"], default="llama-server"
    )
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--weights", default="int4")
    ap.add_argument("--mode", default="rows", choices=["rows", "tree"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--log", default="/tmp/parafill_llama_server.log")
    ap.add_argument("--note", default="machine state not stated")
    a = ap.parse_args()
    a.out = a.out or str(RESULTS / OUT[a.server])
    if (why := skip_reason(a.server)) is not None:
        sys.exit(f"cannot run: {why}")
    questions = [json.loads(line)["turns"][0] for line in DATA.read_text().splitlines()]
    report = anyio.run(main, a, questions[: a.limit])
    print("\n" + report)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(report)
