"""Load test of `parafill serve`: N concurrent streaming clients per concurrency level.

    python benchmarks/serve_load.py [--levels 1,8,32,64] [--max-tokens 32] [--note "idle machine"]
    python benchmarks/serve_load.py --temperature 0.8 --top-p 0.95 --out .../serve_load_sampled_cpu.md

Starts `parafill serve` on 127.0.0.1 (a free port, rows = the largest level), first asks each
distinct prompt alone (temperature 0: the reference texts), then runs every level: each client
streams one chat completion with the official `openai` async client. Every response must be
complete (finish_reason set, usage present) and equal its prompt's single-client text (sampled
runs: each prompt has its own seed, so under load too the text must equal the lone one). Prints a
Markdown table (throughput, TTFT and total latency percentiles) and writes it to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import torch
from openai import AsyncOpenAI

PROMPTS = [
    "Explain what a compiler does.",
    "Write a short poem about the sea.",
    "Describe a walk in a forest.",
    "Tell me about the history of bread.",
    "What are the benefits of regular exercise?",
    "How does a refrigerator keep food cold?",
    "Give three tips for learning a new language.",
    "Why is the sky blue?",
]
MODEL = "SmolLM2-135M-Instruct"
OUT = Path(__file__).parent / "results" / "serve_load_cpu.md"


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    finish: str | None
    ttft: float
    total: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen[bytes]:
    rows = max(args.levels)
    exe = Path(sys.executable).parent / "parafill"
    cmd = [
        str(exe),
        "serve",
        "--port",
        str(port),
        "--rows",
        str(rows),
        "--budget-tokens",
        str(rows * 256),
        "--max-tokens",
        str(args.max_tokens),
    ]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"parafill serve exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError("parafill serve did not start")


SAMPLING = {"temperature": 0.0, "top_p": 1.0}


async def ask(client: AsyncOpenAI, prompt: str, max_tokens: int) -> Answer:
    t0 = time.perf_counter()
    ttft, parts, finish, tokens = None, [], None, 0
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=SAMPLING["temperature"],
        top_p=SAMPLING["top_p"],
        seed=PROMPTS.index(prompt),
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if not chunk.choices:
            continue
        text = chunk.choices[0].delta.content or ""
        if text and ttft is None:
            ttft = time.perf_counter() - t0
        parts.append(text)
        finish = chunk.choices[0].finish_reason or finish
    total = time.perf_counter() - t0
    return Answer("".join(parts), tokens, finish, ttft if ttft is not None else total, total)


async def level(client: AsyncOpenAI, n: int, max_tokens: int) -> tuple[list[Answer], float]:
    answers: list[Answer | None] = [None] * n

    async def one(i: int) -> None:
        answers[i] = await ask(client, PROMPTS[i % len(PROMPTS)], max_tokens)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return [a for a in answers if a is not None], time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(n: int, answers: list[Answer], wall: float, refs: dict[str, str]) -> str:
    complete = sum(1 for a in answers if a.finish and a.tokens > 0)
    correct = sum(1 for i, a in enumerate(answers) if a.text == refs[PROMPTS[i % len(PROMPTS)]])
    tokens = sum(a.tokens for a in answers)
    ttft = [a.ttft for a in answers]
    total = [a.total for a in answers]
    return (
        f"| {n} | {complete}/{n} | {correct}/{n} | {tokens} | {wall:.1f} | "
        f"{tokens / wall:.1f} | {pct(ttft, 0.5):.2f} | {pct(ttft, 0.95):.2f} | "
        f"{pct(total, 0.5):.2f} | {pct(total, 0.95):.2f} |"
    )


async def main(args: argparse.Namespace) -> str:
    port = free_port()
    log = Path(args.log)
    proc = start_server(args, port, log)
    lines = [
        f"# parafill serve under load\n\n{hardware(args)}\n",
        f"`parafill serve --rows {max(args.levels)}`, {MODEL} fp32, {mode(args)}, "
        f"max_tokens {args.max_tokens}, {len(PROMPTS)} distinct prompts cycled; "
        "streaming chat completions with the official openai async client.\n",
        "| clients | complete | = single-client text | tokens | wall s | tokens/s | "
        "TTFT p50 s | TTFT p95 s | total p50 s | total p95 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    try:
        async with AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600
        ) as client:
            refs = {p: (await ask(client, p, args.max_tokens)).text for p in PROMPTS}
            for n in args.levels:
                answers, wall = await level(client, n, args.max_tokens)
                lines.append(row(n, answers, wall, refs))
                print(lines[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return "\n".join(lines) + "\n"


def mode(args: argparse.Namespace) -> str:
    if args.temperature <= 0:
        return "greedy"
    return f"sampled (temperature {args.temperature}, top-p {args.top_p}, a seed per prompt)"


def hardware(args: argparse.Namespace) -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"hardware: {cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} (CPU), "
        f"Python {platform.python_version()}; {args.note}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 64]
    )
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--log", default="/tmp/parafill_serve_load.log")
    ap.add_argument("--note", default="machine state not stated")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    a = ap.parse_args()
    SAMPLING.update(temperature=a.temperature, top_p=a.top_p)
    report = anyio.run(main, a)
    print("\n" + report)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(report)
